#!/usr/bin/env python3
"""Golden reference data for stride's samplers.

Runs the real reference samplers (HuggingFace diffusers schedulers and
k-diffusion's `sampling.py`) on the exact Gaussian-mixture denoiser of gmm.py,
in float64 with injected noise, and writes

    tests/golden/solvers.json    per-step trajectories of every case
    tests/golden/schedules.json  float32 schedule parity data (timesteps/sigmas)

Usage:  python3 scripts/golden/generate.py [--out-dir tests/golden]
See README.md beside this file for the format and the float64 conversions.
"""

import argparse
import json
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gmm  # noqa: E402
import refs  # noqa: E402

F64 = torch.float64
T_TRAIN = 1000

# Stable Diffusion 1.5 scheduler config (the keys every scheduler below shares or ignores).
SD15 = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
    "set_alpha_to_one": False,
    "prediction_type": "epsilon",
    "clip_sample": False,
    "trained_betas": None,
}

KARRAS_KD = {"sigma_min": 0.02, "sigma_max": 20.0, "rho": 7.0}
SEED = 20240601


# ------------------------------------------------------------------ helpers

def arr(t):
    """float64 tensor -> nested lists of Python floats (repr round-trips)."""
    assert t.dtype == F64, t.dtype
    return t.tolist()


def num(v):
    if isinstance(v, torch.Tensor):
        assert v.numel() == 1
        return v.item()
    return v


def jsonable(v):
    """Config values -> JSON (non-finite floats as strings, tuples as lists)."""
    if isinstance(v, float) and not math.isfinite(v):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return [jsonable(e) for e in v]
    if isinstance(v, dict):
        return {k: jsonable(e) for k, e in v.items()}
    if hasattr(v, "item"):
        return jsonable(v.item())
    return v


def scheduler_config(s):
    return {k: jsonable(v) for k, v in dict(s.config).items() if not k.startswith("_")}


class Noise:
    """All randomness: one float64 torch.Generator per case."""

    def __init__(self, seed):
        self.seed = seed
        self.g = torch.Generator().manual_seed(seed)
        self.drawn = []

    def _randn(self):
        return torch.randn(gmm.BATCH, gmm.D, dtype=F64, generator=self.g)

    def init(self):
        self.init_noise = self._randn()
        return self.init_noise

    def next(self):
        n = self._randn()
        self.drawn.append(n.clone())
        return n


def vp_alpha(s):
    return 1.0 / torch.sqrt(1.0 + torch.as_tensor(s, dtype=F64) ** 2)


def base_case(name, reference, family, prediction, sampler, options):
    return {
        "name": name,
        "reference": reference,
        "family": family,
        "prediction": prediction,
        "sampler": sampler,
        "options": options,
    }


def finish(case, sigmas, timesteps, x_init, noise, steps, final, extra):
    case["sigmas"] = [num(s) for s in sigmas]
    if timesteps is not None:
        case["timesteps"] = [num(t) for t in timesteps]
    case["x_init"] = arr(x_init)
    case["noises"] = [arr(n) for n in noise.drawn]
    case["steps"] = steps
    case["final"] = arr(final)
    extra = dict(extra)
    extra["seed"] = noise.seed
    extra["init_noise"] = arr(noise.init_noise)
    case["extra"] = extra
    return case


class CountingModel:
    def __init__(self, fn):
        self.fn = fn
        self.nfe = 0

    def __call__(self, *a):
        self.nfe += 1
        return self.fn(*a)


# ------------------------------------------------------------------ diffusers

