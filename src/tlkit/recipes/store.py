"""Images decoded once, kept where the folder's size allows: in memory when small, else in a
temporary file on disk read back batch by batch, so that memory does not grow with the folder.

Decoding (large PNGs, 12 MP JPEGs) costs more than the model on a CPU; every stage (the
features of each backbone, the fine-tuning epochs, the judging passes) then reads the decoded
squares instead of decoding again.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import (
    BatchSampler,
    ConcatDataset,
    DataLoader,
    Dataset,
    RandomSampler,
    SequentialSampler,
    Subset,
    WeightedRandomSampler,
)
from torchvision.transforms import v2

from .. import distributed
from ..data import ImageDataset
from ..devices import loader_workers
from ..model.images import DecodedImages, Geometry, normalise, resize_square
from .settings import AUTO

__all__ = ["Decoded", "ImageStore", "check_disk", "store_loader", "to_model_input"]


class _File:
    """An open, already unlinked file (its space is freed when the last reader closes it,
    even if the process is killed); where the system cannot unlink an open file, it is
    deleted on close."""

    def __init__(self, directory: Path) -> None:
        handle, name = tempfile.mkstemp(prefix="tlkit-decoded-", suffix=".u8", dir=directory)
        self.file = os.fdopen(handle, "r+b", buffering=0)
        self.path: Path | None = Path(name)
        try:
            self.path.unlink()
            self.path = None
        except OSError:  # pragma: no cover - Windows keeps open files
            pass
        self._finalizer = weakref.finalize(self, _close, self.file, self.path)

    def close(self) -> None:
        self._finalizer()


def _close(file: Any, path: Path | None) -> None:
    file.close()
    if path is not None:  # pragma: no cover - Windows
        path.unlink(missing_ok=True)


class ImageStore:
    """``N`` decoded images, uint8 ``(3, S, S)`` each, in memory or in a file on disk.

    ``read(indices)`` returns a uint8 ``(n, 3, S, S)`` batch; ``subset(indices)`` a view on
    some of the images (no copy); ``batches(n)`` reads them in order, ``n`` at a time.
    A file-backed store reads with plain reads, not a memory map, so the pages it reads count
    to the operating system's cache and not to the process's memory.

    Examples:
        >>> store = ImageStore.empty(3, 4)
        >>> store.write(0, torch.full((3, 3, 4, 4), 7, dtype=torch.uint8))
        >>> view = store.subset(torch.tensor([2, 0]))
        >>> len(view), view.read(torch.tensor([1])).shape, view.on_disk
        (2, torch.Size([1, 3, 4, 4]), False)
    """

    def __init__(
        self,
        size: int,
        count: int,
        memory: torch.Tensor | None,
        file: _File | None,
        index: torch.Tensor | None = None,
    ) -> None:
        self.size, self._count, self._memory, self._file = size, count, memory, file
        self._index = index

    @classmethod
    def empty(cls, count: int, size: int, directory: str | Path | None = None) -> ImageStore:
        """A store for ``count`` images of ``size`` px: in memory without ``directory``, else
        in a new temporary file there (its free space checked first by ``check_disk``)."""
        if directory is None:
            return cls(size, count, torch.empty((count, 3, size, size), dtype=torch.uint8), None)
        check_disk(Path(directory), count * 3 * size * size, count, size)
        store = cls(size, count, None, _File(Path(directory)))
        assert store._file is not None
        store._file.file.truncate(count * store.item_bytes)
        return store

    @property
    def item_bytes(self) -> int:
        return 3 * self.size * self.size

    @property
    def on_disk(self) -> bool:
        return self._file is not None

    def __len__(self) -> int:
        return self._count if self._index is None else len(self._index)

    def write(self, start: int, images: torch.Tensor) -> None:
        """Store uint8 ``images`` as images ``start``, ``start + 1``, ... (of the whole store)."""
        images = images.contiguous()
        if self._memory is not None:
            self._memory[start : start + len(images)] = images
        else:
            assert self._file is not None
            self._file.file.seek(start * self.item_bytes)
            self._file.file.write(images.numpy().data.cast("B"))

    def subset(self, indices: torch.Tensor | Sequence[int]) -> ImageStore:
        """The images at ``indices`` of this store, as a store (sharing the data)."""
        local = torch.as_tensor(indices, dtype=torch.long)
        index = local if self._index is None else self._index[local]
        return ImageStore(self.size, self._count, self._memory, self._file, index)

    def read(self, indices: torch.Tensor | Sequence[int] | None = None) -> torch.Tensor:
        """uint8 ``(n, 3, S, S)``: the images at ``indices`` (default all, in order)."""
        local = torch.arange(len(self)) if indices is None else torch.as_tensor(indices)
        where = local if self._index is None else self._index[local]
        if self._memory is not None:
            return self._memory[where]
        return self._read_file(where.tolist())

    def __getitem__(self, index: int) -> torch.Tensor:
        """One image, uint8 ``(3, S, S)``."""
        return self.read([index])[0]

    def _read_file(self, where: list[int]) -> torch.Tensor:
        assert self._file is not None
        out = np.empty((len(where), 3, self.size, self.size), dtype=np.uint8)
        flat = out.reshape(len(where), -1).data
        start = 0
        while start < len(where):  # runs of consecutive images are read in one call
            end = start + 1
            while end < len(where) and where[end] == where[end - 1] + 1:
                end += 1
            self._file.file.seek(where[start] * self.item_bytes)
            target = flat[start:end].cast("B")
            if self._file.file.readinto(target) != len(target):
                raise OSError(f"the decoded-image file ended early at image {where[start]}")
            start = end
        return torch.from_numpy(out)

    def batches(self, batch: int = 64) -> Iterator[torch.Tensor]:
        """The images in order, ``batch`` at a time; an empty store gives one empty batch (a
        pass over it still has its output's shape: a process's part may be empty)."""
        if not len(self):
            yield torch.empty((0, 3, self.size, self.size), dtype=torch.uint8)
        for start in range(0, len(self), batch):
            yield self.read(torch.arange(start, min(start + batch, len(self))))

    def close(self) -> None:
        """Free the file's disk space now (else when no view of it is left)."""
        if self._file is not None:
            self._file.close()


