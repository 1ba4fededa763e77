"""Frechet distance between feature sets, and FVD with I3D features (see ``train_vae.i3d``).

FD = |mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr(sqrtm(S_a S_b)), computed in float64 with
``np.cov(rowvar=False)`` (unbiased) covariances. When ``sqrtm`` is not finite (near-singular
product) both covariances get ``eps * I`` added and it is retried; a small imaginary part of the
square root (numerical noise) is dropped, a large one (diagonal |imag| > 1e-3) raises. Unlike
pytorch-fid, the regularised covariances are also used in the trace terms, so identical-within-set
features (zero covariances, e.g. constant videos) give exactly |mu_a - mu_b|^2 as the TF reference.

Features must be gathered over all ranks before calling :func:`frechet_distance` (the statistics are
not additive over per-rank FDs).
"""
from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg

__all__ = ["frechet_distance", "feature_statistics", "frechet_distance_from_stats", "fvd"]


def _as_2d_float64(feats) -> np.ndarray:
    if hasattr(feats, "detach"):  # torch tensor
        feats = feats.detach().to("cpu").double().numpy()
    a = np.asarray(feats, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {a.shape}")
    if a.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got {a.shape[0]}")
    if not np.isfinite(a).all():
        raise ValueError("features contain NaN or inf")
    return a


def feature_statistics(feats) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(D,)`` and unbiased covariance ``(D, D)`` of features ``(N, D)`` (float64)."""
    a = _as_2d_float64(feats)
    return a.mean(axis=0), np.atleast_2d(np.cov(a, rowvar=False))


def _sqrtm(m: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():  # singular products are expected (N < D); handled by the caller
        warnings.simplefilter("ignore")
        return scipy.linalg.sqrtm(m)


def frechet_distance_from_stats(mu_a, sigma_a, mu_b, sigma_b, eps: float = 1e-6) -> float:
    """Frechet distance between the Gaussians ``N(mu_a, sigma_a)`` and ``N(mu_b, sigma_b)``."""
    mu_a, mu_b = np.atleast_1d(np.asarray(mu_a, np.float64)), np.atleast_1d(np.asarray(mu_b, np.float64))
    sigma_a, sigma_b = np.atleast_2d(np.asarray(sigma_a, np.float64)), np.atleast_2d(np.asarray(sigma_b, np.float64))
    if mu_a.shape != mu_b.shape or sigma_a.shape != sigma_b.shape or sigma_a.shape != mu_a.shape * 2:
        raise ValueError(f"statistics shapes differ: mu {mu_a.shape} / {mu_b.shape}, "
                         f"sigma {sigma_a.shape} / {sigma_b.shape}")
    diff = mu_a - mu_b
    covmean = _sqrtm(sigma_a @ sigma_b)
    if not np.isfinite(covmean).all():
        # Regularise both covariances and use the regularised ones in the trace terms too, so that the
        # result stays the exact FD of the (slightly widened) Gaussians: zero covariances give exactly
        # |mu_a - mu_b|^2 (pytorch-fid keeps the raw traces, a bias of -2 * D * eps).
        offset = np.eye(sigma_a.shape[0]) * eps
        sigma_a, sigma_b = sigma_a + offset, sigma_b + offset
        covmean = _sqrtm(sigma_a @ sigma_b)
        if not np.isfinite(covmean).all():
            raise FloatingPointError("matrix square root of the covariance product is not finite, even with "
                                     f"eps={eps} added to the diagonals")
    if np.iscomplexobj(covmean):
        max_imag = float(np.max(np.abs(np.diagonal(covmean).imag)))
        if max_imag > 1e-3:
            raise ValueError(f"matrix square root has a large imaginary component ({max_imag:.3g})")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma_a) + np.trace(sigma_b) - 2.0 * np.trace(covmean))


def frechet_distance(feats_a, feats_b, eps: float = 1e-6) -> float:
    """Frechet distance between feature sets ``(N_a, D)`` and ``(N_b, D)`` (numpy arrays or tensors)."""
    mu_a, sigma_a = feature_statistics(feats_a)
    mu_b, sigma_b = feature_statistics(feats_b)
    return frechet_distance_from_stats(mu_a, sigma_a, mu_b, sigma_b, eps=eps)


def fvd(videos_a, videos_b, extractor=None) -> float:
    """FVD between two sets of videos ``(N, 3, T, H, W)`` in ``[-1, 1]`` (any size; resized to 224).

    ``extractor``: a callable mapping videos to ``(N, 400)`` features, by default
    ``train_vae.i3d.I3DFeatureExtractor()`` (built once per call: pass one to reuse it).
    """
    if extractor is None:
        from train_vae.i3d import I3DFeatureExtractor

        extractor = I3DFeatureExtractor()
    return frechet_distance(extractor(videos_a), extractor(videos_b))
