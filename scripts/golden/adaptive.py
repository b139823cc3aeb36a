#!/usr/bin/env python3
"""Golden reference data for stride's adaptive-step solvers.

Runs the real references, unmodified, in float64 on the exact Gaussian mixture of gmm.py
(D = 6, K = 3, batch 2) with injected noise, and writes tests/golden/adaptive.json:

* adaptive_sde: "Gotta Go Fast" (Jolicoeur-Martineau et al. 2021), the official PyTorch
  port `sde_sampling_torch.py` of AlexiaJM/score_sde_fast_sampling (AdaptivePredictor +
  pc_sampler_adaptive), on top of `sde_lib.py` of yang-song/score_sde_pytorch, which the
  port imports as `sde_lib` (its README says to use that file). Neither is vendored: pass
  checkouts of both repositories (pinned commits below) with --ggf-dir / --score-sde-dir.
* dpm_adaptive: k-diffusion 0.1.1.post1 `sample_dpm_adaptive` (loaded by file path, see
  refs.py), with eta 0 and eta > 0 (noise injected through its `noise_sampler`).

Usage:
    git clone https://github.com/AlexiaJM/score_sde_fast_sampling /tmp/ggf
    git -C /tmp/ggf checkout 5da8f3fe103ee5ac3c3a336f16cc06c9541f0ed9
    git clone https://github.com/yang-song/score_sde_pytorch /tmp/score_sde_pytorch
    git -C /tmp/score_sde_pytorch checkout cb1f359f4aadf0ff9a5e122fe8fffc9451fd6e44
    python3 scripts/golden/adaptive.py --ggf-dir /tmp/ggf --score-sde-dir /tmp/score_sde_pytorch

How the references are driven (thin driver, no reference code copied):

* The port draws its noise with `torch.randn_like(x)` inside `AdaptivePredictor.update_fn`.
  While a case runs, the name `torch` inside the loaded port module is a proxy whose
  `randn_like` returns the next draw of a seeded float64 torch.Generator (recorded in order);
  every other attribute is torch's. The prior is passed as `prior=`.
* Iterations are recorded by a subclass of the port's `AdaptivePredictor` whose `update_fn`
  calls the original and logs its inputs and outputs; the scaled error is captured by
  wrapping the instance's `norm_fn`. The `"Linf"` case replaces `norm_fn` with the max-abs
  norm of the JAX `sampling.py` AdaptivePredictor (the torch port only has L2_scaled).
* The port expects images: states are shaped [B, 1, 1, D], so its per-sample size
  `n = C*H*W` is D.
* The score model is the exact mixture score, built as score_sde_pytorch's
  `get_score_fn` does for continuous VP (`score = -eps_hat / std`, std from
  `sde.marginal_prob`) and for VE (`score = (x0_hat - x) / std^2`).
"""

import argparse
import hashlib
import importlib.util
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gmm  # noqa: E402
import refs  # noqa: E402

F64 = torch.float64
SEED = 20240607
GGF_COMMIT = "5da8f3fe103ee5ac3c3a336f16cc06c9541f0ed9"
SCORE_SDE_PYTORCH_COMMIT = "cb1f359f4aadf0ff9a5e122fe8fffc9451fd6e44"
GGF_SHA256 = "a14503b55adce080f27adb78045a8342dfe47278c9dec82f711c29dfb0f1b07e"
SDE_LIB_SHA256 = "6f1e755bc75a9a059821117b277688297b985f39d75122949592cecb0cf6c503"


def arr(t):
    assert t.dtype == F64, t.dtype
    return t.reshape(gmm.BATCH, gmm.D).tolist()


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class Noise:
    """All randomness of a case: one seeded float64 generator, every draw recorded."""

    def __init__(self, seed):
        self.g = torch.Generator().manual_seed(seed)
        self.drawn = []

    def randn(self):
        return torch.randn(gmm.BATCH, gmm.D, dtype=F64, generator=self.g)

    def next(self):
        n = self.randn()
        self.drawn.append(n.clone())
        return n


# ------------------------------------------------------- Gotta Go Fast (torch port)

