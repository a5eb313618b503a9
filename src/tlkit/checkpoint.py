"""Checkpoint files and the state a bit-identical resume needs.

Everything tlkit reads from disk goes through [tlkit.checkpoint.load_file][] (one
``torch.load(weights_only=True)``, one set of error messages). A training checkpoint is a dict
written by [tlkit.Trainer.save_checkpoint][] and checked by
[tlkit.checkpoint.read_checkpoint][]. Random state is captured with
[tlkit.checkpoint.rng_state][]: the global generators of torch, Python, NumPy and CUDA, plus the
generators and stateful samplers of a ``DataLoader``, so that a resumed epoch draws the same data
order as the run that stopped.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "EpochPosition",
    "load_file",
    "read_checkpoint",
    "rng_state",
    "set_rng_state",
]

FORMAT = 1
"""Version of the training-checkpoint layout written by this tlkit."""

_REQUIRED = ("model", "optimizer", "epochs_done", "global_step", "rng", "history", "callbacks")


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
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for unreadable files
        raise ValueError(
            f"cannot read {what} {str(path)!r} with torch.load(weights_only=True): it is "
            f"truncated, not a PyTorch file, or holds pickled objects ({exc})"
        ) from exc


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate a training checkpoint written by [tlkit.Trainer][].

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        IsADirectoryError: If ``path`` is a folder.
        ValueError: If the file is unreadable, is not a tlkit training checkpoint, or was
            written in another format version.

    Examples:
        >>> import tempfile, torch
        >>> path = tempfile.mkdtemp() + "/weights.pt"
        >>> torch.save(torch.nn.Linear(2, 2).state_dict(), path)
        >>> read_checkpoint(path)
        Traceback (most recent call last):
        ...
        ValueError: ...is not a tlkit training checkpoint...
    """
    state = load_file(path)
    if not isinstance(state, dict) or "tlkit_checkpoint" not in state:
        keys = list(state)[:5] if isinstance(state, dict) else type(state).__name__
        raise ValueError(
            f"{str(path)!r} is not a tlkit training checkpoint (format {FORMAT}); found {keys}. "
            "For bare weights use tlkit.load_weights(model, path)"
        )
    version = state["tlkit_checkpoint"]
    if version != FORMAT:
        newer = isinstance(version, int) and version > FORMAT
        raise ValueError(
            f"{str(path)!r} is a tlkit checkpoint of format {version!r}, but this tlkit reads "
            f"format {FORMAT}; "
            + ("upgrade tlkit to resume it" if newer else "resume it with the tlkit that wrote it")
        )
    missing = [key for key in _REQUIRED if key not in state]
    if missing:
        raise ValueError(f"checkpoint {str(path)!r} lacks {', '.join(missing)}; it is damaged")
    return state


def _loader_generators(loader: Any) -> list[torch.Generator]:
    """The ``torch.Generator``s a DataLoader's sampling draws from, each once."""
    found: list[torch.Generator] = []
    candidates = [
        getattr(loader, "generator", None),
        getattr(getattr(loader, "sampler", None), "generator", None),
        getattr(getattr(getattr(loader, "batch_sampler", None), "sampler", None), "generator", None),
    ]
    for gen in candidates:
        if isinstance(gen, torch.Generator) and all(gen is not g for g in found):
            found.append(gen)
    return found


def _stateful_samplers(loader: Any) -> list[Any]:
    samplers = [getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)]
    return [
        s
        for s in samplers
        if s is not None and callable(getattr(s, "state_dict", None))
        and callable(getattr(s, "load_state_dict", None))
    ]


def rng_state(loader: Any = None) -> dict[str, Any]:
    """Every random state a training loop consumes, in a ``weights_only``-loadable form.

    Args:
        loader: Also capture this DataLoader's own generators (``DataLoader(generator=...)``,
            a sampler's ``generator``) and the ``state_dict()`` of samplers that have one.

    Examples:
        >>> state = rng_state()
        >>> a = torch.rand(1)
        >>> set_rng_state(state)
        >>> bool(torch.rand(1) == a)
        True
    """
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np

        kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
        state["numpy"] = (kind, torch.from_numpy(np.array(keys)), pos, has_gauss, cached)
    except ImportError:  # pragma: no cover - numpy comes with torchvision
        pass
    if loader is not None:
        state["loader_generators"] = [g.get_state() for g in _loader_generators(loader)]
        state["samplers"] = [s.state_dict() for s in _stateful_samplers(loader)]
    return state


def set_rng_state(state: dict[str, Any], loader: Any = None) -> None:
    """Restore what [tlkit.checkpoint.rng_state][] captured (``loader``'s part onto ``loader``).

    Raises:
        ValueError: If ``loader`` has a different number of generators than when captured.

    Examples:
        >>> from torch.utils.data import DataLoader
        >>> loader = DataLoader(range(8), shuffle=True, generator=torch.Generator())
        >>> state = rng_state(loader)
        >>> first = list(loader)
        >>> set_rng_state(state, loader)
        >>> list(loader) == first
        True
    """
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy as np

        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, keys.numpy(), pos, has_gauss, cached))
    if loader is None:
        return
    generators = _loader_generators(loader)
    saved = state.get("loader_generators", [])
    if len(saved) != len(generators):
        raise ValueError(
            f"the checkpoint holds the state of {len(saved)} DataLoader generator(s) but this "
            f"train_loader has {len(generators)}; resume with a loader built like the original "
            "(same generator= and sampler)"
        )
    for gen, gen_state in zip(generators, saved, strict=True):
        gen.set_state(gen_state)
    for sampler, sampler_state in zip(
        _stateful_samplers(loader), state.get("samplers", []), strict=False
    ):
        sampler.load_state_dict(sampler_state)


@dataclass
class EpochPosition:
    """Where training stands inside the current epoch, for checkpoints written mid-epoch.

    Attributes:
        start_rng: Random state when the epoch's data iteration began (``None`` between epochs).
        batches_done: Training batches finished in this epoch.
        end_rng: Random state when the epoch's training batches ended (set before validation).
        resume_rng: On resume, the random state after the last batch done before the stop.
        resume_meter: On resume, the running metric sums of the batches done before the stop.
        resume_seconds: On resume, the training time of those batches.

    Examples:
        >>> EpochPosition().inside_epoch, EpochPosition(start_rng=rng_state()).inside_epoch
        (False, True)
    """

    start_rng: dict[str, Any] | None = None
    batches_done: int = 0
    end_rng: dict[str, Any] | None = None
    resume_rng: dict[str, Any] | None = None
    resume_meter: dict[str, Any] | None = None
    resume_seconds: float = 0.0

    @property
    def inside_epoch(self) -> bool:
        """Whether an epoch has started and not finished."""
        return self.start_rng is not None
