"""Cached features: run a frozen body once, then train only the head on what it produced.

When only the classifier trains, every epoch recomputes the same body outputs. A linear probe is
much faster on features computed once: [tlkit.features.extract_features][] produces them,
[tlkit.features.FeatureBatches][] serves them as shuffled mini-batches, and
[tlkit.features.cache_head_inputs][] does both for a model whose head alone trains
([tlkit.Trainer.fit][] with ``cache_features=True`` uses it).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.data import Subset, TensorDataset

from .heads import headless

__all__ = ["FeatureBatches", "cache_head_inputs", "extract_features", "has_random_transform"]

_RANDOM_OPS = ("RandAugment", "TrivialAugmentWide", "AutoAugment", "AugMix", "ColorJitter")


class FeatureBatches:
    """Mini-batches over in-memory tensors (cached features): no workers, no collation.

    Args:
        dataset: A ``TensorDataset`` of ``(features, labels)``.
        batch_size: Rows per batch.
        shuffle: Draw a new order (from torch's global generator) on every pass.

    Examples:
        >>> data = TensorDataset(torch.arange(10.0)[:, None], torch.arange(10))
        >>> [len(y) for _, y in FeatureBatches(data, 4)]
        [4, 4, 2]
    """

    def __init__(self, dataset: TensorDataset, batch_size: int, *, shuffle: bool = False) -> None:
        self.x, self.y = dataset.tensors[0], dataset.tensors[1]
        self.batch_size, self.shuffle = batch_size, shuffle

    def __len__(self) -> int:
        return math.ceil(len(self.y) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, size = len(self.y), self.batch_size
        if not self.shuffle:
            for start in range(0, n, size):
                yield self.x[start : start + size], self.y[start : start + size]
            return
        order = torch.randperm(n).to(self.x.device)
        for start in range(0, n, size):
            idx = order[start : start + size]
            yield self.x[idx], self.y[idx]


@torch.no_grad()
def extract_features(
    model: nn.Module,
    loader: Iterable[Any],
    *,
    device: str | torch.device | None = None,
    batch_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
) -> TensorDataset:
    """Run ``model`` in eval mode over ``loader`` and keep its flattened outputs.

    Args:
        model: Usually a body without its head (see [tlkit.heads.headless][]).
        loader: Batches of ``(inputs, targets)``.
        device: Where to run and keep the features; default the model's device.
        batch_transform: Applied to each input batch on the device (e.g. normalisation), in
            whatever train/eval mode it is in.
        autocast: A context-manager factory for mixed precision; features are stored as float32.

    Returns:
        A ``TensorDataset`` of ``(features (N, D), targets (N,))`` on ``device``. The model's
        train/eval mode is restored afterwards.

    Raises:
        ValueError: If the loader yields no batch.

    Examples:
        >>> from torch.utils.data import DataLoader
        >>> data = TensorDataset(torch.randn(6, 3), torch.tensor([0, 1, 0, 1, 0, 1]))
        >>> feats = extract_features(nn.Linear(3, 5), DataLoader(data, batch_size=4))
        >>> feats.tensors[0].shape, feats.tensors[1].tolist()
        (torch.Size([6, 5]), [0, 1, 0, 1, 0, 1])
    """
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    device = torch.device(device)
    was_training = model.training
    model.eval()
    xs, ys = [], []
    try:
        for batch in loader:
            x = batch[0].to(device)
            if batch_transform is not None:
                x = batch_transform(x)
            with autocast() if autocast is not None else contextlib.nullcontext():
                xs.append(model(x).float().flatten(1))
            ys.append(torch.as_tensor(batch[1]).to(device))
    finally:
        model.train(was_training)
    if not xs:
        raise ValueError("the loader is empty: it yields no batch")
    return TensorDataset(torch.cat(xs), torch.cat(ys))


def _transform_ops(transform: Any) -> Iterator[Any]:
    yield transform
    for child in getattr(transform, "transforms", None) or ():
        yield from _transform_ops(child)


def has_random_transform(dataset: Any) -> bool:
    """Whether items of ``dataset`` come out differently on each read (a random augmentation).

    Looks for torchvision ``Random*`` transforms and auto-augment policies in the dataset's
    ``transform``, then reads the first items twice.

    Examples:
        >>> import torchvision.transforms.v2 as T
        >>> from tlkit import WithTransform
        >>> data = TensorDataset(torch.rand(4, 3, 8, 8), torch.zeros(4))
        >>> has_random_transform(data), has_random_transform(WithTransform(data, T.RandomCrop(4)))
        (False, True)
    """
    base = dataset
    while isinstance(base, Subset):
        base = base.dataset
    for attr in ("transform", "transforms"):
        for op in _transform_ops(getattr(base, attr, None)):
            name = type(op).__name__
            if name.startswith("Random") or name in _RANDOM_OPS:
                return True
    with contextlib.suppress(Exception):
        for index in range(min(3, len(dataset))):
            a, b = dataset[index][0], dataset[index][0]
            if isinstance(a, torch.Tensor) and not torch.equal(a, b):
                return True
    return False


def cache_head_inputs(
    model: nn.Module,
    train_loader: Iterable[Any],
    val_loader: Iterable[Any] | None = None,
    *,
    one_view: bool = False,
    batch_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    device: str | torch.device | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
    distributed: bool = False,
    log: Callable[[str], None] | None = None,
) -> tuple[nn.Module, FeatureBatches, FeatureBatches | None]:
    """Features of the frozen body for training the head alone: a linear probe's inputs.

    Args:
        model: A model whose classifier (found as [tlkit.replace_head][] finds it) is the only
            trainable part.
        train_loader: Training batches; the features are shuffled each epoch with its batch size.
        val_loader: Optional validation batches.
        one_view: Accept random augmentation (each image is then seen through one fixed view).
        batch_transform: Applied to the inputs on the device; an ``nn.Module`` runs in train
            mode for the training features and in eval mode for the validation ones. Counts as
            random augmentation.
        device: Where features live; default the model's device.
        autocast: Mixed-precision context factory for the body.
        distributed: Whether this runs under torchrun (not supported: an error).
        log: Called with a one-line summary of what was cached.

    Returns:
        ``(head, train_batches, val_batches)``: the classifier module itself (train it on the
        batches; the model shares it) and the cached batches.

    Raises:
        ValueError: If parameters outside the head are trainable, or the training data is
            randomly augmented and ``one_view`` is false.

    Examples:
        >>> from torch.utils.data import DataLoader
        >>> model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> _ = model[0].requires_grad_(False)
        >>> data = TensorDataset(torch.randn(10, 3), torch.randint(0, 2, (10,)))
        >>> head, train, _ = cache_head_inputs(model, DataLoader(data, batch_size=4))
        >>> head is model[2], train.x.shape
        (True, torch.Size([10, 8]))
    """
    with headless(model) as (path, head):
        outside = [n for n, p in model.named_parameters() if p.requires_grad]
        if outside:
            raise ValueError(
                f"cache_features needs only the head {path!r} trainable, but {len(outside)} "
                f"other tensors train (first: {', '.join(outside[:3])}); freeze them with "
                f"tlkit.FreezePolicy(train_only=[{path!r}])"
            )
        dataset = getattr(train_loader, "dataset", None)
        random_batches = batch_transform is not None
        if not one_view and (
            random_batches or (dataset is not None and has_random_transform(dataset))
        ):
            where = "batch_transform" if random_batches else "training transform"
            raise ValueError(
                f"cache_features with a random {where} would train on one random view "
                "of each image forever; use a deterministic transform for the cached run, or "
                "pass cache_one_view=True to accept caching one view"
            )
        _set_mode(batch_transform, train=True)
        train = extract_features(
            model, train_loader, device=device, batch_transform=batch_transform, autocast=autocast
        )
        val = None
        if val_loader is not None:
            _set_mode(batch_transform, train=False)
            val = extract_features(
                model, val_loader, device=device, batch_transform=batch_transform, autocast=autocast
            )
    return (
        head,
        FeatureBatches(train, getattr(train_loader, "batch_size", None) or 64, shuffle=True),
        FeatureBatches(val, getattr(val_loader, "batch_size", None) or 256)
        if val is not None
        else None,
    )


def _set_mode(transform: Any, *, train: bool) -> None:
    if isinstance(transform, nn.Module):
        transform.train(train)