def run_ddim(name, n, spacing, eta, prediction="epsilon", seed=SEED):
    from diffusers import DDIMScheduler

    with refs.float64_schedulers():
        sched = DDIMScheduler.from_config(SD15, timestep_spacing=spacing, prediction_type=prediction)
        sched.set_timesteps(n)
        refs.assert_float64(sched)
        noise = Noise(seed)
        model = CountingModel(lambda x, s: gmm.vp_prediction(x, s, prediction))
        x = noise.init() * sched.init_noise_sigma
        x_init = x.clone()
        steps, per_step, sig = [], [], []
        ac = sched.alphas_cumprod
        for i, t in enumerate(sched.timesteps):
            # Exactly what DDIMScheduler.step uses:
            prev_t = int(t) - sched.config.num_train_timesteps // sched.num_inference_steps
            abar_t = ac[int(t)]
            abar_prev = ac[prev_t] if prev_t >= 0 else sched.final_alpha_cumprod
            s_t = torch.sqrt((1 - abar_t) / abar_t)
            s_prev = torch.sqrt((1 - abar_prev) / abar_prev)
            sig.append(s_t)
            inp = sched.scale_model_input(x, t)
            out = model(inp, s_t)
            kw = {"variance_noise": noise.next()} if eta > 0 else {}
            res = sched.step(out, t, x, eta=eta, **kw)
            x = res.prev_sample
            assert x.dtype == F64
            steps.append({"i": i, "sigma": s_t.item(), "x": arr(x), "denoised": arr(res.pred_original_sample)})
            per_step.append({
                "t": int(t), "prev_t": prev_t,
                "alpha_prod_t": abar_t.item(), "alpha_prod_t_prev": abar_prev.item(),
                "sigma_t": s_t.item(), "sigma_prev": s_prev.item(),
                "variance": sched._get_variance(t, prev_t).item(),
            })
        sig.append(s_prev)
        case = base_case(name, "diffusers.DDIMScheduler", "vp", prediction, "ddim",
                         {"eta": eta, "spacing": spacing, "steps": n, "karras": False})
        return finish(case, sig, sched.timesteps, x_init, noise, steps, x, {
            "scheduler_config": scheduler_config(sched),
            "ddim_steps": per_step,
            "final_alpha_cumprod": sched.final_alpha_cumprod.item(),
            "nfe": model.nfe,
        })


def _wrap_orders(sched, log):
    """Log which DPM-Solver update the scheduler picks at each step (order 1/2/3)."""
    names = {
        "dpm_solver_first_order_update": 1,
        "multistep_dpm_solver_second_order_update": 2,
        "multistep_dpm_solver_third_order_update": 3,
        "singlestep_dpm_solver_second_order_update": 2,
        "singlestep_dpm_solver_third_order_update": 3,
    }
    for attr, order in names.items():
        if hasattr(sched, attr):
            orig = getattr(sched, attr)

            def wrapped(*a, _orig=orig, _order=order, **k):
                log.append(_order)
                return _orig(*a, **k)

            setattr(sched, attr, wrapped)


def run_dpm(name, n, cls_name, sampler, prediction="epsilon", seed=SEED, **opts):
    import diffusers

    cls = getattr(diffusers, cls_name)
    with refs.float64_schedulers():
        sched = cls.from_config(SD15, prediction_type=prediction, **opts)
        sched.set_timesteps(n)
        refs.assert_float64(sched)
        sde = sched.config.algorithm_type.startswith("sde-")
        noise = Noise(seed)
        model = CountingModel(lambda x, s: gmm.vp_prediction(x, s, prediction))
        orders = []
        _wrap_orders(sched, orders)
        x = noise.init() * sched.init_noise_sigma
        x_init = x.clone()
        steps = []
        for i, t in enumerate(sched.timesteps):
            if sched.step_index is None:
                sched._init_step_index(t)  # what step() does first; needed to know the sigma
            idx = sched.step_index
            s = sched.sigmas[idx]
            inp = sched.scale_model_input(x, t)
            out = model(inp, s)
            kw = {"variance_noise": noise.next()} if sde else {}
            res = sched.step(out, t, x, **kw)
            x = res.prev_sample
            assert x.dtype == F64 and len(orders) == i + 1
            steps.append({"i": i, "sigma": s.item(), "x": arr(x), "denoised": arr(sched.model_outputs[-1])})
        refs.assert_float64(sched)
        cfg = scheduler_config(sched)
        options = {
            "steps": n,
            "order": cfg["solver_order"],
            "algorithm_type": cfg["algorithm_type"],
            "solver_type": cfg["solver_type"],
            "lower_order_final": cfg["lower_order_final"],
            "final_sigmas_type": cfg["final_sigmas_type"],
            "karras": cfg["use_karras_sigmas"],
            "spacing": cfg.get("timestep_spacing", "linspace"),
        }
        if "euler_at_final" in cfg:
            options["euler_at_final"] = cfg["euler_at_final"]
        extra = {"scheduler_config": cfg, "order_per_step": orders, "nfe": model.nfe}
        if cls_name == "DPMSolverSinglestepScheduler":
            extra["order_list"] = list(sched.order_list)
        return finish(base_case(name, "diffusers." + cls_name, "vp", prediction, sampler, options),
                      sched.sigmas, sched.timesteps, x_init, noise, steps, x, extra)


