"""Loading the reference implementations.

* k-diffusion: `k_diffusion/sampling.py` is loaded by file path, unmodified, as
  module `_kdiff_ref.sampling`. Its only package-relative import, `from . import
  utils`, is served by a stub package whose `utils.append_dims` is the function
  copied verbatim (via `ast`) from the installed `k_diffusion/utils.py`; this
  avoids the package `__init__` and its heavy dependencies (torchvision, ...).
* diffusers: the scheduler modules are used unmodified, but while a golden case
  runs, the names `torch` and `np` inside those modules are rebound to proxies in
  which `float32` means `float64` (see `float64_schedulers`). That turns every
  float32 internal (betas, alphas_cumprod, alpha_t/sigma_t/lambda_t, sigmas, the
  `.astype(np.float32)` at the end of set_timesteps, the `sample.to(float32)` in
  DPMSolverMultistep/EulerDiscrete step()) into float64, so each reference is a
  float64 computation from float64 betas.
"""

import ast
import contextlib
import importlib.metadata
import importlib.util
import os
import sys
import types

import numpy as np
import torch


# ---------------------------------------------------------------- k-diffusion

def k_diffusion_dir():
    spec = importlib.util.find_spec("k_diffusion")  # does not execute the package
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("k-diffusion is not installed (pip install --no-deps k-diffusion)")
    return list(spec.submodule_search_locations)[0]


def load_k_sampling():
    if "_kdiff_ref.sampling" in sys.modules:
        return sys.modules["_kdiff_ref.sampling"]
    root = k_diffusion_dir()
    pkg = types.ModuleType("_kdiff_ref")
    pkg.__path__ = []
    utils = types.ModuleType("_kdiff_ref.utils")
    src = open(os.path.join(root, "utils.py")).read()
    fn = [n for n in ast.parse(src).body if isinstance(n, ast.FunctionDef) and n.name == "append_dims"]
    assert len(fn) == 1, "append_dims not found in k_diffusion/utils.py"
    exec(compile(ast.Module(body=fn, type_ignores=[]), os.path.join(root, "utils.py"), "exec"), utils.__dict__)
    pkg.utils = utils
    sys.modules["_kdiff_ref"] = pkg
    sys.modules["_kdiff_ref.utils"] = utils
    spec = importlib.util.spec_from_file_location("_kdiff_ref.sampling", os.path.join(root, "sampling.py"))
    mod = importlib.util.module_from_spec(spec)
    mod.__package__ = "_kdiff_ref"
    sys.modules["_kdiff_ref.sampling"] = mod
    spec.loader.exec_module(mod)
    return mod


@contextlib.contextmanager
def default_dtype(dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


# ------------------------------------------------------------------ diffusers

class _Promote:
    """Module proxy: attribute `float32` reads as `float64`, everything else passes through."""

    def __init__(self, mod, f64):
        self._mod = mod
        self._f64 = f64

    def __getattr__(self, name):
        if name == "float32":
            return self._f64
        return getattr(self._mod, name)


SCHEDULER_MODULES = [
    "diffusers.schedulers.scheduling_ddim",
    "diffusers.schedulers.scheduling_dpmsolver_multistep",
    "diffusers.schedulers.scheduling_dpmsolver_singlestep",
    "diffusers.schedulers.scheduling_euler_discrete",
    "diffusers.schedulers.scheduling_heun_discrete",
]


@contextlib.contextmanager
def float64_schedulers():
    """Run diffusers schedulers (construction, set_timesteps, step) in float64."""
    import importlib

    mods = [importlib.import_module(m) for m in SCHEDULER_MODULES]
    saved = []
    for m in mods:
        saved.append((m, m.torch, m.np))
        m.torch = _Promote(torch, torch.float64)
        m.np = _Promote(np, np.float64)
    try:
        with default_dtype(torch.float64):
            yield
    finally:
        for m, t, n in saved:
            m.torch = t
            m.np = n


def assert_float64(scheduler):
    """Every floating tensor / array the scheduler holds must be float64."""
    for k, v in vars(scheduler).items():
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            assert v.dtype == torch.float64, (type(scheduler).__name__, k, v.dtype)
        if isinstance(v, np.ndarray) and np.issubdtype(v.dtype, np.floating):
            assert v.dtype == np.float64, (type(scheduler).__name__, k, v.dtype)
        if isinstance(v, list):
            for e in v:
                if isinstance(e, torch.Tensor) and e.is_floating_point():
                    assert e.dtype == torch.float64, (type(scheduler).__name__, k, e.dtype)


def versions():
    def ver(name):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "diffusers": ver("diffusers"),
        "k_diffusion": ver("k-diffusion"),
        "torchsde": ver("torchsde"),
        "scipy": ver("scipy"),
    }
