"""LogME against an independent implementation of the published algorithm, and its errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tlkit import logme


def reference_logme(f: np.ndarray, y: np.ndarray) -> float:
    """The published algorithm in D-space: eigendecomposition of F^T F, the posterior mean
    m = beta A^-1 F^T t with A = alpha I + beta F^T F, the fixed-point updates of alpha and
    beta to convergence, then the log evidence with log|A| from slogdet (m is the last
    iteration's, as in the published code)."""
    f = f.astype(np.float64)
    n, d = f.shape
    s, v = np.linalg.eigh(f.T @ f)
    s = np.clip(s, 0, None)
    scores = []
    for c in np.unique(y):
        t = (y == c).astype(np.float64)
        alpha, beta = 1.0, 1.0
        ft = f.T @ t
        for _ in range(1000):
            a_inv = v @ np.diag(1 / (alpha + beta * s)) @ v.T
            m = beta * a_inv @ ft
            gamma = float((beta * s / (alpha + beta * s)).sum())
            new_alpha = gamma / (m @ m + 1e-5)  # the published updates and their guards
            new_beta = (n - gamma) / (float(((t - f @ m) ** 2).sum()) + 1e-5)
            done = abs(new_alpha / new_beta - alpha / beta) <= 1e-9 * alpha / beta
            alpha, beta = new_alpha, new_beta
            if done:
                break
        a = alpha * np.eye(d) + beta * f.T @ f
        _, log_det = np.linalg.slogdet(a)
        evidence = (d / 2 * math.log(alpha) + n / 2 * math.log(beta) - log_det / 2
                    - beta / 2 * float(((t - f @ m) ** 2).sum()) - alpha / 2 * float(m @ m)
                    - n / 2 * math.log(2 * math.pi))  # fmt: skip
        scores.append(evidence / n)
    return float(np.mean(scores))


def data(n: int, d: int, classes: int = 3, rank: int | None = None, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    base = rng.normal(size=(n, rank or d))
    f = base if rank is None else base @ rng.normal(size=(rank, d))
    f = f + 1.5 * np.eye(classes)[y] @ rng.normal(size=(classes, d))  # class signal
    if rank is not None:  # project back onto a rank-dimensional subspace
        q, _ = np.linalg.qr(rng.normal(size=(d, rank)))
        f = f @ q @ q.T
    return f, y


@pytest.mark.parametrize(
    ("n", "d", "rank"),
    [(300, 20, None), (40, 120, None), (200, 30, 7)],
    ids=["N>D", "N<D", "rank-deficient"],
)
def test_logme_equals_the_reference_implementation(n: int, d: int, rank: int | None) -> None:
    f, y = data(n, d, rank=rank)
    if rank is not None:
        assert np.linalg.matrix_rank(f) == rank
    ours = logme(torch.from_numpy(f), torch.from_numpy(y))
    reference = reference_logme(f, y)
    assert ours == pytest.approx(reference, rel=1e-4)


def test_logme_ranks_informative_features_above_noise_and_accepts_arrays() -> None:
    f, y = data(300, 16)
    noise = np.random.default_rng(1).normal(size=f.shape)
    assert logme(f, y) > logme(noise, y)
    assert logme(f.astype(np.float32), y.tolist()) == pytest.approx(logme(f, y), rel=1e-5)


def test_logme_errors_name_the_problem() -> None:
    f, y = data(30, 5)
    with pytest.raises(ValueError, match="one per feature row: 30 rows"):
        logme(f, y[:-1])
    with pytest.raises(ValueError, match="at least two classes"):
        logme(f, np.zeros(30, dtype=np.int64))
    bad = f.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite values in 1 of 30 rows"):
        logme(bad, y)
    with pytest.raises(ValueError, match=r"features must be \(N, D\)"):
        logme(f[0], y[:1])
    with pytest.raises(ValueError, match="integer class indices"):
        logme(f, y.astype(np.float32))
    with pytest.raises(ValueError, match=r"features are all zero \(30 x 5\)"):
        logme(np.zeros_like(f), y)  # a dead layer: no evidence, no "math domain error"
    constant = logme(np.ones_like(f), y)  # constant features: a bias only, a finite score
    assert np.isfinite(constant) and constant < logme(f, y)


def test_rank_backbones_puts_imagenet_weights_above_random_ones_on_real_pictures(tmp_path) -> None:
    from tlkit import ImageDataset, rank_backbones

    from . import shapes

    data = ImageDataset.from_folder(shapes.write(tmp_path / "shapes", 16, seed=0))
    ranking = rank_backbones(
        [("timm/efficientnet_lite0", None), ("timm/efficientnet_lite0", "imagenet")],
        data, image_size=96, max_images=40, keep_features=True, verbose=False,
    )  # fmt: skip
    assert [r.weights for r in ranking] == ["imagenet", None]
    assert ranking[0].score > ranking[1].score
    assert ranking[0].images == 40  # a stratified sample: 10 of each of the 4 shapes
    features, labels = ranking[0].features.tensors
    assert features.shape == (40, 1280) and sorted(labels.bincount().tolist()) == [10] * 4


def test_channels_last_ranking_scores_the_same_features(tmp_path) -> None:
    from tlkit import ImageDataset, rank_backbones

    from . import shapes

    data = ImageDataset.from_folder(shapes.write(tmp_path / "shapes", 6, seed=1))
    runs = {}
    for channels_last in (True, False):
        (score,) = rank_backbones(["timm/efficientnet_lite0"], data, image_size=64,
                                  keep_features=True, channels_last=channels_last,
                                  verbose=False)  # fmt: skip
        runs[channels_last] = score
    fast, plain = runs[True].features.tensors[0], runs[False].features.tensors[0]
    assert fast.shape == plain.shape == (24, 1280) and fast.abs().sum() > 0
    torch.testing.assert_close(fast, plain, rtol=1e-3, atol=1e-4)
    assert runs[True].score == pytest.approx(runs[False].score, rel=1e-3)


def test_rank_backbones_checks_its_arguments_before_any_work() -> None:
    from torch.utils.data import TensorDataset

    from tlkit import rank_backbones

    data = TensorDataset(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.tensor([0, 1, 0, 1]))
    with pytest.raises(ValueError, match="at least one backbone"):
        rank_backbones([], data)
    with pytest.raises(ValueError, match="listed twice"):
        rank_backbones(["resnet18", "resnet18"], data)
    with pytest.raises(KeyError, match="unknown torchvision model 'resnet1'"):
        rank_backbones(["resnet18", "resnet1"], data)
    with pytest.raises(ValueError, match="max_images must be a positive integer"):
        rank_backbones(["resnet18"], data, max_images=0)