def run_euler(name, n, karras=False, seed=SEED):
    from diffusers import EulerDiscreteScheduler

    with refs.float64_schedulers():
        sched = EulerDiscreteScheduler.from_config(SD15, use_karras_sigmas=karras)
        sched.set_timesteps(n)
        refs.assert_float64(sched)
        noise = Noise(seed)
        model = CountingModel(lambda x, s: gmm.vp_prediction(x, s, "epsilon"))
        init_noise_sigma = sched.init_noise_sigma
        xk = noise.init() * init_noise_sigma  # k-space (x / alpha)
        x_init = xk * vp_alpha(sched.sigmas[0])
        steps = []
        for i, t in enumerate(sched.timesteps):
            inp = sched.scale_model_input(xk, t)  # = native state
            s = sched.sigmas[sched.step_index]
            out = model(inp, s)
            res = sched.step(out, t, xk)
            xk = res.prev_sample
            assert xk.dtype == F64
            s_next = sched.sigmas[sched.step_index]
            steps.append({"i": i, "sigma": s.item(), "x": arr(xk * vp_alpha(s_next)),
                          "denoised": arr(res.pred_original_sample)})
        cfg = scheduler_config(sched)
        options = {"steps": n, "karras": karras, "spacing": cfg["timestep_spacing"],
                   "final_sigmas_type": cfg["final_sigmas_type"]}
        return finish(base_case(name, "diffusers.EulerDiscreteScheduler", "vp", "epsilon", "euler", options),
                      sched.sigmas, sched.timesteps, x_init, noise, steps, xk * vp_alpha(sched.sigmas[-1]),
                      {"scheduler_config": cfg, "init_noise_sigma": num(init_noise_sigma), "nfe": model.nfe})


def run_heun(name, n, karras=False, seed=SEED):
    from diffusers import HeunDiscreteScheduler

    with refs.float64_schedulers():
        sched = HeunDiscreteScheduler.from_config(SD15, use_karras_sigmas=karras)
        sched.set_timesteps(n)
        refs.assert_float64(sched)
        noise = Noise(seed)
        model = CountingModel(lambda x, s: gmm.vp_prediction(x, s, "epsilon"))
        init_noise_sigma = sched.init_noise_sigma
        xk = noise.init() * init_noise_sigma
        x_init = xk * vp_alpha(sched.sigmas[0])
        calls = []
        for j, t in enumerate(sched.timesteps):
            first = sched.state_in_first_order
            inp = sched.scale_model_input(xk, t)
            s = sched.sigmas[sched.step_index]
            out = model(inp, s)
            res = sched.step(out, t, xk)
            xk = res.prev_sample
            assert xk.dtype == F64
            calls.append({"first_order": first, "sigma_eval": s.item(), "xk": xk,
                          "denoised": res.pred_original_sample})
        # Group scheduler calls into Karras steps: i -> (stage 1, stage 2); the last step is Euler only.
        sig = [sched.sigmas[0]] + [sched.sigmas[k] for k in range(1, len(sched.sigmas) - 1, 2)] + [sched.sigmas[-1]]
        steps, stage2 = [], []
        j = 0
        for i in range(n):
            c1 = calls[j]
            assert c1["first_order"] and c1["sigma_eval"] == sig[i].item()
            j += 1
            if i < n - 1:
                c2 = calls[j]
                assert not c2["first_order"] and c2["sigma_eval"] == sig[i + 1].item()
                j += 1
                out_xk = c2["xk"]
                stage2.append({"i": i, "sigma": c2["sigma_eval"],
                               "x_pred": arr(c1["xk"] * vp_alpha(sig[i + 1])),
                               "denoised": arr(c2["denoised"])})
            else:
                out_xk = c1["xk"]
            steps.append({"i": i, "sigma": sig[i].item(), "x": arr(out_xk * vp_alpha(sig[i + 1])),
                          "denoised": arr(c1["denoised"])})
        assert j == len(calls)
        cfg = scheduler_config(sched)
        options = {"steps": n, "karras": karras, "spacing": cfg["timestep_spacing"]}
        return finish(base_case(name, "diffusers.HeunDiscreteScheduler", "vp", "epsilon", "heun", options),
                      sig, sched.timesteps, x_init, noise, steps, xk * vp_alpha(sig[-1]), {
                          "scheduler_config": cfg, "init_noise_sigma": num(init_noise_sigma),
                          "scheduler_sigmas": [num(s) for s in sched.sigmas],
                          "stage2": stage2, "nfe": model.nfe})


