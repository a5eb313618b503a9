"""Choosing a backbone before training any: LogME scores pretrained features in seconds.

[tlkit.logme][] is the LogME transferability score of You, Liu, Wang and Long, "LogME:
Practical Assessment of Pre-trained Models for Transfer Learning" (ICML 2021), computed with
the fixed-point iteration of "Ranking and Tuning Pre-trained Models: A New Paradigm for
Exploiting Model Hubs" (JMLR 2022, arXiv:2110.10545). For each class it fits a Bayesian linear
regression from the features to the class's one-vs-rest indicator, with the prior precision
``alpha`` and the noise precision ``beta`` chosen to maximise the evidence (the marginal
likelihood of the labels), and reports the mean over classes of the maximised log evidence per
sample. No training, one pass of features: a higher score predicts better transfer.
"""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = ["logme"]

_MAX_ITERATIONS = 100
_TOLERANCE = 1e-7
_EPS = 1e-5  # added to |m|^2 and |t - f m|^2 in the updates, as the published code does


def _as_float64(features: Any) -> torch.Tensor:
    f = torch.as_tensor(features)
    if f.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {tuple(f.shape)}")
    f = f.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(f).all()):
        bad = int((~torch.isfinite(f)).any(1).sum())
        raise ValueError(f"features hold NaN or infinite values in {bad} of {len(f)} rows")
    return f


def logme(features: Any, labels: Any) -> float:
    """The LogME score of ``features`` for classifying ``labels`` (higher transfers better).

    The mean over classes of the maximised log evidence per sample of a Bayesian linear model
    predicting the class's one-vs-rest indicator from the features. Computed in float64 from
    one SVD of the features, so ``N > D``, ``N < D`` and rank-deficient features are all
    exact: the evidence counts the model's full ``D``-dimensional prior, whose directions
    outside the features' span contribute ``log(alpha)`` terms (as the ICML 2021 reference
    implementation's eigendecomposition of ``F^T F`` does). Each class's ``alpha`` and
    ``beta`` follow the published fixed-point updates (with their ``1e-5`` guards, which keep
    a perfect fit, possible when ``N <= D``, finite) until ``alpha / beta`` changes by less
    than 1e-7 relative.

    Args:
        features: ``(N, D)`` features, a tensor or array (any float dtype, any device).
        labels: ``N`` integer class labels.

    Returns:
        The score, a float (typically between about -2 and 2 for normalised features).

    Raises:
        ValueError: For mismatched lengths, fewer than two classes or two samples, labels that
            are not integers, or non-finite features.

    Examples:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> labels = torch.arange(200) % 2
        >>> useful = torch.randn(200, 8, generator=g) + 3 * labels[:, None]
        >>> noise = torch.randn(200, 8, generator=g)
        >>> logme(useful, labels) > logme(noise, labels)
        True
    """
    f = _as_float64(features)
    y = torch.as_tensor(labels).detach().cpu()
    if y.ndim != 1 or len(y) != len(f):
        raise ValueError(
            f"labels must be one per feature row: {len(f)} rows but labels of shape "
            f"{tuple(y.shape)}"
        )
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"labels must be integer class indices, got dtype {y.dtype}")
    classes = torch.unique(y)
    if len(classes) < 2:
        raise ValueError(f"LogME needs at least two classes, got only {classes.tolist()}")
    n, d = f.shape
    u, s, _ = torch.linalg.svd(f, full_matrices=False)
    tol = s.max() * max(n, d) * torch.finfo(torch.float64).eps
    rank = int((s > tol).sum())
    u, sigma = u[:, :rank], s[:rank] ** 2
    scores = [_evidence(u, sigma, (y == c).double(), n, d) for c in classes]
    return float(sum(scores) / len(scores))


def _evidence(u: torch.Tensor, sigma: torch.Tensor, t: torch.Tensor, n: int, d: int) -> float:
    """Maximised log evidence per sample for one indicator ``t`` (see [tlkit.logme][])."""
    x2 = (u.T @ t) ** 2  # the target's squared coordinates in the features' left singular basis
    outside = float((t @ t) - x2.sum())  # the part of t no linear model of f can fit
    alpha, beta = 1.0, 1.0
    m2 = res2 = 0.0
    for _ in range(_MAX_ITERATIONS):
        lam = alpha / beta
        shrink = lam / (sigma + lam)
        gamma = float((1 - shrink).sum())  # effective number of parameters
        rest = float(shrink.sum()) + (n - len(sigma))  # n - gamma, without cancellation
        m2 = float((sigma * x2 / (sigma + lam) ** 2).sum())  # |m|^2, m the posterior mean
        res2 = float((x2 * shrink**2).sum()) + outside  # |t - f m|^2
        # the published updates, with their 1e-5 guarding against a perfect fit
        alpha = gamma / (m2 + _EPS)
        beta = rest / (res2 + _EPS)
        if abs(alpha / beta - lam) <= _TOLERANCE * lam:
            break
    # log|alpha I_D + beta f^T f|: the D - rank directions outside the features' span add
    # log(alpha) each
    log_det = float(torch.log(alpha + beta * sigma).sum()) + (d - len(sigma)) * math.log(alpha)
    evidence = (
        d / 2 * math.log(alpha)
        + n / 2 * math.log(beta)
        - log_det / 2
        - beta / 2 * res2
        - alpha / 2 * m2
        - n / 2 * math.log(2 * math.pi)
    )
    return evidence / n
