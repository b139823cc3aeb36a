#!/usr/bin/env python3
"""Independent float64 re-implementation of every golden case.

Reads tests/golden/solvers.json, re-runs each sampler from the recorded
x_init, sigmas (and DDIM abar values) and noises with plain formulas (no
diffusers / k-diffusion code), and reports the largest deviation from the
recorded per-step states and x0 predictions. This is what the Rust tests do;
it proves the golden data is self-consistent and free of float32 rounding.

Usage: python3 scripts/golden/check.py [tests/golden/solvers.json] [--tol 1e-11]
"""

import argparse
import math
import os
import sys

import json

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

MU = STD = W = None


def x0_hat(x, alpha, sigma):
    d = MU.shape[1]
    var = alpha**2 * STD**2 + sigma**2  # [K]
    diff = x[:, None, :] - alpha * MU[None]  # [B, K, D]
    log_r = np.log(W)[None] - 0.5 * d * np.log(var)[None] - (diff**2).sum(-1) / (2 * var[None])
    log_r -= log_r.max(1, keepdims=True)
    r = np.exp(log_r)
    r /= r.sum(1, keepdims=True)
    comp = MU[None] + (alpha * STD**2 / var)[None, :, None] * diff
    return (r[:, :, None] * comp).sum(1)


def vp(s):
    a = 1.0 / math.sqrt(1.0 + s * s)
    return a, s * a


def D_vp(x, s):
    a, sg = vp(s)
    return x0_hat(x, a, sg)


def D_ve(x, s):
    return x0_hat(x, 1.0, s)


class Run:
    """Collects the re-implemented trajectory."""

    def __init__(self):
        self.xs, self.dens = [], []

    def step(self, x, den):
        self.xs.append(x)
        self.dens.append(den)


# ------------------------------------------------------------------ diffusers

def ddim(c):
    eta = c["options"]["eta"]
    x = np.array(c["x_init"])
    noises = iter(np.array(n) for n in c["noises"])
    run = Run()
    for st in c["extra"]["ddim_steps"]:
        at, ap = st["alpha_prod_t"], st["alpha_prod_t_prev"]
        s = math.sqrt((1 - at) / at)
        a, sg = vp(s)
        x0 = D_vp(x, s)
        eps = (x - a * x0) / sg
        var = (1 - ap) / (1 - at) * (1 - at / ap)
        std = eta * math.sqrt(var)
        x = math.sqrt(ap) * x0 + math.sqrt(1 - ap - std**2) * eps
        if eta > 0:
            x = x + std * next(noises)
        run.step(x, x0)
    return run


def lam(s):
    a, sg = vp(s)
    return math.log(a) - math.log(sg) if sg > 0 else math.inf


def dpm_multistep_orders(c):
    o = c["options"]
    n, order = len(c["steps"]), o["order"]
    out = []
    for i in range(n):
        lof = i == n - 1 and (o.get("euler_at_final") or (o["lower_order_final"] and n < 15)
                              or o["final_sigmas_type"] == "zero")
        los = i == n - 2 and o["lower_order_final"] and n < 15
        if order == 1 or i < 1 or lof:
            out.append(1)
        elif order == 2 or i < 2 or los:
            out.append(2)
        else:
            out.append(3)
    return out


def dpm_multistep(c):
    o = c["options"]
    sde = o["algorithm_type"] == "sde-dpmsolver++"
    sig = c["sigmas"]
    orders = dpm_multistep_orders(c)
    assert orders == c["extra"]["order_per_step"], (orders, c["extra"]["order_per_step"])
    x = np.array(c["x_init"])
    noises = iter(np.array(n) for n in c["noises"])
    ms = []
    run = Run()
    for i, order in enumerate(orders):
        m0 = D_vp(x, sig[i])
        ms.append(m0)
        at, st = vp(sig[i + 1])
        l_t, l0 = lam(sig[i + 1]), lam(sig[i])
        _, s0 = vp(sig[i])
        h = l_t - l0
        em = math.exp(-h)  # 0 when sigma_next = 0
        e2 = math.exp(-2 * h)
        z = next(noises) if sde else 0.0
        if order == 1:
            if sde:
                x = (st / s0 * em) * x + at * (1 - e2) * m0 + st * math.sqrt(1 - e2) * z
            else:
                x = (st / s0) * x - at * (em - 1) * m0
        else:
            l1 = lam(sig[i - 1])
            h0 = l0 - l1
            r0 = h0 / h
            m1 = ms[-2]
            if order == 2:
                D0, D1 = m0, (m0 - m1) / r0
                if not sde:
                    if o["solver_type"] == "midpoint":
                        x = (st / s0) * x - at * (em - 1) * D0 - 0.5 * at * (em - 1) * D1
                    else:
                        x = (st / s0) * x - at * (em - 1) * D0 + at * ((em - 1) / h + 1) * D1
                else:
                    base = (st / s0 * em) * x + at * (1 - e2) * D0 + st * math.sqrt(1 - e2) * z
                    if o["solver_type"] == "midpoint":
                        x = base + 0.5 * at * (1 - e2) * D1
                    else:
                        x = base + at * ((1 - e2) / (-2 * h) + 1) * D1
            else:
                l2 = lam(sig[i - 2])
                h1 = l1 - l2
                r1 = h1 / h
                m2 = ms[-3]
                D1_0, D1_1 = (m0 - m1) / r0, (m1 - m2) / r1
                D1 = D1_0 + r0 / (r0 + r1) * (D1_0 - D1_1)
                D2 = (D1_0 - D1_1) / (r0 + r1)
                if not sde:
                    x = ((st / s0) * x - at * (em - 1) * m0 + at * ((em - 1) / h + 1) * D1
                         - at * ((em - 1 + h) / h**2 - 0.5) * D2)
                else:  # diffusers' formula, including its sign of the D2 term
                    x = ((st / s0 * em) * x + at * (1 - e2) * m0 + at * ((1 - e2) / (-2 * h) + 1) * D1
                         + at * ((1 - e2 - 2 * h) / (2 * h) ** 2 - 0.5) * D2 + st * math.sqrt(1 - e2) * z)
        run.step(x, m0)
    return run


