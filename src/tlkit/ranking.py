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
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset
from torchvision.transforms import v2

from ._utils import check_positive_int
from .augment import get
from .backbones import backbone, check_name
from .data import ImageDataset, WithTransform
from .devices import loader_workers, resolve_device
from .features import extract_features
from .heads import headless
from .splits import split

__all__ = ["BackboneScore", "logme", "rank_backbones"]

_MAX_ITERATIONS = 100
_TOLERANCE = 1e-7
_EPS = 1e-5  # added to |m|^2 and |t - f m|^2 in the updates, as the published code does


def _as_float64(features: Any) -> torch.Tensor:
    f = torch.as_tensor(features)
    if f.ndim != 2 or 0 in f.shape:
        raise ValueError(f"features must be (N, D) with N, D >= 1, got shape {tuple(f.shape)}")
    if f.is_complex():
        raise ValueError(f"features must be real numbers, got dtype {f.dtype}")
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
            are not integers, empty, complex, non-finite or all-zero features.

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
    try:
        y = torch.as_tensor(labels).detach().cpu()
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(
            f"labels must be integer class indices (map class names to 0..K-1 first), got "
            f"{list(labels)[:3]!r}..."
        ) from exc
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
    if not f.any():
        raise ValueError(
            f"features are all zero ({n} x {d}): they tell no class apart and LogME's evidence "
            "is undefined; check the layer they were read from"
        )
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


@dataclass(frozen=True)
class BackboneScore:
    """One candidate's result in [tlkit.rank_backbones][].

    Attributes:
        name: The backbone name.
        weights: The weights asked for.
        score: Its LogME score (higher is better).
        images: Images the score was computed on.
        seconds: Time to load the backbone, extract the features and score them.
        features: The features and labels (``keep_features=True``), for a linear probe.

    Examples:
        >>> BackboneScore("resnet18", "imagenet", 0.5, 100, 2.0).score
        0.5
    """

    name: str
    weights: str | None
    score: float
    images: int
    seconds: float
    features: TensorDataset | None = field(default=None, repr=False, compare=False)


