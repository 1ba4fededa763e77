"""Reconstruction metrics on video clips: PSNR and SSIM (LPIPS lives in ``train_vae.lpips``).

Conventions (see DESIGN.md section 6: the reference code min-max normalised every batch; we never do):
  * PSNR/SSIM take frames in [0, 1]; inputs are CLAMPED to [0, data_range], never rescaled.
    Use ``to_unit`` to map model outputs in [-1, 1] to [0, 1].
  * Inputs are clips (B, 3, T, H, W) or images (B, 3, H, W) (an image is a 1-frame clip).
  * Each metric is computed per frame, then averaged over the frames of a clip -> shape (B,).
    Average the (B,) values over the data set for the reported number.

FVD functions are added to this module by a separate component (``train_vae/i3d.py`` / fvd).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["to_unit", "psnr", "ssim", "PSNR_MAX_DB"]

PSNR_MAX_DB = 100.0  # PSNR of a frame whose MSE is 0 (identical frames) is capped here


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """Map [-1, 1] -> [0, 1] (``(x + 1) / 2``), clamping values outside the range."""
    return ((x + 1) * 0.5).clamp(0.0, 1.0)


def _as_frames(x: torch.Tensor, y: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Check shapes; return x, y as (B*T, C, H, W) frames plus B and T."""
    if x.shape != y.shape:
        raise ValueError(f"{name}: inputs must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.ndim == 4:
        if x.shape[1] != 3:
            raise ValueError(f"{name}: expected (B, 3, H, W) or (B, 3, T, H, W), got {tuple(x.shape)}")
        return x, y, x.shape[0], 1
    if x.ndim == 5:
        b, c, t, h, w = x.shape
        if c != 3:
            raise ValueError(f"{name}: expected (B, 3, H, W) or (B, 3, T, H, W), got {tuple(x.shape)}")
        fold = lambda v: v.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)  # noqa: E731
        return fold(x), fold(y), b, t
    raise ValueError(f"{name}: expected (B, 3, H, W) or (B, 3, T, H, W), got {tuple(x.shape)}")


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


@torch.no_grad()
def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-clip PSNR in dB, shape (B,).

    x, y: (B, 3, T, H, W) or (B, 3, H, W), values in [0, data_range] (clamped to it, not rescaled).
    For every frame MSE is taken over channels and pixels, PSNR = 10 log10(data_range^2 / MSE);
    the per-frame PSNRs of a clip are averaged. A frame with MSE 0 scores ``PSNR_MAX_DB`` (100 dB)
    instead of inf, so averages stay finite.
    """
    xf, yf, b, t = _as_frames(x, y, "psnr")
    dt = _compute_dtype(xf)
    xf = xf.to(dt).clamp(0.0, data_range)
    yf = yf.to(dt).clamp(0.0, data_range)
    mse = ((xf - yf) ** 2).mean(dim=(1, 2, 3))
    floor = data_range**2 * 10.0 ** (-PSNR_MAX_DB / 10.0)
    db = 10.0 * torch.log10(data_range**2 / mse.clamp_min(floor))
    return db.view(b, t).mean(dim=1)


def _gaussian_1d(sigma: float, radius: int, dtype, device) -> torch.Tensor:
    r = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (r / sigma) ** 2)
    return (g / g.sum()).to(dtype=dtype, device=device)


@torch.no_grad()
def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, sigma: float = 1.5,
         frame_chunk: int = 64) -> torch.Tensor:
    """Per-clip SSIM (Wang et al. 2004), shape (B,).

    x, y: (B, 3, T, H, W) or (B, 3, H, W), values in [0, data_range] (clamped to it, not rescaled).
    Matches ``skimage.metrics.structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=data_range, channel_axis=-1)`` per frame: Gaussian
    window (sigma 1.5, truncated at 3.5 sigma -> 11 taps), K1 = 0.01, K2 = 0.03, population
    covariance, SSIM map averaged over the valid region only (a 5-pixel border is dropped, so no
    padding value enters). SSIM is computed PER CHANNEL and the channel values are averaged
    (no grey conversion); then frames of a clip are averaged. Frames must be at least 11x11.
    ``frame_chunk`` frames are processed at a time to bound memory.
    """
    xf, yf, b, t = _as_frames(x, y, "ssim")
    radius = int(3.5 * sigma + 0.5)
    win = 2 * radius + 1
    h, w = xf.shape[-2:]
    if h < win or w < win:
        raise ValueError(f"ssim: frames must be at least {win}x{win}, got {h}x{w}")
    dt = _compute_dtype(xf)
    g = _gaussian_1d(sigma, radius, dt, xf.device)
    gv = g.view(1, 1, win, 1).repeat(5, 1, 1, 1)
    gh = g.view(1, 1, 1, win).repeat(5, 1, 1, 1)
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    out = []
    for s in range(0, xf.shape[0], frame_chunk):
        a = xf[s : s + frame_chunk].to(dt).clamp(0.0, data_range)
        bb = yf[s : s + frame_chunk].to(dt).clamp(0.0, data_range)
        n, c = a.shape[:2]
        a = a.reshape(n * c, 1, h, w)
        bb = bb.reshape(n * c, 1, h, w)
        stack = torch.cat([a, bb, a * a, bb * bb, a * bb], dim=1)  # (N*C, 5, H, W)
        filt = F.conv2d(F.conv2d(stack, gv, groups=5), gh, groups=5)  # valid region only
        ux, uy, uxx, uyy, uxy = filt.unbind(dim=1)
        vx = uxx - ux * ux
        vy = uyy - uy * uy
        vxy = uxy - ux * uy
        s_map = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
        out.append(s_map.to(torch.float64).reshape(n, -1).mean(dim=1))  # channels x pixels
    per_frame = torch.cat(out)
    return per_frame.view(b, t).mean(dim=1).to(dt)

