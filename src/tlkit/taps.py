"""Features from inside a network: the pooled outputs of some intermediate layers beside its
final pooled features.

A linear probe on the last layer alone transfers worst where the new images differ most from
the pretraining images (digits, sprites, line drawings): the last layer has specialised in
ImageNet's objects, while earlier layers still describe strokes, textures and parts. Pooling a
few intermediate layers as well and letting the probe weigh them (the idea of Evci et al.,
"Head2Toe", ICML 2022) costs no extra forward pass. [tlkit.finetune][]'s probe stage uses it
where cross-validation prefers it.

```python
import torch
import tlkit

model, info = tlkit.backbone("timm/tf_efficientnet_lite0")
tlkit.replace_head(model, lambda n: torch.nn.Identity())
tapped = tlkit.LayerTaps(model, tlkit.taps.default_layers(model)).eval()
features = tapped(batch)  # (N, 40 + 80 + 112 + 192 + 320 + 1280)
```
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["LayerTaps", "default_layers", "pool"]

_MAX_TAPS = 5  # the deepest intermediate layers tapped by default_layers


def pool(output: torch.Tensor) -> torch.Tensor:
    """Global average of a layer's output: ``(N, C, H, W)`` over the positions, ``(N, L, D)``
    (tokens) over the tokens, ``(N, D)`` as it is.

    Raises:
        ValueError: For an output of another rank (naming its shape).

    Examples:
        >>> pool(torch.ones(2, 3, 4, 4)).shape, pool(torch.ones(2, 5, 6)).shape
        (torch.Size([2, 3]), torch.Size([2, 6]))
    """
    if output.dim() == 4:
        return output.mean((2, 3))
    if output.dim() == 3:
        return output.mean(1)
    if output.dim() == 2:
        return output
    raise ValueError(
        f"cannot pool a layer output of shape {tuple(output.shape)}: LayerTaps pools "
        "(N, C, H, W) maps, (N, L, D) tokens or (N, D) vectors"
    )


class LayerTaps(nn.Module):
    """A network whose output is the pooled outputs of ``layers`` (in the order given),
    followed by the network's own output flattened (its pooled features when its head was
    replaced by ``nn.Identity``).

    The layers are found by name (``model.get_submodule``) and read with forward hooks that
    exist only during a forward pass, so the wrapped network is left as it was and the
    wrapper traces, exports (``torch.export``, ONNX) and deep-copies as a plain module.
    Its ``state_dict`` is the network's under ``body.``.

    Args:
        body: The network.
        layers: Dotted names of its submodules whose outputs are pooled
            ([pool][tlkit.taps.pool]).

    Raises:
        ValueError: For a name that is not a submodule of ``body`` (with the closest names).

    Examples:
        >>> import torchvision
        >>> net = torchvision.models.resnet18()
        >>> net.fc = nn.Identity()
        >>> tapped = LayerTaps(net, ["layer2", "layer3"]).eval()
        >>> tapped(torch.zeros(1, 3, 64, 64)).shape  # 128 + 256 + 512
        torch.Size([1, 896])
        >>> LayerTaps(net, ["layer9"])
        Traceback (most recent call last):
        ...
        ValueError: 'layer9' is not a layer of ResNet; close names: 'layer4', 'layer3', 'layer2'
    """

    def __init__(self, body: nn.Module, layers: Sequence[str]) -> None:
        super().__init__()
        if isinstance(layers, str):
            raise TypeError(f"layers must be a list of names, got the string {layers!r}")
        names = [n for n, _ in body.named_modules() if n]
        for layer in layers:
            if layer not in names:
                close = difflib.get_close_matches(layer, names, n=3, cutoff=0.5)
                hint = (
                    f"close names: {', '.join(repr(c) for c in close)}"
                    if close
                    else (f"its layers include {', '.join(repr(n) for n in names[:5])}")
                )
                raise ValueError(f"{layer!r} is not a layer of {type(body).__name__}; {hint}")
        self.body = body
        self.layers = list(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        taken: dict[str, torch.Tensor] = {}

        def keep(name: str) -> Any:
            def hook(module: nn.Module, args: Any, output: Any) -> None:
                taken[name] = pool(output)

            return hook

        handles = [self.body.get_submodule(n).register_forward_hook(keep(n)) for n in self.layers]
        try:
            out = self.body(x)
        finally:
            for handle in handles:
                handle.remove()
        missing = [n for n in self.layers if n not in taken]
        if missing:
            name = type(self.body).__name__
            raise RuntimeError(f"layers {missing} did not run in {name}'s forward pass")
        return torch.cat([taken[n] for n in self.layers] + [out.flatten(1)], 1)

    @torch.no_grad()
    def out_features(self, size: int) -> int:
        """The width of the output for ``size`` x ``size`` images (one blank image passed
        through in evaluation mode, on the network's device; the mode is restored).

        Examples:
            >>> import torchvision
            >>> net = torchvision.models.resnet18()
            >>> net.fc = nn.Identity()
            >>> LayerTaps(net, ["layer3"]).out_features(64)
            768
        """
        was = self.training
        parameter = next(self.body.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
        try:
            return int(self.eval()(torch.zeros(1, 3, size, size, device=device)).shape[1])
        finally:
            self.train(was)


def default_layers(model: nn.Module) -> list[str]:
    """The intermediate layers tapped by default. For timm networks with ``(N, C, H, W)`` maps:
    the stages of ``feature_info`` at a stride of 8 or more, with the blocks between two of
    them in one container (EfficientNet's ``blocks.3`` between ``blocks.2`` and ``blocks.4``),
    less the last stage where its pooled output is already the final features, at most the
    deepest ``5``. For torchvision's ResNet family ``layer2`` and ``layer3``; none for other
    networks.

    With EfficientNet-Lite0 on three real folders of 20 training images per class (emoji,
    Fashion-MNIST, digits), a probe on these and the final features scored 0.3 to 1.7 points
    above the final features alone, and -0.5 to +0.9 against the ``feature_info`` stages
    alone (``benchmarks/layer_taps.py``, one run).

    Examples:
        >>> import torchvision
        >>> default_layers(torchvision.models.resnet18())
        ['layer2', 'layer3']
        >>> default_layers(torchvision.models.vgg11())
        []
    """
    info = getattr(model, "feature_info", None)
    if isinstance(info, list) and info and all(isinstance(d, dict) for d in info):
        if getattr(model, "output_fmt", "NCHW") != "NCHW":
            return []
        final = getattr(model, "head_hidden_size", None) or getattr(model, "num_features", None)
        stages = [d for d in info if int(d.get("reduction", 0)) >= 8 and d.get("module")]
        if stages and stages[-1].get("num_chs") == final:
            stages = stages[:-1]
        names = [str(d["module"]) for d in stages]
        return _with_blocks_between(names)[-_MAX_TAPS:]
    if all(isinstance(getattr(model, f"layer{i}", None), nn.Module) for i in (2, 3, 4)):
        return ["layer2", "layer3"]
    return []


def _with_blocks_between(names: list[str]) -> list[str]:
    """``names`` with the numbered siblings between two of them added.

    Examples:
        >>> _with_blocks_between(["blocks.2", "blocks.4", "blocks.6"])
        ['blocks.2', 'blocks.3', 'blocks.4', 'blocks.5', 'blocks.6']
        >>> _with_blocks_between(["layer2", "layer3"])
        ['layer2', 'layer3']
    """
    out: list[str] = []
    for name, after in zip(names, [*names[1:], ""], strict=True):
        out.append(name)
        parent, _, index = name.rpartition(".")
        next_parent, _, next_index = after.rpartition(".")
        if parent and parent == next_parent and index.isdigit() and next_index.isdigit():
            out.extend(f"{parent}.{i}" for i in range(int(index) + 1, int(next_index)))
    return out
