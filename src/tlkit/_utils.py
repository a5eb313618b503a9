"""Private helpers: atomic file writes and argument checks shared by several modules."""

from __future__ import annotations

import ctypes
import math
import os
import shutil
import stat
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import nn

from .exceptions import NonFiniteLossError


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):  # exists but not ours, or not signalable here
        return True
    return True


def remove_stale_temporaries(target: Path) -> list[Path]:
    """Delete ``.NAME.PID.*.tmp`` files (and folders) beside ``target`` left by a killed writer.

    A writer that is SIGKILLed between creating its temporary file and renaming it leaves the
    file behind (a checkpoint's worth of disk each time). Each temporary file carries its
    writer's process id, so only the files of processes that no longer run are removed; a
    concurrent writer's file is left alone.
    """
    removed = []
    for tmp in target.parent.glob(f".{target.name}.*.tmp"):
        parts = tmp.name[len(target.name) + 2 :].split(".")
        if not parts or not parts[0].isdigit():
            continue
        pid = int(parts[0])
        if pid != os.getpid() and not _pid_alive(pid):
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> Path:
    """Write through a temporary file in the same folder, then rename it over ``path``, with
    the permissions the umask gives a new file (an existing file's, when it is replaced).

    A crash or kill during the write leaves the previous file intact: ``os.replace`` is atomic on
    POSIX and Windows when source and target are on the same file system. Temporary files left
    by an earlier killed writer of the same target are removed first.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    prefix = f".{target.name}.{os.getpid()}."
    mode = _file_mode(target)
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=target.parent)
    try:
        os.chmod(tmp, mode)  # mkstemp's file is private (0600) whatever the umask
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def replace_folder(target: str | os.PathLike[str], build: Callable[[Path], object]) -> Path:
    """Make the folder ``target`` with ``build(folder)`` beside it, then swap it into place.

    Until ``build`` has returned, an earlier ``target`` is untouched: an error, Ctrl-C or a kill
    leaves it as it was (and a partial folder beside it, removed by the next call once its
    process is gone). The swap is one atomic exchange on Linux (``renameat2``), else two
    renames.
    """
    target = Path(target).absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    staging = Path(
        tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=target.parent)
    )
    try:
        os.chmod(staging, _folder_mode(target))
        build(staging)
        if not target.exists():
            os.rename(staging, target)
        elif not _exchange(staging, target):
            old = staging.with_name(staging.name[: -len(".tmp")] + ".old.tmp")
            os.rename(target, old)
            os.rename(staging, target)
            shutil.rmtree(old, ignore_errors=True)
    finally:  # after an exchange the staging name holds the earlier folder
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _folder_mode(target: Path) -> int:
    """The permissions a new folder gets here (or ``target``'s, when it exists)."""
    if target.is_dir():
        return stat.S_IMODE(target.stat().st_mode)
    umask = os.umask(0)
    os.umask(umask)
    return 0o777 & ~umask


def _file_mode(target: Path) -> int:
    """The permissions a new file gets here (or ``target``'s, when it exists)."""
    if target.is_file():
        return stat.S_IMODE(target.stat().st_mode)
    return _folder_mode(target) & 0o666


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where the
    system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    done = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return done == 0


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` atomically (temporary file, then rename)."""
    return _atomic_write(path, lambda handle: torch.save(obj, handle))


def atomic_write_text(text: str, path: str | os.PathLike[str]) -> Path:
    """Write UTF-8 text atomically (temporary file, then rename)."""
    return _atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def read_torch_file(path: Path, what: str) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, its failures in one plain sentence
    naming ``what`` and the file (and PyTorch's warnings about the pickle protocol hushed).

    Raises:
        ValueError: If the file is truncated, not a PyTorch file, or holds pickled objects.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for unreadable files
        text = str(exc)
        if "Weights only load failed" in text or "WeightsUnpickler" in text:
            why = "it holds pickled Python objects, which tlkit does not load (they could run code)"
        elif "PytorchStreamReader" in text or not zipfile.is_zipfile(path):
            why = "it is truncated or not a PyTorch file"
        else:
            why = f"{type(exc).__name__}: {text.splitlines()[0][:160] if text else ''}"
        raise ValueError(f"cannot read {what} {str(path)!r}: {why}") from exc


def plural(count: int, noun: str) -> str:
    """``"1 epoch"``, ``"3 epochs"``: a count and its noun, for messages.

    Examples:
        >>> plural(1, "epoch"), plural(0, "image"), plural(12, "fine-tuning epoch")
        ('1 epoch', '0 images', '12 fine-tuning epochs')
    """
    return f"{count} {noun}{'s' * (count != 1)}"


def check_positive_int(name: str, value: Any) -> None:
    """Raise ``ValueError`` unless ``value`` is an ``int`` (not a ``bool``) of at least 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def check_seed(seed: Any) -> None:
    """Raise unless ``seed`` is an ``int`` that ``torch.manual_seed`` takes (0 to 2**64 - 1).

    Raises:
        TypeError: For a seed that is not an ``int`` (a ``bool`` included).
        ValueError: For one out of range.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r}")
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must be between 0 and 2**64 - 1, got {seed}")


def check_writable_dir(folder: str | os.PathLike[str], what: str) -> Path:
    """Create ``folder`` if needed and prove a file can be written there, or raise at once.

    Raises:
        NotADirectoryError: If ``folder`` (or a parent) is an existing file.
        PermissionError: If the folder cannot be created or written.
    """
    path = Path(folder)
    for parent in (path, *path.parents):
        if parent.exists() and not parent.is_dir():
            raise NotADirectoryError(
                f"{what} {str(path)!r} cannot be a folder: {str(parent)!r} is a file; "
                "pass a folder path"
            )
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".tlkit-write-check.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise PermissionError(
            f"{what} {str(path)!r} is not writable ({exc.strerror or exc}); pass a folder you "
            "can write to"
        ) from exc
    return path


def nonfinite_tensors(model: nn.Module | Mapping[str, Any]) -> list[str]:
    """Names of the floating-point state tensors of a model (or of a state dict) holding NaN
    or infinity (one host sync)."""
    state = model.state_dict() if isinstance(model, nn.Module) else model
    named = [
        (n, t) for n, t in state.items() if isinstance(t, torch.Tensor) and t.is_floating_point()
    ]
    if not named:
        return []
    finite = torch.stack([torch.isfinite(t).all() for _, t in named]).tolist()
    return [n for (n, _), ok in zip(named, finite, strict=True) if not ok]


def check_weights_finite(model: nn.Module, path: Any) -> None:
    bad = nonfinite_tensors(model)
    if bad:
        raise NonFiniteLossError(
            f"{len(bad)} tensors of the model hold NaN or infinite values (first: {bad[0]}); "
            f"{str(path)!r} was not written, so the last good checkpoint is kept"
        )


def check_state_finite(state: Mapping[str, Any], source: Any) -> None:
    """Refuse a state dict with NaN or infinite weights: loaded, it would answer NaN.

    Raises:
        ValueError: Naming the first bad tensor and how many there are.

    Examples:
        >>> check_state_finite({"w": torch.tensor([1.0, float("nan")])}, "w.pt")
        Traceback (most recent call last):
        ...
        ValueError: 'w.pt' holds NaN or infinite weights in 1 tensor(s) (first: w); ...
    """
    bad = nonfinite_tensors(state)
    if bad:
        raise ValueError(
            f"{str(source)!r} holds NaN or infinite weights in {len(bad)} tensor(s) (first: "
            f"{bad[0]}); it comes from a run that diverged or a damaged file, and is not loaded"
        )


def json_safe(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by ``None``: JSON has no NaN, and
    ``json.dumps`` writes a bare ``NaN`` that ``jq`` and browsers reject.

    Examples:
        >>> json_safe({"loss": float("nan"), "per_class": [0.5, float("inf")], "n": 3})
        {'loss': None, 'per_class': [0.5, None], 'n': 3}
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def load_file(path: str | os.PathLike[str], *, what: str = "checkpoint") -> Any:
    """Read a file saved with ``torch.save`` through ``torch.load(weights_only=True)``, on CPU.

    Args:
        path: The file.
        what: How error messages name the file (``"checkpoint"``, ``"weights"``).

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        IsADirectoryError: If ``path`` is a folder (the message lists the ``.pt`` files in it).
        ValueError: If the file is truncated, not a PyTorch file, or holds pickled objects.

    Examples:
        >>> import tempfile, torch
        >>> path = tempfile.mkdtemp() + "/w.pt"
        >>> torch.save({"w": torch.ones(2)}, path)
        >>> load_file(path)["w"]
        tensor([1., 1.])
    """
    path = Path(path)
    if path.is_dir():
        found = sorted(p.name for p in path.glob("*.pt*"))
        hint = f"; it holds {', '.join(found[:5])}" if found else " with no .pt file in it"
        raise IsADirectoryError(
            f"{what} {str(path)!r} is a folder{hint}: pass a file, e.g. {str(path / 'last.pt')!r}"
        )
    if not path.is_file():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist")
    return read_torch_file(path, what)