# ---------------------------------------------------------------- k-diffusion

def k_sigmas(n):
    ks = refs.load_k_sampling()
    with refs.default_dtype(F64):  # upstream builds the ramp with the default dtype (float32)
        s = ks.get_sigmas_karras(n, KARRAS_KD["sigma_min"], KARRAS_KD["sigma_max"], KARRAS_KD["rho"])
    assert s.dtype == F64
    return s


def run_k(name, fn_name, sampler, n=10, seed=SEED, stochastic=False, **opts):
    ks = refs.load_k_sampling()
    fn = getattr(ks, fn_name)
    sigmas = k_sigmas(n)
    noise = Noise(seed)
    model = CountingModel(gmm.ve_denoiser)
    x = sigmas[0] * noise.init()
    x_init = x.clone()
    cb = []

    def callback(d):
        cb.append({"i": d["i"], "sigma": num(d["sigma"]), "sigma_hat": num(d["sigma_hat"]),
                   "x": d["x"].clone(), "denoised": d["denoised"].clone()})

    kw = dict(opts)
    if stochastic:
        kw["noise_sampler"] = lambda sigma, sigma_next: noise.next()
    final = fn(model, x, sigmas, callback=callback, disable=True, **kw)
    assert final.dtype == F64 and len(cb) == n
    steps = []
    for i, c in enumerate(cb):
        assert c["i"] == i and c["sigma"] == c["sigma_hat"]
        after = cb[i + 1]["x"] if i + 1 < n else final
        steps.append({"i": i, "sigma": c["sigma"], "x": arr(after), "denoised": arr(c["denoised"])})
    options = {"steps": n, "karras": True, **KARRAS_KD, **opts}
    return finish(base_case(name, "k_diffusion.sampling." + fn_name, "ve", "sample", sampler, options),
                  sigmas, None, x_init, noise, steps, final, {"nfe": model.nfe})


# ------------------------------------------------------------------ cases