def load_module(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def load_ggf(ggf_dir, score_sde_dir):
    paths = {"sde_lib": os.path.join(score_sde_dir, "sde_lib.py"),
             "port": os.path.join(ggf_dir, "sde_sampling_torch.py")}
    for key, want in (("sde_lib", SDE_LIB_SHA256), ("port", GGF_SHA256)):
        got = sha256(paths[key])
        if got != want:
            print(f"warning: {paths[key]} has sha256 {got}, the pinned commit's is {want}", file=sys.stderr)
    sde_lib = load_module("sde_lib", paths["sde_lib"])  # the port does `import sde_lib`
    port = load_module("_ggf_sde_sampling_torch", paths["port"])
    return sde_lib, port, {k: sha256(p) for k, p in paths.items()}


class _TorchWithNoise:
    """The port's `torch`, except that `randn_like` replays the case's generator."""

    def __init__(self, noise):
        self._noise = noise

    def randn_like(self, x):
        return self._noise.next().reshape(x.shape).to(x.dtype)

    def __getattr__(self, name):
        return getattr(torch, name)


def make_recording_predictor(port, log, norm):
    class Recording(port.AdaptivePredictor):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            inner = self.norm_fn
            if norm == "Linf":  # JAX sampling.py AdaptivePredictor, norm == "Linf"
                def inner(v):
                    return torch.amax(torch.abs(v), dim=(1, 2, 3), keepdim=True)

            def norm_fn(v):
                out = inner(v)
                log["err"] = out.reshape(-1).clone()
                return out

            self.norm_fn = norm_fn

        def update_fn(self, x, t, h, x_prev):
            t_in, h_in = t.clone(), h.clone()
            x_out, x_prev_out, t_out, h_out = super().update_fn(x, t, h, x_prev)
            err = log.pop("err")
            log["iterations"].append({
                "t": t_in.tolist(),
                "h": h_in.tolist(),
                "err": err.tolist(),
                "accepted": (err <= 1).tolist(),
                "t_next": t_out.tolist(),
                "h_next": h_out.tolist(),
                "x": arr(x_out),
            })
            return x_out, x_prev_out, t_out, h_out

    return Recording


def vp_score(sde, counter):
    def score(x, t):
        counter[0] += 1
        b = x.shape[0]
        _, std = sde.marginal_prob(torch.zeros_like(x), t)
        log_mean_coeff = -0.25 * t ** 2 * (sde.beta_1 - sde.beta_0) - 0.5 * t * sde.beta_0
        alpha = torch.exp(log_mean_coeff)
        flat = x.reshape(b, gmm.D)
        x0 = gmm.x0_hat(flat, alpha, std)
        eps = (flat - alpha[:, None] * x0) / std[:, None]
        return (-eps / std[:, None]).reshape(x.shape)

    return score


def ve_score(sde, counter):
    def score(x, t):
        counter[0] += 1
        b = x.shape[0]
        _, std = sde.marginal_prob(x, t)
        flat = x.reshape(b, gmm.D)
        x0 = gmm.x0_hat(flat, 1.0, std)
        return ((x0 - flat) / (std[:, None] ** 2)).reshape(x.shape)

    return score


def k_sigma_vp(sde, t):
    """k-diffusion sigma s = sigma/alpha of the continuous VP SDE at time t (float64)."""
    t = torch.tensor(t, dtype=F64)
    log_mean_coeff = -0.25 * t ** 2 * (sde.beta_1 - sde.beta_0) - 0.5 * t * sde.beta_0
    return torch.sqrt(torch.expm1(-2.0 * log_mean_coeff)).item()


def run_ggf(mods, name, family, seed, eps, h_init, abstol, reltol, norm="L2_scaled", safety=0.9, exp=0.9,
            ve_range=(0.01, 50.0)):
    sde_lib, port, _ = mods
    shape = (gmm.BATCH, 1, 1, gmm.D)
    noise = Noise(seed)
    counter = [0]
    with refs.default_dtype(F64):
        if family == "vp":
            sde = sde_lib.VPSDE(beta_min=0.1, beta_max=20.0, N=1000)
            score = vp_score(sde, counter)
            x_init = noise.randn()  # VPSDE.prior_sampling: N(0, I)
            sde_desc = {"type": "vp", "beta_min": 0.1, "beta_max": 20.0}
            sigma_max, sigma_min = k_sigma_vp(sde, 1.0), k_sigma_vp(sde, eps)
        else:
            sde = sde_lib.VESDE(sigma_min=ve_range[0], sigma_max=ve_range[1], N=1000)
            score = ve_score(sde, counter)
            x_init = noise.randn() * ve_range[1]  # VESDE.prior_sampling: N(0, sigma_max^2 I)
            sde_desc = {"type": "ve", "sigma_min": ve_range[0], "sigma_max": ve_range[1]}
            # marginal std at t: sigma_min (sigma_max / sigma_min)^t (alpha = 1, so s = std)
            _, s1 = sde.marginal_prob(torch.zeros(1, 1, 1, 1), torch.ones(1))
            _, s0 = sde.marginal_prob(torch.zeros(1, 1, 1, 1), torch.full((1,), eps))
            sigma_max, sigma_min = s1.item(), s0.item()
        log = {"iterations": []}
        predictor = make_recording_predictor(port, log, norm)
        sampler = port.get_pc_sampler(sde=sde, shape=shape, predictor=predictor, denoise=True, device="cpu",
                                      eps=eps, abstol=abstol, reltol=reltol, safety=safety, exp=exp,
                                      adaptive=True, h_init=h_init)
        saved = port.torch
        port.torch = _TorchWithNoise(noise)
        try:
            final, n_ret = sampler(score, prior=x_init.reshape(shape).clone())
        finally:
            port.torch = saved
    assert final.dtype == F64
    its = log["iterations"]
    assert len(noise.drawn) == len(its)
    return {
        "name": name,
        "solver": "adaptive_sde",
        "reference": "AlexiaJM/score_sde_fast_sampling sde_sampling_torch.py (AdaptivePredictor, "
                     "pc_sampler_adaptive) + yang-song/score_sde_pytorch sde_lib.py",
        "family": family,
        "sde": sde_desc,
        "options": {"eps": eps, "h_init": h_init, "abstol": abstol, "reltol": reltol, "safety": safety,
                    "exp": exp, "norm": norm, "denoise": True},
        "sigma_max": sigma_max,
        "sigma_min": sigma_min,
        "x_init": arr(x_init),
        "noises": [arr(n) for n in noise.drawn],
        "iterations": its,
        "before_denoise": its[-1]["x"],
        "final": arr(final),
        "extra": {"seed": seed, "score_calls": counter[0], "returned_n": n_ret,
                  "n_iterations": len(its)},
    }


# ---------------------------------------------------------------- k-diffusion

def run_dpm_adaptive(name, family, seed, sigma_min, sigma_max, **opts):
    ks = refs.load_k_sampling()
    noise = Noise(seed)
    calls = [0]

    def alpha_of(s):
        s = torch.as_tensor(s, dtype=F64)
        return 1.0 / torch.sqrt(1.0 + s * s) if family == "vp" else torch.ones_like(s)

    def model(x, sigma):  # k-diffusion denoiser D(x_k, sigma) -> x0
        calls[0] += 1
        if family == "vp":  # native x = alpha x_k (k-diffusion's VP wrappers divide it out)
            a = alpha_of(sigma)
            return gmm.x0_hat(x * a[:, None], a, sigma * a)
        return gmm.x0_hat(x, 1.0, sigma)

    cb = []

    def callback(d):
        sigma = d["sigma"].item()
        cb.append({"lambda": d["t"].item(), "sigma": sigma, "h": float(d["h"]), "error": float(d["error"]),
                   "n_accept": d["n_accept"], "n_reject": d["n_reject"], "nfe": d["nfe"],
                   "x": arr(d["x"] * alpha_of(sigma)), "denoised": arr(d["denoised"])})

    draws = []

    def noise_sampler(sigma, sigma_next):
        z = noise.next()
        draws.append([sigma.item(), sigma_next.item()])
        return z

    with refs.default_dtype(F64):
        x_init_k = sigma_max * noise.randn()
        x, info = ks.sample_dpm_adaptive(model, x_init_k.clone(), sigma_min, sigma_max, callback=callback,
                                         disable=True, noise_sampler=noise_sampler, return_info=True, **opts)
    assert x.dtype == F64
    iterations = []
    prev_accept = 0
    for c in cb:
        accepted = c["n_accept"] > prev_accept
        prev_accept = c["n_accept"]
        iterations.append({"lambda": c["lambda"], "sigma": c["sigma"], "h_next": c["h"], "error": c["error"],
                           "accepted": accepted, "x": c["x"], "denoised": c["denoised"]})
    eta = opts.get("eta", 0.0)
    return {
        "name": name,
        "solver": "dpm_adaptive",
        "reference": "k_diffusion.sampling.sample_dpm_adaptive",
        "family": family,
        "options": {"order": 3, "rtol": 0.05, "atol": 0.0078, "h_init": 0.05, "pcoeff": 0.0, "icoeff": 1.0,
                    "dcoeff": 0.0, "accept_safety": 0.81, "eta": 0.0, "s_noise": 1.0, **opts},
        "sigma_max": sigma_max,
        "sigma_min": sigma_min,
        "x_init": arr(x_init_k * alpha_of(sigma_max)),
        # k-diffusion calls noise_sampler on every accepted step, even with eta = 0 (then
        # multiplied by su = 0): only eta > 0 noises matter and are replayed.
        "noises": [arr(n) for n in noise.drawn] if eta > 0 else [],
        "noise_calls": draws,
        "iterations": iterations,
        "final": arr(x * alpha_of(sigma_min)),
        "extra": {"seed": seed, "model_calls": calls[0], "info": info},
    }


# ------------------------------------------------------------------ cases

def cases(ggf):
    vp_sigma_max = k_sigma_vp(ggf[0].VPSDE(), 1.0)
    vp_sigma_min = k_sigma_vp(ggf[0].VPSDE(), 1e-3)
    out = [
        # The paper's VP setting (abstol 0.0078 for data in [-1, 1]) at the rtol 0.05.
        run_ggf(ggf, "ggf_vp_rtol0.05", "vp", SEED, eps=1e-3, h_init=0.01, abstol=0.0078, reltol=0.05),
        # The torch port's defaults (abstol = reltol = 1e-2).
        run_ggf(ggf, "ggf_vp_rtol0.01", "vp", SEED + 1, eps=1e-3, h_init=0.01, abstol=0.01, reltol=0.01),
        run_ggf(ggf, "ggf_vp_linf", "vp", SEED + 2, eps=1e-3, h_init=0.01, abstol=0.0078, reltol=0.05,
                norm="Linf"),
        # VE as in the paper's configs: eps 1e-5, h_init 0.5, abstol 0.0039.
        run_ggf(ggf, "ggf_ve", "ve", SEED + 3, eps=1e-5, h_init=0.5, abstol=0.0039, reltol=0.05),
        run_dpm_adaptive("dpm_adaptive_ve_o3", "ve", SEED + 10, 0.002, 80.0),
        run_dpm_adaptive("dpm_adaptive_ve_o2", "ve", SEED + 11, 0.002, 80.0, order=2),
        run_dpm_adaptive("dpm_adaptive_ve_o3_eta1", "ve", SEED + 12, 0.002, 80.0, eta=1.0),
        run_dpm_adaptive("dpm_adaptive_ve_o2_eta0.5", "ve", SEED + 13, 0.002, 80.0, order=2, eta=0.5),
        run_dpm_adaptive("dpm_adaptive_ve_pid", "ve", SEED + 14, 0.002, 80.0, rtol=0.01, pcoeff=0.3,
                         icoeff=0.9, dcoeff=0.2),
        run_dpm_adaptive("dpm_adaptive_vp_o3", "vp", SEED + 15, vp_sigma_min, vp_sigma_max),
    ]
    return out


def dump(obj, path, list_key):
    """Compact JSON with one list element per line (strict JSON)."""
    head = {k: v for k, v in obj.items() if k != list_key}
    first = json.dumps(head, allow_nan=False, separators=(",", ":"))[:-1]
    items = [json.dumps(e, allow_nan=False, separators=(",", ":")) for e in obj[list_key]]
    text = first + ',"' + list_key + '":[\n' + ",\n".join(items) + "\n]}\n"
    json.loads(text)
    with open(path, "w") as f:
        f.write(text)
    return len(text)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ggf-dir", default=os.environ.get("GGF_DIR"),
                    help="checkout of AlexiaJM/score_sde_fast_sampling (holds sde_sampling_torch.py)")
    ap.add_argument("--score-sde-dir", default=os.environ.get("SCORE_SDE_PYTORCH_DIR"),
                    help="checkout of yang-song/score_sde_pytorch (holds sde_lib.py)")
    ap.add_argument("--out", default=os.path.normpath(os.path.join(here, "..", "..", "tests", "golden",
                                                                   "adaptive.json")))
    args = ap.parse_args()
    if not args.ggf_dir or not args.score_sde_dir:
        ap.error("--ggf-dir and --score-sde-dir are required (see the usage above)")
    torch.use_deterministic_algorithms(True)
    ggf = load_ggf(args.ggf_dir, args.score_sde_dir)
    all_cases = cases(ggf)
    again = cases(ggf)
    assert json.dumps(all_cases) == json.dumps(again), "golden cases are not reproducible"
    for c in all_cases:
        n_acc = sum(1 for it in c["iterations"] for a in (it["accepted"] if isinstance(it["accepted"], list)
                                                          else [it["accepted"]]) if a)
        print(f"{c['name']}: {len(c['iterations'])} iterations, {n_acc} accepted (sample-steps)")
    obj = {
        "generator": "scripts/golden/adaptive.py",
        "versions": refs.versions(),
        "references": {
            "score_sde_fast_sampling": {"repo": "AlexiaJM/score_sde_fast_sampling", "commit": GGF_COMMIT,
                                        "file": "sde_sampling_torch.py", "sha256": ggf[2]["port"]},
            "score_sde_pytorch": {"repo": "yang-song/score_sde_pytorch", "commit": SCORE_SDE_PYTORCH_COMMIT,
                                  "file": "sde_lib.py", "sha256": ggf[2]["sde_lib"]},
        },
        "gmm": {"means": gmm.MEANS, "stds": gmm.STDS, "weights": gmm.WEIGHTS},
        "cases": all_cases,
    }
    size = dump(obj, args.out, "cases")
    print(f"{args.out}: {len(all_cases)} cases, {size} bytes")


if __name__ == "__main__":
    main()