def dpm_singlestep(c):
    o = c["options"]
    assert o["algorithm_type"] == "dpmsolver++"
    sig = c["sigmas"]
    orders = c["extra"]["order_list"]
    x = np.array(c["x_init"])
    run = Run()
    saved = None
    ms = []
    for i, order in enumerate(orders):
        m0 = D_vp(x, sig[i])
        ms.append(m0)
        at, st = vp(sig[i + 1])
        if order == 1:
            saved = x
            _, s0 = vp(sig[i])
            h = lam(sig[i + 1]) - lam(sig[i])
            x = (st / s0) * saved - at * (math.exp(-h) - 1) * m0
        else:
            assert order == 2 and o["solver_type"] == "midpoint"
            _, s1 = vp(sig[i - 1])
            h = lam(sig[i + 1]) - lam(sig[i - 1])
            r0 = (lam(sig[i]) - lam(sig[i - 1])) / h
            D0, D1 = ms[-2], (m0 - ms[-2]) / r0
            em = math.exp(-h)
            x = (st / s1) * saved - at * (em - 1) * D0 - 0.5 * at * (em - 1) * D1
        run.step(x, m0)
    assert c["extra"]["order_per_step"] == orders
    return run


def euler_k(x, sig, den_fn):
    run = Run()
    for i in range(len(sig) - 1):
        d0 = den_fn(x, sig[i])
        x = x + (x - d0) / sig[i] * (sig[i + 1] - sig[i])
        run.step(x, d0)
    return run


def heun_k(x, sig, den_fn, stage2=None):
    run = Run()
    for i in range(len(sig) - 1):
        d0 = den_fn(x, sig[i])
        d = (x - d0) / sig[i]
        dt = sig[i + 1] - sig[i]
        if sig[i + 1] == 0:
            x = x + d * dt
        else:
            x2 = x + d * dt
            dd = den_fn(x2, sig[i + 1])
            if stage2 is not None:
                stage2.append((x2, dd))
            x = x + (d + (x2 - dd) / sig[i + 1]) / 2 * dt
        run.step(x, d0)
    return run


def kspace(c, fn):
    """diffusers Euler/Heun: the VP ODE in k-space x/alpha == the VE ODE with D(xk, s) = x0(alpha xk)."""
    sig = c["sigmas"]
    den = lambda xk, s: D_vp(xk * vp(s)[0], s)  # noqa: E731
    xk = np.array(c["x_init"]) / vp(sig[0])[0]
    run = fn(xk, sig, den)
    run.xs = [xk_ * vp(sig[i + 1])[0] for i, xk_ in enumerate(run.xs)]
    return run


# ---------------------------------------------------------------- k-diffusion

def ancestral(s_from, s_to, eta):
    if not eta:
        return s_to, 0.0
    su = min(s_to, eta * (s_to**2 * (s_from**2 - s_to**2) / s_from**2) ** 0.5)
    return (s_to**2 - su**2) ** 0.5, su