def solver_cases():
    D = "DPMSolverMultistepScheduler"
    S = "DPMSolverSinglestepScheduler"
    c = []
    # DDIM
    for eta in (0.0, 1.0):
        for spacing in ("leading", "trailing", "linspace"):
            c.append(run_ddim(f"diffusers_ddim_{spacing}_eta{int(eta)}_n10", 10, spacing, eta))
    c.append(run_ddim("diffusers_ddim_leading_eta0_n20", 20, "leading", 0.0))
    c.append(run_ddim("diffusers_ddim_linspace_eta1_n20", 20, "linspace", 1.0))
    c.append(run_ddim("diffusers_ddim_leading_eta0_vpred_n10", 10, "leading", 0.0, prediction="v_prediction"))
    # DPM-Solver++ multistep (ODE)
    c.append(run_dpm("diffusers_dpmpp_1_n10", 10, D, "dpmpp_1", solver_order=1))
    for order, sampler in ((2, "dpmpp_2m"), (3, "dpmpp_3m")):
        for st in ("midpoint", "heun"):
            c.append(run_dpm(f"diffusers_{sampler}_{st}_n10", 10, D, sampler, solver_order=order, solver_type=st))
        c.append(run_dpm(f"diffusers_{sampler}_midpoint_karras_n10", 10, D, sampler, solver_order=order,
                         solver_type="midpoint", use_karras_sigmas=True))
    c.append(run_dpm("diffusers_dpmpp_2m_midpoint_n20", 20, D, "dpmpp_2m", solver_order=2))
    c.append(run_dpm("diffusers_dpmpp_3m_midpoint_n20", 20, D, "dpmpp_3m", solver_order=3))
    # final sigma = sigma_min instead of the default zero; N=20 >= 15, so lower_order_final does not
    # apply and the last steps keep full order.
    c.append(run_dpm("diffusers_dpmpp_2m_midpoint_sigmamin_n20", 20, D, "dpmpp_2m", solver_order=2,
                     final_sigmas_type="sigma_min"))
    c.append(run_dpm("diffusers_dpmpp_3m_heun_sigmamin_n20", 20, D, "dpmpp_3m", solver_order=3,
                     solver_type="heun", final_sigmas_type="sigma_min"))
    c.append(run_dpm("diffusers_dpmpp_2m_midpoint_sigmamin_n10", 10, D, "dpmpp_2m", solver_order=2,
                     final_sigmas_type="sigma_min"))
    c.append(run_dpm("diffusers_dpmpp_2m_midpoint_vpred_n10", 10, D, "dpmpp_2m", prediction="v_prediction",
                     solver_order=2))
    # SDE-DPM-Solver++ multistep (injected noise)
    c.append(run_dpm("diffusers_dpmpp_2m_sde_midpoint_n10", 10, D, "dpmpp_2m_sde",
                     algorithm_type="sde-dpmsolver++", solver_order=2, solver_type="midpoint"))
    c.append(run_dpm("diffusers_dpmpp_2m_sde_heun_n10", 10, D, "dpmpp_2m_sde",
                     algorithm_type="sde-dpmsolver++", solver_order=2, solver_type="heun"))
    c.append(run_dpm("diffusers_dpmpp_2m_sde_midpoint_karras_n20", 20, D, "dpmpp_2m_sde",
                     algorithm_type="sde-dpmsolver++", solver_order=2, solver_type="midpoint",
                     use_karras_sigmas=True))
    c.append(run_dpm("diffusers_dpmpp_3m_sde_n20", 20, D, "dpmpp_3m_sde",
                     algorithm_type="sde-dpmsolver++", solver_order=3))
    # DPM-Solver++ singlestep (2S, ODE)
    c.append(run_dpm("diffusers_dpmpp_2s_n10", 10, S, "dpmpp_2s", solver_order=2))
    c.append(run_dpm("diffusers_dpmpp_2s_n20", 20, S, "dpmpp_2s", solver_order=2))
    # Euler / Heun (k-space schedulers)
    c.append(run_euler("diffusers_euler_n10", 10))
    c.append(run_euler("diffusers_euler_karras_n10", 10, karras=True))
    c.append(run_euler("diffusers_euler_n20", 20))
    c.append(run_heun("diffusers_heun_n10", 10))
    c.append(run_heun("diffusers_heun_karras_n10", 10, karras=True))
    # k-diffusion (ve family, Karras sigmas 20 -> 0.02, then 0)
    c.append(run_k("kdiff_euler_n10", "sample_euler", "euler"))
    c.append(run_k("kdiff_euler_ancestral_eta1_n10", "sample_euler_ancestral", "euler_ancestral",
                   stochastic=True, eta=1.0))
    c.append(run_k("kdiff_heun_n10", "sample_heun", "heun"))
    c.append(run_k("kdiff_dpmpp_2m_n10", "sample_dpmpp_2m", "dpmpp_2m"))
    c.append(run_k("kdiff_dpmpp_2m_n20", "sample_dpmpp_2m", "dpmpp_2m", n=20))
    for st in ("midpoint", "heun"):
        c.append(run_k(f"kdiff_dpmpp_2m_sde_{st}_eta1_n10", "sample_dpmpp_2m_sde", "dpmpp_2m_sde",
                       stochastic=True, eta=1.0, solver_type=st))
    c.append(run_k("kdiff_dpmpp_3m_sde_eta1_n10", "sample_dpmpp_3m_sde", "dpmpp_3m_sde", stochastic=True, eta=1.0))
    c.append(run_k("kdiff_dpmpp_3m_sde_eta1_n20", "sample_dpmpp_3m_sde", "dpmpp_3m_sde", n=20,
                   stochastic=True, eta=1.0))
    c.append(run_k("kdiff_dpmpp_3m_sde_eta0_n10", "sample_dpmpp_3m_sde", "dpmpp_3m_sde", stochastic=True, eta=0.0))
    c.append(run_k("kdiff_dpmpp_2s_ancestral_eta1_n10", "sample_dpmpp_2s_ancestral", "dpmpp_2s_ancestral",
                   stochastic=True, eta=1.0))
    names = [x["name"] for x in c]
    assert len(names) == len(set(names)), "duplicate case names"
    return c


# -------------------------------------------------------------- schedules