def check_disk(directory: Path, needed: int, count: int, size: int) -> None:
    """Refuse, before decoding, a cache that would not fit the free space of ``directory``
    (with 5% and 100 MB to spare)."""
    if not directory.is_dir():
        raise NotADirectoryError(f"cache_dir {str(directory)!r} is not a folder")
    free = shutil.disk_usage(directory).free
    if needed * 1.05 + 100e6 > free:
        raise ValueError(
            f"{count} images decoded at {size} px need {needed / 1e9:.1f} GB on disk; "
            f"{str(directory)!r} has {free / 1e9:.1f} GB free: pass cache_dir (--cache-dir) on "
            "a larger disk, or a smaller image_size"
        )


def decode_into(store: ImageStore, data: Dataset, workers: int) -> None:
    """Decode ``data`` (uint8 squares) into ``store`` in order, with ``workers`` processes;
    only a few batches are in memory at a time."""
    loader = DataLoader(
        data, batch_size=32, num_workers=workers, prefetch_factor=2 if workers else None
    )
    start = 0
    for batch in loader:
        store.write(start, batch)
        start += len(batch)


@dataclass
class Decoded:
    """The training images (and the given validation images) decoded once, with their labels:
    ``images`` and ``val_images`` are views of one store.

    Under ``torchrun`` each process decodes its own rows (``rows``: rank, rank + world size,
    ... of the training images followed by the validation images); ``images``, ``labels``,
    ``val_images`` and ``val_labels`` are then this process's part, and ``gather`` puts the
    processes' results together."""

    images: ImageStore
    labels: torch.Tensor
    val_images: ImageStore | None = None
    val_labels: torch.Tensor | None = None
    files: list[str] | None = None  # every training image's path (their names group them)
    store: ImageStore | None = None  # both, training images first
    rows: torch.Tensor | None = None  # this process's rows of both (``None``: all of them)
    counts: tuple[int, int] = (0, 0)  # training and validation images, in every process
    every: torch.Tensor | None = None  # the labels of every image of both, in every process

    @classmethod
    def read(
        cls,
        data: ImageDataset,
        val: ImageDataset | None,
        size: int,
        geometry: Geometry,
        cache_dir: str | Path | None = None,
    ) -> Decoded:
        """Decode ``data`` and ``val`` (this process's rows of them under ``torchrun``) at
        ``size``: in memory up to ``AUTO.memory_cache_bytes``, else into a temporary file in
        ``cache_dir`` (default the system's temporary folder)."""
        parts = [DecodedImages(d, size, geometry) for d in (data, val) if d is not None]
        both: Dataset = ConcatDataset(parts)
        n, count = len(data), sum(len(p) for p in parts)
        rows = distributed.shard(count)
        if not len(rows):
            raise ValueError(
                f"{count} images for {distributed.world()[2]} processes under torchrun: each "
                "needs at least one; launch fewer (--nproc-per-node)"
            )
        if len(rows) < count:
            both = Subset(both, rows.tolist())
        on_disk = len(rows) * 3 * size * size > AUTO.memory_cache_bytes
        directory = (cache_dir or tempfile.gettempdir()) if on_disk else None
        store = ImageStore.empty(len(rows), size, directory)
        decode_into(store, both, loader_workers(AUTO.decode_workers))
        mine = int((rows < n).sum())
        every = torch.as_tensor(data.targets)
        if val is not None:
            every = torch.cat([every, torch.as_tensor(val.targets).to(every.dtype)])
        return cls(
            store.subset(torch.arange(mine)),
            every[rows[:mine]],
            store.subset(torch.arange(mine, len(rows))) if val is not None else None,
            every[rows[mine:]] if val is not None else None,
            [str(f) for f in data.files],
            store,
            rows if len(rows) < count else None,
            (n, count - n),
            every,
        )

    def everything(self) -> ImageStore:
        """The training images, then the validation images (this process's)."""
        return self.store if self.store is not None else self.images

    def gather(self, values: torch.Tensor) -> torch.Tensor:
        """Values of this process's rows of both (along the first dimension), put together
        with the other processes' into values of every training then validation image."""
        if self.rows is None:
            return values
        return distributed.gather_rows(values, self.rows, sum(self.counts))

    def every_label(self) -> torch.Tensor:
        """The labels of every training image, then of every validation image (of all
        processes)."""
        assert self.every is not None
        return self.every

    def train_labels(self) -> torch.Tensor:
        """The labels of every training image (of all processes)."""
        return self.every_label()[: self.counts[0]]

    def part(self, indices: torch.Tensor) -> tuple[ImageStore, torch.Tensor, torch.Tensor]:
        """Of the training images at ``indices`` (of all of them), the ones this process holds:
        ``(images, labels, their positions in indices)``."""
        if self.rows is None:
            return self.images.subset(indices), self.labels[indices], torch.arange(len(indices))
        rank, _, world_size = distributed.world()
        where = ((indices % world_size) == rank).nonzero().flatten()
        local = indices[where] // world_size  # training rows come first in every process
        return self.images.subset(local), self.labels[local], where

    def judging(self, held: torch.Tensor) -> tuple[ImageStore, torch.Tensor, torch.Tensor, int]:
        """The images that judge fine-tuning: the validation images, else the training images
        at ``held``; this process's part of them: ``(images, labels, their positions among all
        of them, how many in all)``."""
        if self.val_images is None or self.val_labels is None:
            return (*self.part(held), len(held))
        if self.rows is None:
            where = torch.arange(len(self.val_labels))
        else:
            where = self.rows[len(self.labels) :] - self.counts[0]
        return self.val_images, self.val_labels, where, self.counts[1]