def rank_backbones(
    candidates: Sequence[str | tuple[str, str | None]],
    dataset: Dataset[Any],
    *,
    image_size: int | None = None,
    max_images: int | None = None,
    batch_size: int = 64,
    device: str | torch.device = "auto",
    keep_features: bool = False,
    channels_last: bool = True,
    seed: int = 0,
    verbose: bool = True,
) -> list[BackboneScore]:
    """Rank pretrained backbones for ``dataset`` by LogME, best first, without training any.

    Each candidate's frozen body (its classifier removed) runs once over the images through the
    candidate's own evaluation preprocessing (its mean, std, interpolation and input size, or
    ``image_size``); [tlkit.logme][] scores the features (You et al., "LogME: Practical
    Assessment of Pre-trained Models for Transfer Learning", ICML 2021).

    Args:
        candidates: Backbone names (ImageNet weights), or ``(name, weights)`` pairs.
        dataset: Items ``(image, label)``: PIL images (an [tlkit.ImageDataset][]), arrays or
            uint8 tensors. Its ``targets``, when it has them, allow a stratified sample.
        image_size: Score every candidate at this size instead of its pretraining size.
        max_images: Score on a seeded, stratified sample of at most this many images.
        batch_size: Images per forward pass.
        device: ``"auto"`` (CUDA, else MPS, else CPU) or a device.
        keep_features: Keep each candidate's features in the result (for a linear probe).
        channels_last: Run the bodies in the channels-last memory format (1.4x the inference
            speed of channels-first for EfficientNet-Lite2 and ResNet-18 at 72 px on a 2-core
            x86 CPU; the features are the same up to float rounding).
        seed: Seed of the sample.
        verbose: Show a progress bar (on a terminal) and print the ranking.

    Returns:
        [tlkit.ranking.BackboneScore][]s, highest score first.

    Raises:
        ValueError: For no candidates, a duplicate, a bad ``max_images`` or ``batch_size``, or
            a dataset with fewer than two classes.
        KeyError: For an unknown backbone name (before any work).

    Examples:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> g = torch.Generator().manual_seed(0)
        >>> labels = torch.arange(40) % 2
        >>> noise = torch.rand(40, 3, 32, 32, generator=g) * 100
        >>> images = (noise + 150 * labels.view(-1, 1, 1, 1)).byte()  # brightness = class
        >>> ranking = rank_backbones([("resnet18", None), ("mobilenet_v3_small", None)],
        ...                          TensorDataset(images, labels), image_size=32, verbose=False)
        >>> scores = [r.score for r in ranking]
        >>> scores == sorted(scores, reverse=True), ranking[0].images
        (True, 40)
    """
    pairs = [(c, "imagenet") if isinstance(c, str) else (c[0], c[1]) for c in candidates]
    if not pairs:
        raise ValueError("give at least one backbone to rank")
    duplicate = next((p for p in pairs if pairs.count(p) > 1), None)
    if duplicate is not None:
        raise ValueError(f"backbone {duplicate[0]!r} with weights {duplicate[1]!r} is listed twice")
    for name, _ in pairs:
        check_name(name)
    check_positive_int("batch_size", batch_size)
    if max_images is not None:
        check_positive_int("max_images", max_images)
    indices = _sample(dataset, max_images, seed)
    run_device = resolve_device(device, 0)
    results = []
    bar = _bar(len(pairs), verbose)
    for name, weights in pairs:
        start = time.perf_counter()
        model, info = backbone(name, weights)
        _, evaluation = get("none", info=info, image_size=image_size)
        source = dataset
        if isinstance(dataset, ImageDataset):  # JPEGs decoded no larger than the eval resize needs
            source = dataset.with_min_side(_resize_side(evaluation))
        part = Subset(source, indices) if indices is not None else source
        loader = DataLoader(
            WithTransform(part, evaluation), batch_size=batch_size, num_workers=loader_workers(4)
        )
        layout = torch.channels_last if channels_last else torch.contiguous_format
        with headless(model.to(run_device).to(memory_format=layout)):
            features = extract_features(
                model, loader, device=run_device, batch_transform=_layout(layout)
            )
        score = logme(features.tensors[0], features.tensors[1])
        results.append(
            BackboneScore(
                name,
                weights,
                score,
                len(features),
                time.perf_counter() - start,
                TensorDataset(*(t.cpu() for t in features.tensors)) if keep_features else None,
            )
        )
        if bar is not None:
            bar.update(1)
            bar.set_postfix(last=f"{name} {score:.3f}")
    if bar is not None:
        bar.close()
    ranking = sorted(results, key=lambda r: -r.score)
    if verbose:
        print("LogME ranking (higher transfers better):")
        for r in ranking:
            print(f"  {r.score:8.4f}  {r.name}  ({r.images} images, {r.seconds:.1f} s)")
    return ranking


def _resize_side(evaluation: Any) -> int:
    """The short side the evaluation transform resizes every image to."""
    (resize,) = [op for op in evaluation.transforms if isinstance(op, v2.Resize)]
    return int(resize.size[0])


def _layout(layout: torch.memory_format) -> Any:
    def convert(x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=layout) if x.ndim == 4 else x

    return convert


def _sample(dataset: Any, max_images: int | None, seed: int) -> list[int] | None:
    total = len(dataset)
    if max_images is None or max_images >= total:
        return None
    targets = getattr(dataset, "targets", None)
    fraction = max_images / total
    stratify = (
        list(targets) if targets is not None and len(set(targets)) * 2 <= max_images else None
    )
    chosen, _ = split(total, (fraction, 1 - fraction), seed=seed, stratify=stratify)
    return chosen.tolist()


def _bar(total: int, verbose: bool) -> Any:
    if not (verbose and sys.stderr.isatty()):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="ranking backbones", unit="backbone")
