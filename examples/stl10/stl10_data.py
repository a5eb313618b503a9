"""STL10 loading for the example: torchvision's reader, plus a generator of files in its layout.

``torchvision.datasets.STL10`` checks the MD5 of ``stl10_binary/*.bin``. Generated files (the
``--smoke`` run and the tests) cannot match it, so :class:`STL10Unverified` skips only that
check and keeps torchvision's own parsing of the binary files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torchvision.datasets import STL10

CLASSES = ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")
FILES = ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin")


class STL10Unverified(STL10):
    """torchvision's STL10 without the archive checksum: the files only need to exist."""

    def _check_integrity(self) -> bool:
        folder = Path(self.root) / self.base_folder
        return all((folder / name).is_file() for name in FILES)


def write_stl10_binary(root: str | Path, *, n_train: int, n_test: int, seed: int = 0) -> Path:
    """Write a generated dataset in STL10's binary layout under ``root/stl10_binary``.

    Images are uint8 ``(N, 3, 96, 96)`` stored column-major per image (STL10 is written from
    MATLAB), labels uint8 in 1..10. Each class gets its own colour cast plus noise, so a model
    can learn something from them.

    Returns:
        The ``stl10_binary`` folder.
    """
    folder = Path(root) / "stl10_binary"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    palette = rng.integers(40, 216, size=(10, 3))
    for split, n in (("train", n_train), ("test", n_test)):
        labels = np.arange(n) % 10
        rng.shuffle(labels)
        images = rng.integers(0, 80, size=(n, 3, 96, 96), dtype=np.int16)
        images += palette[labels][:, :, None, None].astype(np.int16)
        images = np.clip(images, 0, 255).astype(np.uint8)
        # torchvision reads (N, 3, 96, 96) and transposes the last two axes: store transposed
        images.transpose(0, 1, 3, 2).tofile(folder / f"{split}_X.bin")
        (labels + 1).astype(np.uint8).tofile(folder / f"{split}_y.bin")
    (folder / "class_names.txt").write_text("\n".join(CLASSES) + "\n")
    return folder