class _Batches(Dataset):
    """Batches of a store with their labels: indexed by a list of positions."""

    def __init__(self, images: ImageStore, labels: torch.Tensor, size: int) -> None:
        self.images, self.labels, self.size = images, labels, size

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        order = torch.as_tensor(indices)
        return resize_square(self.images.read(order), self.size), self.labels[order]


def store_loader(
    images: ImageStore,
    labels: torch.Tensor,
    batch: int,
    shuffle: bool,
    *,
    size: int | None = None,
    pin: bool = False,
    samples: int | None = None,
    weights: torch.Tensor | None = None,
) -> DataLoader:
    """Batches of uint8 ``(images, labels)`` read from ``images`` and resized to ``size``
    (antialiased, default as stored), shuffled from a seed drawn from torch's global generator
    (so the seed of [tlkit.finetune][] fixes the order); ``samples`` images per epoch when
    shuffled (default all; more draws some twice). With ``weights`` (one per image), each
    shuffled draw picks an image with a chance in proportion to its weight, with replacement
    (``torch.utils.data.WeightedRandomSampler``)."""
    batch_data = _Batches(images, labels, size or images.size)
    if shuffle:
        generator = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ()).item()))
        sampler: Any = (
            RandomSampler(batch_data, num_samples=samples, generator=generator)
            if weights is None
            else WeightedRandomSampler(
                weights.tolist(), samples or len(batch_data), generator=generator
            )
        )
    else:
        sampler = SequentialSampler(batch_data)
    return DataLoader(
        batch_data, batch_size=None, sampler=BatchSampler(sampler, batch, False), pin_memory=pin
    )


def to_model_input(
    batch: torch.Tensor,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device,
    layout: torch.memory_format = torch.contiguous_format,
) -> torch.Tensor:
    """A uint8 ``(N, 3, S, S)`` batch as the model takes it on ``device``: resized to ``size``
    (antialiased; on a CPU from uint8 as the exported models do it, on a GPU in float there),
    scaled and normalised."""
    if batch.shape[-1] != size:
        if device.type == "cpu":
            batch = resize_square(batch, size)
        else:
            batch = v2.functional.resize(batch.to(device).float(), [size, size], antialias=True)
    return normalise(batch.to(device, non_blocking=True), mean, std).contiguous(
        memory_format=layout
    )
