"""Datasets of labelled images: folders and CSVs checked up front, per-part transforms."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image
from torch.utils.data import Dataset

from ._csv import read_table
from ._utils import check_positive_int
from .decoding import check_background, read_image, to_rgb
from .stratify import is_multi_hot

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageDataset",
    "WithTransform",
    "image_files",
    "read_image",
    "to_rgb",
]


class WithTransform(Dataset[tuple[Any, Any]]):
    """Apply ``transform`` to the input of every ``(input, target)`` item of ``dataset``.

    A split shares one underlying dataset between its parts, but the training part wants random
    augmentation and the validation and test parts a fixed evaluation view. Load the dataset
    without a transform, split it, and wrap each part.

    Args:
        dataset: A map-style dataset of ``(input, target, ...)`` items (e.g. a ``Subset``).
        transform: Applied to the input.
        target_transform: Applied to the target.

    Examples:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> import tlkit
        >>> data = TensorDataset(torch.arange(10.0), torch.arange(10))
        >>> train, val = tlkit.split(data, (0.8, 0.2), seed=0)
        >>> doubled = WithTransform(train, lambda x: x * 2)
        >>> len(doubled), doubled[0][0] == 2 * train[0][0]
        (8, tensor(True))
    """

    def __init__(
        self,
        dataset: Dataset[Any],
        transform: Callable[[Any], Any] | None = None,
        target_transform: Callable[[Any], Any] | None = None,
    ) -> None:
        self.dataset = dataset
        self.transform = transform
        self.target_transform = target_transform

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        item = self.dataset[index]
        x, y = item[0], item[1]
        if self.transform is not None:
            x = self.transform(x)
        if self.target_transform is not None:
            y = self.target_transform(y)
        return x, y

    def __repr__(self) -> str:
        return f"WithTransform({self.dataset!r}, transform={self.transform!r})"


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def image_files(
    folder: str | os.PathLike[str], extensions: Sequence[str] = IMAGE_EXTENSIONS
) -> list[Path]:
    """The image files under ``folder`` (searched recursively), sorted: hidden files and
    folders (``.DS_Store``, ``._x.png``, ``.thumbs/``) left out, symbolic links to folders not
    followed (a link loop cannot hang the scan).

    Examples:
        >>> import tempfile
        >>> from PIL import Image
        >>> root = Path(tempfile.mkdtemp())
        >>> (root / "a").mkdir()
        >>> Image.new("RGB", (4, 4)).save(root / "a" / "x.png")
        >>> _ = (root / ".DS_Store").write_bytes(b"")
        >>> [p.relative_to(root).as_posix() for p in image_files(root)]
        ['a/x.png']
    """
    wanted = tuple(e.lower() for e in extensions)
    found = []
    for parent, folders, names in os.walk(folder, followlinks=False):
        folders[:] = [f for f in folders if not f.startswith(".")]
        found += [
            Path(parent) / name
            for name in names
            if not name.startswith(".") and Path(name).suffix.lower() in wanted
        ]
    return sorted(p for p in found if p.is_file())


OnError = Literal["raise", "skip"]


class ImageDataset(Dataset[tuple[Any, Any]]):
    """Labelled image files: items are ``(RGB PIL image, class index)``, or transformed images
    (``(image, multi-hot float tensor)`` for a multi-label dataset).

    Build one with [tlkit.ImageDataset.from_folder][] (``root/<class>/<image>``) or
    [tlkit.ImageDataset.from_csv][] (``path,label`` rows). Every file is checked when the
    dataset is built (``PIL.Image.verify``: headers and checksums, no decoding), so an
    unreadable file costs no training. Images are decoded by [tlkit.to_rgb][]: transparency is
    composited onto ``background``, 16-bit images are scaled, EXIF orientation is applied.

    Args:
        files: Image paths.
        targets: Class index of each file, or a multi-hot ``(N, K)`` matrix of 0/1 (a tensor
            or nested lists) for several labels per image.
        classes: Class names; ``targets`` index into them.
        background: RGB colour under transparent pixels.
        transform: Applied to each RGB PIL image.
        on_error: ``"raise"``: one error listing every unreadable file; ``"skip"``: leave them
            out and list them in ``skipped``.

    Attributes:
        classes: Class names, sorted.
        targets: Class index of each item, known without decoding any image (so
            ``tlkit.split(ds, ..., stratify=ds.targets)`` is instant); for a multi-label
            dataset a multi-hot ``(N, K)`` float tensor (``split`` stratifies it too).
        multi_label: Whether ``targets`` is multi-hot.
        files: The image paths, in item order.
        skipped: ``(path, reason)`` of each file left out (``on_error="skip"``).

    Raises:
        ValueError: For mismatched lengths, labels out of range, a bad ``on_error``, or (with
            ``on_error="raise"``) unreadable files, every one named.

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> root = Path(tempfile.mkdtemp())
        >>> for name, colour in (("cat", "red"), ("dog", "blue")):
        ...     (root / name).mkdir()
        ...     Image.new("RGBA", (4, 4), colour).save(root / name / "1.png")
        >>> ds = ImageDataset.from_folder(root)
        >>> ds.classes, ds.targets, len(ds)
        (['cat', 'dog'], [0, 1], 2)
        >>> image, label = ds[1]
        >>> image.mode, image.getpixel((0, 0)), label
        ('RGB', (0, 0, 255), 1)
    """

    def __init__(
        self,
        files: Sequence[str | os.PathLike[str]],
        targets: Sequence[int] | Sequence[Sequence[int]] | torch.Tensor,
        classes: Sequence[str],
        *,
        background: Sequence[int] = (255, 255, 255),
        transform: Callable[[Any], Any] | None = None,
        on_error: OnError = "raise",
    ) -> None:
        _check_arguments(background, on_error)
        self.min_side: int | None = None
        if len(files) != len(targets):
            raise ValueError(f"{len(files)} files but {len(targets)} targets")
        matrix = _multi_hot(targets, len(classes))
        bad = [] if matrix is not None else [t for t in targets if not 0 <= int(t) < len(classes)]  # type: ignore[arg-type]
        if bad:
            raise ValueError(f"target {bad[0]} is out of range for {len(classes)} classes")
        self.background = check_background(background)
        self.classes = list(classes)
        self.transform = transform
        self.skipped: list[tuple[str, str]] = []
        problems = _unreadable([Path(f) for f in files])
        if problems and on_error == "raise":
            listing = "\n".join(f"  {path}: {reason}" for path, reason in problems)
            raise ValueError(
                f"{len(problems)} of {len(files)} image files cannot be read (pass "
                f"on_error='skip' to leave them out):\n{listing}"
            )
        self.skipped = problems
        dropped = {path for path, _ in problems}
        keep = [i for i, f in enumerate(files) if str(f) not in dropped]
        self.files = [str(files[i]) for i in keep]
        self.targets: Any = (
            [int(targets[i]) for i in keep] if matrix is None else matrix[keep]  # type: ignore[arg-type]
        )
        if not self.files:
            raise ValueError(f"no readable image among the {len(files)} files")
        if matrix is None:
            emptied = sorted(set(map(int, targets)) - set(self.targets))
        else:
            gone = (matrix.sum(0) > 0) & (matrix[keep].sum(0) == 0)
            emptied = gone.nonzero().flatten().tolist()
        if emptied:
            raise ValueError(
                f"every image of class(es) {', '.join(repr(self.classes[i]) for i in emptied)} "
                "is unreadable: the model would have a class it never saw; fix or remove them"
            )

    @property
    def multi_label(self) -> bool:
        """Whether each image has a multi-hot row of labels (``targets`` is ``(N, K)``)."""
        return isinstance(self.targets, torch.Tensor)

    @property
    def class_to_idx(self) -> dict[str, int]:
        """``{class name: index}``."""
        return {name: i for i, name in enumerate(self.classes)}

    @classmethod
    def from_folder(
        cls,
        root: str | os.PathLike[str],
        *,
        background: Sequence[int] = (255, 255, 255),
        transform: Callable[[Any], Any] | None = None,
        on_error: OnError = "raise",
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
    ) -> ImageDataset:
        """Images under ``root/<class>/`` (searched recursively), classes sorted by name.

        Raises:
            FileNotFoundError: If ``root`` does not exist.
            NotADirectoryError: If ``root`` is a file.
            ValueError: For a root without class folders, or a class folder without images
                (each named), and for unreadable files (see the class).
        """
        _check_arguments(background, on_error)
        base = Path(root)
        if not base.exists():
            raise FileNotFoundError(f"image folder {str(base)!r} does not exist")
        if not base.is_dir():
            raise NotADirectoryError(
                f"{str(base)!r} is a file; pass the folder holding one "
                "folder per class (or a CSV of path,label)"
            )
        folders = sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not folders:
            loose = [p.name for p in base.iterdir() if p.suffix.lower() in extensions][:3]
            hint = f" (it holds images directly: {', '.join(loose)})" if loose else ""
            raise ValueError(
                f"{str(base)!r} has no class folders{hint}; lay the images out as "
                "ROOT/<class name>/<image>, one folder per class"
            )
        wanted = tuple(e.lower() for e in extensions)
        files: list[Path] = []
        targets: list[int] = []
        empty = []
        for index, folder in enumerate(folders):
            found = image_files(folder, wanted)
            if not found:
                empty.append(str(folder))
            files += found
            targets += [index] * len(found)
        if empty:
            raise ValueError(
                f"{len(empty)} class folder(s) hold no image ({', '.join(wanted)}): "
                + ", ".join(empty[:5])
            )
        classes = [f.name for f in folders]
        return cls(
            files, targets, classes, background=background, transform=transform, on_error=on_error
        )

    @classmethod
    def from_csv(
        cls,
        path: str | os.PathLike[str],
        *,
        root: str | os.PathLike[str] | None = None,
        background: Sequence[int] = (255, 255, 255),
        transform: Callable[[Any], Any] | None = None,
        on_error: OnError = "raise",
        label_sep: str | None = None,
    ) -> ImageDataset:
        """Images listed in a CSV file, in one of three layouts (the header says which):

        - ``path,label``: one label per image (``file``/``filename``/``image`` and
          ``class``/``target`` work too);
        - ``path,labels`` or ``path,tags``: several labels per image in one column, separated
          by ``label_sep`` (default: the first of ``|``, ``;``, ``,`` and a space that the
          column holds; quote a value holding a comma). An empty cell is an image with none of
          the labels. ``label_sep`` given makes a ``label`` column multi-label too;
        - a path column and one column per class holding 0 or 1 (the header's names are the
          classes, in its order).

        The last two give a multi-label dataset: ``targets`` is a multi-hot ``(N, K)`` float
        tensor. Relative paths are taken from ``root`` (default: the CSV's folder); classes
        are the sorted label names (numerically when all are integers).

        Raises:
            FileNotFoundError: If the CSV does not exist.
            ValueError: For unknown or missing columns, an empty file, listed files that do not
                exist (every one named), and unreadable files (see the class).
        """
        _check_arguments(background, on_error)
        csv_path = Path(path)
        if not csv_path.is_file():
            raise FileNotFoundError(f"CSV file {str(csv_path)!r} does not exist")
        if label_sep is not None and (not isinstance(label_sep, str) or not label_sep):
            raise ValueError(f"label_sep must be a non-empty string, got {label_sep!r}")
        base = Path(root) if root is not None else csv_path.parent
        table = read_table(csv_path, base, label_sep)
        missing = {str(f) for f in table.files if not f.is_file()}
        if missing and on_error == "raise":
            listed = [str(f) for f in table.files if str(f) in missing]
            raise ValueError(
                f"{len(missing)} file(s) listed in {str(csv_path)!r} do not exist (paths are "
                f"relative to {str(base)!r}): " + ", ".join(listed[:10])
            )
        present = [i for i, f in enumerate(table.files) if str(f) not in missing]
        targets: Any = table.targets()
        dataset = cls(
            [table.files[i] for i in present],
            [targets[i] for i in present],
            table.classes,
            background=background,
            transform=transform,
            on_error=on_error,
        )
        gone = [(str(f), "file does not exist") for f in table.files if str(f) in missing]
        dataset.skipped = gone + table.repeated + dataset.skipped
        return dataset

    @classmethod
    def from_path(cls, path: str | os.PathLike[str], **kwargs: Any) -> ImageDataset:
        """[tlkit.ImageDataset.from_csv][] for a ``.csv`` file, else
        [tlkit.ImageDataset.from_folder][]; ``kwargs`` go to either."""
        if Path(path).suffix.lower() == ".csv":
            return cls.from_csv(path, **kwargs)
        return cls.from_folder(path, **kwargs)

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> Image.Image:
        """The RGB PIL image of item ``index``, without the transform (JPEGs at a reduced scale
        when ``min_side`` is set: see [tlkit.ImageDataset.with_min_side][])."""
        return read_image(self.files[index], background=self.background, min_side=self.min_side)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        image: Any = self.load(index)
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[index]

    def with_transform(self, transform: Callable[[Any], Any] | None) -> ImageDataset:
        """A copy sharing the file list, with another transform (no file is checked again)."""
        clone = copy.copy(self)
        clone.transform = transform
        return clone

    def subset(self, indices: Sequence[int]) -> ImageDataset:
        """A copy holding the images at ``indices`` only, with the same classes, transform and
        background (no file is checked again).

        Examples:
            >>> import tempfile
            >>> from pathlib import Path
            >>> root = Path(tempfile.mkdtemp())
            >>> for i, name in enumerate("aaabbb"):
            ...     (root / name).mkdir(exist_ok=True)
            ...     Image.new("RGB", (8, 8), "red").save(root / name / f"{i}.png")
            >>> part = ImageDataset.from_folder(root).subset([0, 4])
            >>> len(part), part.targets, part.classes
            (2, [0, 1], ['a', 'b'])
        """
        chosen = [int(i) for i in indices]
        bad = [i for i in chosen if not -len(self) <= i < len(self)]
        if bad:
            raise IndexError(f"subset index {bad[0]} is out of range for {len(self)} images")
        clone = copy.copy(self)
        clone.files = [self.files[i] for i in chosen]
        clone.targets = (
            self.targets[chosen] if self.multi_label else [self.targets[i] for i in chosen]
        )
        clone.skipped = list(self.skipped)  # the files left out when the whole was read
        return clone

    def with_min_side(self, min_side: int | None) -> ImageDataset:
        """A copy that decodes JPEGs at a reduced scale, their short side at least ``min_side``
        (see [tlkit.read_image][]): for a transform that resizes the short side to
        ``min_side`` or less anyway. ``None`` decodes whole images again.

        Examples:
            >>> import tempfile
            >>> from pathlib import Path
            >>> root = Path(tempfile.mkdtemp())
            >>> for name in ("a", "b"):
            ...     (root / name).mkdir()
            ...     Image.new("RGB", (1600, 1200), "red").save(root / name / "1.jpg")
            >>> ds = ImageDataset.from_folder(root)
            >>> ds[0][0].size, ds.with_min_side(256)[0][0].size
            ((1600, 1200), (400, 300))
        """
        if min_side is not None:
            check_positive_int("min_side", min_side)
        clone = copy.copy(self)
        clone.min_side = min_side
        return clone

    def __repr__(self) -> str:
        return (
            f"ImageDataset({len(self)} images, {len(self.classes)} classes"
            + (f", {len(self.skipped)} skipped" if self.skipped else "")
            + ")"
        )


def _check_arguments(background: Sequence[int], on_error: str) -> None:
    check_background(background)
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")


def _multi_hot(targets: Any, classes: int) -> torch.Tensor | None:
    """``targets`` as a float ``(N, K)`` tensor when they are multi-hot rows, else ``None``."""
    if isinstance(targets, torch.Tensor):
        if targets.dim() != 2:
            return None
        matrix = targets
    elif len(targets) and all(isinstance(t, (list, tuple)) for t in targets):
        matrix = torch.tensor([list(t) for t in targets])
    else:
        return None
    if matrix.dim() != 2 or matrix.shape[1] != classes or not is_multi_hot(matrix):
        raise ValueError(
            f"multi-label targets must be a (N, {classes}) matrix of 0 and 1 (one column per "
            f"class), got shape {tuple(matrix.shape)}"
        )
    return matrix.float()


def _verify(path: Path) -> str | None:
    """Why ``path`` is not a readable image, or ``None``."""
    try:
        with Image.open(path) as image:
            kind, size = image.format, image.size
            image.verify()
            if image.width == 0 or image.height == 0:
                return "the image is empty (0 pixels)"
        if kind == "JPEG":  # verify() reads no JPEG data: decode it, at 1/8 scale (fast)
            with Image.open(path) as image:
                image.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))
                image.load()
    except Exception as exc:  # PIL raises many types for broken files
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return None


def _unreadable(files: Sequence[Path]) -> list[tuple[str, str]]:
    """``(path, reason)`` for each file PIL cannot read; checked in parallel threads."""
    if not files:
        return []
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
        reasons = list(pool.map(_verify, files))
    return [(str(f), r) for f, r in zip(files, reasons, strict=True) if r is not None]
