"""Exact Gaussian-mixture denoiser (float64), shared with the Rust tests.

Data: K = 3 isotropic Gaussians in D = 6 dimensions. Forward process
x_t = alpha * x0 + sigma * eps. The posterior mean E[x0 | x_t] is exact.
"""

import torch

DTYPE = torch.float64

MEANS = [
    [1.0, -0.5, 0.25, 0.0, 0.8, -1.2],
    [-0.9, 0.7, -0.3, 1.1, -0.2, 0.4],
    [0.3, 0.3, -1.0, -0.6, 0.5, 0.9],
]
STDS = [0.3, 0.5, 0.2]
WEIGHTS = [0.5, 0.3, 0.2]
D = 6
K = 3
BATCH = 2

_MU = torch.tensor(MEANS, dtype=DTYPE)  # [K, D]
_STD = torch.tensor(STDS, dtype=DTYPE)  # [K]
_W = torch.tensor(WEIGHTS, dtype=DTYPE)  # [K]


def _per_row(v, b):
    """Scalar / 0-dim / [B] -> float64 tensor of shape [B, 1]."""
    v = torch.as_tensor(v, dtype=DTYPE)
    if v.dim() == 0:
        v = v.expand(b)
    return v.reshape(b, 1)


def x0_hat(x, alpha, sigma):
    """Exact posterior mean E[x0 | x_t = x] for x of shape [B, D] (float64)."""
    assert x.dtype == DTYPE, x.dtype
    b = x.shape[0]
    a = _per_row(alpha, b)  # [B, 1]
    s = _per_row(sigma, b)  # [B, 1]
    var = a * a * _STD[None, :] ** 2 + s * s  # [B, K]
    diff = x[:, None, :] - a[:, :, None] * _MU[None, :, :]  # [B, K, D]
    log_r = torch.log(_W)[None, :] - 0.5 * D * torch.log(var) - (diff * diff).sum(-1) / (2.0 * var)
    r = torch.softmax(log_r, dim=1)  # [B, K]
    gain = a * _STD[None, :] ** 2 / var  # [B, K]
    comp = _MU[None, :, :] + gain[:, :, None] * diff  # [B, K, D]
    return (r[:, :, None] * comp).sum(1)


def vp_alpha_sigma(s):
    """k-diffusion sigma s = sigma/alpha -> (alpha, sigma) of the VP process."""
    s = torch.as_tensor(s, dtype=DTYPE)
    alpha = 1.0 / torch.sqrt(1.0 + s * s)
    return alpha, s * alpha


def vp_prediction(x, s, prediction):
    """What a VP (diffusers) model returns at k-sigma s, for the native state x."""
    alpha, sigma = vp_alpha_sigma(s)
    x0 = x0_hat(x, alpha, sigma)
    eps = (x - alpha * x0) / sigma
    if prediction == "epsilon":
        return eps
    if prediction == "v_prediction":
        return alpha * eps - sigma * x0
    if prediction == "sample":
        return x0
    raise ValueError(prediction)


def ve_denoiser(x, sigma):
    """k-diffusion model(x, sigma): x0_hat at alpha = 1, sigma = s (sigma may be [B])."""
    return x0_hat(x, 1.0, sigma)