def k_run(c):
    sig = c["sigmas"]
    o = c["options"]
    eta = o.get("eta", 0.0)
    x = np.array(c["x_init"])
    noises = iter(np.array(n) for n in c["noises"])
    smp = c["sampler"]
    if smp == "euler":
        return euler_k(x, sig, D_ve)
    if smp == "heun":
        return heun_k(x, sig, D_ve)
    run = Run()
    old = old2 = None
    h1 = h2 = None
    for i in range(len(sig) - 1):
        s, sn = sig[i], sig[i + 1]
        d0 = D_ve(x, s)
        if smp == "euler_ancestral":
            sd, su = ancestral(s, sn, eta)
            x = x + (x - d0) / s * (sd - s)
            if sn > 0:
                x = x + next(noises) * su
        elif smp == "dpmpp_2s_ancestral":
            sd, su = ancestral(s, sn, eta)
            if sd == 0:
                x = x + (x - d0) / s * (sd - s)
            else:
                t, tn = -math.log(s), -math.log(sd)
                h = tn - t
                sm = math.exp(-(t + h / 2))
                x2 = (sm / s) * x - math.expm1(-h / 2) * d0
                dd = D_ve(x2, sm)
                x = (sd / s) * x - math.expm1(-h) * dd
            if sn > 0:
                x = x + next(noises) * su
        elif smp == "dpmpp_2m":
            if sn == 0 or old is None:
                if sn == 0:
                    x = d0  # sigma_fn(inf)/sigma * x - expm1(-inf) * d0
                else:
                    h = math.log(s) - math.log(sn)
                    x = (sn / s) * x - math.expm1(-h) * d0
            else:
                h = math.log(s) - math.log(sn)
                r = (math.log(sig[i - 1]) - math.log(s)) / h
                dd = (1 + 1 / (2 * r)) * d0 - (1 / (2 * r)) * old
                x = (sn / s) * x - math.expm1(-h) * dd
            old = d0
        elif smp == "dpmpp_2m_sde":
            h = None
            if sn == 0:
                x = d0
            else:
                h = math.log(s) - math.log(sn)
                eh = eta * h
                x = sn / s * math.exp(-eh) * x + (-math.expm1(-h - eh)) * d0
                if old is not None:
                    r = h1 / h
                    if o["solver_type"] == "heun":
                        x = x + ((-math.expm1(-h - eh)) / (-h - eh) + 1) * (1 / r) * (d0 - old)
                    else:
                        x = x + 0.5 * (-math.expm1(-h - eh)) * (1 / r) * (d0 - old)
                if eta:
                    x = x + next(noises) * sn * math.sqrt(-math.expm1(-2 * eh))
            old, h1 = d0, h
        elif smp == "dpmpp_3m_sde":
            h = None
            if sn == 0:
                x = d0
            else:
                h = math.log(s) - math.log(sn)
                he = h * (eta + 1)
                x = math.exp(-he) * x + (-math.expm1(-he)) * d0
                if h2 is not None:
                    r0, r1 = h1 / h, h2 / h
                    d1_0, d1_1 = (d0 - old) / r0, (old - old2) / r1
                    d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                    d2 = (d1_0 - d1_1) / (r0 + r1)
                    p2 = math.expm1(-he) / he + 1
                    p3 = p2 / he - 0.5
                    x = x + p2 * d1 - p3 * d2
                elif h1 is not None:
                    x = x + (math.expm1(-he) / he + 1) * (d0 - old) / (h1 / h)
                if eta:
                    x = x + next(noises) * sn * math.sqrt(-math.expm1(-2 * h * eta))
            old, old2 = d0, old
            h1, h2 = h, h1
        else:
            raise NotImplementedError(smp)
        run.step(x, d0)
    return run


def reimplement(c):
    ref = c["reference"]
    if ref == "diffusers.DDIMScheduler":
        return ddim(c)
    if ref == "diffusers.DPMSolverMultistepScheduler":
        return dpm_multistep(c)
    if ref == "diffusers.DPMSolverSinglestepScheduler":
        return dpm_singlestep(c)
    if ref == "diffusers.EulerDiscreteScheduler":
        return kspace(c, euler_k)
    if ref == "diffusers.HeunDiscreteScheduler":
        return kspace(c, heun_k)
    if ref.startswith("k_diffusion."):
        return k_run(c)
    raise NotImplementedError(ref)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser()
    ap.add_argument("path", nargs="?", default=os.path.join(here, "..", "..", "tests", "golden", "solvers.json"))
    ap.add_argument("--tol", type=float, default=1e-11)
    args = ap.parse_args()
    data = json.load(open(args.path))
    global MU, STD, W
    MU = np.array(data["gmm"]["means"])
    STD = np.array(data["gmm"]["stds"])
    W = np.array(data["gmm"]["weights"])
    bad = 0
    for c in data["cases"]:
        run = reimplement(c)
        assert len(run.xs) == len(c["steps"])
        ex = max(np.abs(np.array(s["x"]) - x).max() for s, x in zip(c["steps"], run.xs))
        ed = max(np.abs(np.array(s["denoised"]) - d).max() for s, d in zip(c["steps"], run.dens) if "denoised" in s)
        ef = np.abs(np.array(c["final"]) - run.xs[-1]).max()
        # distance of each final sample to the nearest mixture mean, in units of that component's std
        fin = np.array(c["final"])
        z = min(np.linalg.norm(fin[:, None, :] - MU[None], axis=-1)[b].min() for b in range(fin.shape[0]))
        zmax = max((np.linalg.norm(fin[b][None] - MU, axis=-1) / STD).min() for b in range(fin.shape[0]))
        ok = max(ex, ed, ef) <= args.tol
        bad += not ok
        print(f"{'ok ' if ok else 'BAD'} {c['name']:45s} max|dx|={ex:.2e} max|dx0|={ed:.2e} "
              f"final->nearest mean {z:.3f} (<= {zmax:.2f} std)")
    print(f"{len(data['cases']) - bad} passed, {bad} failed")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