def schedule_data():
    """float32 schedules exactly as diffusers / k-diffusion compute them (no float64 promotion)."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

    ks = refs.load_k_sampling()
    ns = (1, 10, 20, 30, 50)
    cases = []

    def add(cls, spacing, karras, n, with_sigmas, extra=None):
        s = cls.from_config(SD15, timestep_spacing=spacing, use_karras_sigmas=karras)
        s.set_timesteps(n)
        entry = {"scheduler": cls.__name__, "spacing": spacing, "karras": karras, "n": n,
                 "timesteps": s.timesteps.tolist(),
                 "sigmas": s.sigmas.tolist() if with_sigmas else None}
        if with_sigmas:
            assert s.sigmas.dtype == torch.float32
        if extra:
            entry.update(extra(s))
        cases.append(entry)

    for n in ns:
        for sp in ("leading", "trailing", "linspace"):
            add(DDIMScheduler, sp, False, n, False)
        for sp, k in (("leading", False), ("trailing", False), ("linspace", False), ("leading", True)):
            add(EulerDiscreteScheduler, sp, k, n, True, lambda s: {"init_noise_sigma": float(s.init_noise_sigma)})
        for sp, k in (("linspace", False), ("leading", False), ("trailing", False), ("linspace", True)):
            add(DPMSolverMultistepScheduler, sp, k, n, True)

    kd = []
    for n in (1, 10, 20):
        for dtype in (torch.float32, torch.float64):
            with refs.default_dtype(dtype):
                for fn, args in (("get_sigmas_karras", {"sigma_min": 0.0292, "sigma_max": 14.6146, "rho": 7.0}),
                                 ("get_sigmas_exponential", {"sigma_min": 0.0292, "sigma_max": 14.6146})):
                    try:
                        s = getattr(ks, fn)(n, **args)
                    except Exception as e:  # pragma: no cover - recorded, not fatal
                        print(f"skip k_diffusion {fn} n={n}: {e!r}", file=sys.stderr)
                        continue
                    assert s.dtype == dtype
                    kd.append({"fn": fn, "n": n, **args, "dtype": str(dtype).replace("torch.", ""),
                               "sigmas": s.tolist()})

    ref = DDIMScheduler.from_config(SD15)
    assert ref.alphas_cumprod.dtype == torch.float32
    return {
        "generator": "scripts/golden/generate.py",
        "versions": refs.versions(),
        "config": {k: v for k, v in SD15.items()},
        "alphas_cumprod": ref.alphas_cumprod.tolist(),
        "cases": cases,
        "k_diffusion": kd,
    }


# ------------------------------------------------------------------ output

def dump(obj, path, list_key):
    """Compact JSON with one list element per line (small, diff-friendly, strict JSON)."""
    head = {k: v for k, v in obj.items() if k != list_key}
    parts = [json.dumps(head, allow_nan=False, separators=(",", ":"))[:-1]]
    items = [json.dumps(e, allow_nan=False, separators=(",", ":")) for e in obj[list_key]]
    text = parts[0] + ',"' + list_key + '":[\n' + ",\n".join(items) + "\n]}\n"
    json.loads(text)  # sanity
    with open(path, "w") as f:
        f.write(text)
    return len(text)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", default=os.path.normpath(os.path.join(here, "..", "..", "tests", "golden")))
    args = ap.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)

    torch.use_deterministic_algorithms(True)
    import diffusers

    diffusers.utils.logging.set_verbosity_error()  # e.g. the singlestep lower_order_final override notice
    cases = solver_cases()
    again = solver_cases()  # every case is a pure function of its seed: must repeat bit for bit
    assert json.dumps(cases) == json.dumps(again), "golden cases are not reproducible"

    solvers = {
        "generator": "scripts/golden/generate.py",
        "versions": refs.versions(),
        "gmm": {"means": gmm.MEANS, "stds": gmm.STDS, "weights": gmm.WEIGHTS},
        "cases": cases,
    }
    size = dump(solvers, os.path.join(args.out_dir, "solvers.json"), "cases")
    print(f"solvers.json: {len(cases)} cases, {size} bytes")
    sched = schedule_data()
    size = dump(sched, os.path.join(args.out_dir, "schedules.json"), "cases")
    print(f"schedules.json: {len(sched['cases'])} scheduler cases, {len(sched['k_diffusion'])} k-diffusion, {size} bytes")


if __name__ == "__main__":
    main()
