"""The top-blocks stage: the last blocks of the probe's best backbone fine-tuned on cached
activations, from that backbone's probe, then averaged with the probe.

On a CPU, fine-tuning a whole network rarely fits a budget of minutes, and on few images per
class it overfits. Fine-tuning only the top blocks ("surgical" fine-tuning: Lee et al.,
"Surgical Fine-Tuning Improves Adaptation to Distribution Shifts", ICLR 2023) from the head the
probe fitted (linear probe then fine-tune: Kumar et al., "Fine-Tuning can Distort Pretrained
Features and Underperform Out-of-Distribution", ICLR 2022) costs a fraction of that: the frozen
prefix runs once over every training image and its mirror image, and each epoch runs only the
top blocks over what it cached. Batch-norm statistics stay as pretrained.

The tuned network is trained on the training images less a held-out fold (near-duplicates kept
together), and the probe and it averaged (their logits: a geometric mean of their
probabilities) are judged against the probe alone on that fold, by the keep rule. The averaged
model is one network ([StackedBackbones][tlkit.model.network.StackedBackbones]: the probe's
bodies and the tuned one side by side, one head holding half of each head), so it saves,
loads and exports as any other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from .. import heads
from ..callbacks import Deadline, LRScheduler
from ..history import History
from ..model.network import StackedBackbones, build_head, final_linear, load_head
from ..model.result import Recipe
from ..probe import balancing_weights
from ..training.trainer import Trainer
from . import reasons
from .budget import shared_clock
from .compute import CPU, Compute
from .executor import Executor
from .finetune_loop import loss_of
from .finetune_stage import PROBED, held_out_fold
from .keep_rule import clearly_better, gain_of
from .probing import ProbeStage
from .scores import right_per_image
from .settings import AUTO
from .store import Decoded, ImageStore, to_model_input
from .views import Candidate

__all__ = [
    "Split",
    "TopBlocks",
    "averaged_network",
    "run_top_blocks",
    "split_network",
    "top_blocks_stage",
]


@dataclass
class Split:
    """A network cut before its top blocks: ``prefix`` (frozen) from a normalised batch to the
    activations the top blocks take; ``tail`` the top blocks up to the last feature map;
    ``finish`` pools it and applies the head (timm's ``forward_head``)."""

    model: nn.Module
    prefix: Callable[[torch.Tensor], torch.Tensor]
    tail: nn.Sequential
    finish: Callable[[torch.Tensor], torch.Tensor]

    def logits(self, activations: torch.Tensor) -> torch.Tensor:
        return self.finish(self.tail(activations.float()))


def split_network(model: nn.Module, blocks: int = AUTO.top_blocks) -> Split | None:
    """``model`` cut before its last ``blocks`` stages, for the networks whose feature pass is
    a stem, a sequence of stages and a final convolution (timm's EfficientNet family:
    ``conv_stem``, ``bn1``, ``blocks``, ``conv_head``, ``bn2``) or a stem and four layers
    (timm's and torchvision's ResNets: ``layer1`` to ``layer4``); ``None`` for others.

    Raises:
        ValueError: For ``blocks`` other than a positive int.
    """
    if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 1:
        raise ValueError(f"blocks must be a positive int (stages to tune), got {blocks!r}")
    names = ("conv_stem", "bn1", "blocks", "conv_head", "bn2")
    if hasattr(model, "forward_head") and all(hasattr(model, n) for n in names):
        parts = {n: model.get_submodule(n) for n in names}
        stages = parts["blocks"]
        if isinstance(stages, nn.Sequential):
            cut = max(1, len(stages) - blocks)
            prefix = nn.Sequential(parts["conv_stem"], parts["bn1"], *stages[:cut])
            tail = nn.Sequential(*stages[cut:], parts["conv_head"], parts["bn2"])
            return Split(model, prefix, tail, model.forward_head)  # type: ignore[arg-type]
    layer_names = [f"layer{i}" for i in range(1, 5)]
    for stem_names, finish in (
        (("conv1", "bn1", "act1", "maxpool"), getattr(model, "forward_head", None)),  # timm
        (("conv1", "bn1", "relu", "maxpool"), _torchvision_head(model)),
    ):
        if finish is not None and all(hasattr(model, n) for n in (*stem_names, *layer_names)):
            layers = [model.get_submodule(n) for n in layer_names]
            kept = 4 - min(blocks, 3)
            prefix = nn.Sequential(*(model.get_submodule(n) for n in stem_names), *layers[:kept])
            return Split(model, prefix, nn.Sequential(*layers[kept:]), finish)
    return None


def _torchvision_head(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """A torchvision ResNet's pooling and head (``avgpool``, ``fc``), ``None`` for others."""
    if not all(hasattr(model, n) for n in ("avgpool", "fc")) or hasattr(model, "forward_head"):
        return None
    return lambda x: model.get_submodule("fc")(torch.flatten(model.get_submodule("avgpool")(x), 1))


class _Top(nn.Module):
    """The tail and head of a split as a module of cached activations, its batch-norm layers
    held in evaluation mode (their statistics stay as pretrained)."""

    def __init__(self, split: Split) -> None:
        super().__init__()
        self.split = split
        self.tail = split.tail
        self.head = split.model.get_submodule(heads.find_head(split.model)[0])

    def forward(self, activations: torch.Tensor) -> torch.Tensor:
        return self.split.logits(activations)

    def train(self, mode: bool = True) -> _Top:
        super().train(mode)
        for module in self.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        return self


@torch.no_grad()
def cache_activations(
    split: Split, images: ImageStore, candidate: Candidate, compute: Compute
) -> torch.Tensor:
    """The prefix's activations of every image and of its mirror image, ``(2, N, ...)``, in
    half precision on the CPU."""
    split.model.eval().to(compute.device)
    views: list[list[torch.Tensor]] = [[], []]
    for chunk in images.batches(compute.feature_batch):
        x = to_model_input(chunk, candidate.size, candidate.mean, candidate.std, compute.device)
        with compute.autocast():
            for view, batch in zip(views, (x, x.flip(-1)), strict=True):
                view.append(split.prefix(batch).half().cpu())
    return torch.stack([torch.cat(view) for view in views])


@torch.no_grad()
def _probs(top: _Top, activations: torch.Tensor, compute: Compute) -> torch.Tensor:
    """Probabilities of each image, averaged with its mirror image's, on the CPU."""
    top.eval().to(compute.device)
    out = []
    for i in range(0, activations.shape[1], 128):
        both = activations[:, i : i + 128].to(compute.device)
        with compute.autocast():
            probs = [top(view).float().softmax(1) for view in both]
        out.append(((probs[0] + probs[1]) / 2).cpu())
    return torch.cat(out)


@dataclass
class TopBlocks:
    """The averaged network and how it did on the held-out fold."""

    name: str
    size: int
    model: nn.Module
    held: torch.Tensor  # the training images that judged it
    probs: torch.Tensor  # the averaged model's, on them
    history: History


def top_blocks_stage(
    ex: Executor,
    probe: ProbeStage,
    best: Candidate,
    sets: Decoded,
    *,
    classes: int,
    seed: int,
    compute: Compute | None,
) -> TopBlocks | None:
    """The stage as the plan says, once the probe has chosen ``best`` (planned again for it and
    the time left): ``None`` when it does not run or the probe alone is kept."""
    ex.replan(f"the probe chose {best.name}", tuned=best.name, done=PROBED)
    if sets.rows is not None and ex.plan.runs("top blocks"):
        ex.say(reasons.no_top_blocks_processes())
        return None
    if not ex.begin("top blocks"):
        return None
    train_at, held = held_out_fold(sets, probe, seed)
    top = run_top_blocks(
        probe,
        best,
        sets,
        ex.recipe,
        classes=classes,
        epochs=ex.plan.stage("top blocks").inputs["epochs"],
        train_at=train_at,
        held=held,
        deadline=ex.budget.deadline,
        compute=compute,
        log=ex.log,
    )
    ex.end("top blocks")
    return top


def run_top_blocks(
    probe: ProbeStage,
    best: Candidate,
    sets: Decoded,
    recipe: Recipe,
    *,
    classes: int,
    epochs: int,
    train_at: torch.Tensor,
    held: torch.Tensor,
    deadline: float | None,
    compute: Compute | None,
    log: Callable[[str], None],
) -> TopBlocks | None:
    """Fine-tune ``best``'s top blocks for ``epochs`` (fewer when ``deadline`` comes first) on
    the training images ``train_at`` (indices), and return the probe and it averaged when the
    keep rule prefers that to the probe alone on the others, ``held`` (``None`` otherwise, or
    for a network that cannot be split; the verdict goes into the recipe's reasons)."""
    compute = compute or CPU
    split = split_network(probe.tuning_start)
    if split is None:
        recipe.reasons.append(reasons.no_top_blocks_network(best.name))
        return None
    labels = sets.labels
    load_head(split.model, probe.tuning_head(train_at))
    activations = cache_activations(split, sets.images, best, compute)
    top = _Top(split)
    split.model.requires_grad_(False)
    top.requires_grad_(True)  # the top blocks and the head; the prefix stays frozen
    history = _train(
        top, activations[:, train_at], labels[train_at], recipe, epochs, deadline, compute
    )
    tuned = _probs(top, activations[:, held], compute)
    probe_probs = probe.val_probs[held]
    both = _average(probe_probs, tuned)
    weights = None
    if recipe.class_weight is not None:
        weights = balancing_weights(labels[held], classes)
    y = labels[held]
    probe_right, both_right = right_per_image(probe_probs, y), right_per_image(both, y)
    wins, gain, error = clearly_better(probe_right, both_right, weights=weights)
    recipe.gains.append(
        gain_of("top blocks", both_right, probe_right, wins, "held-out fold", weights)
    )
    recipe.reasons.append(
        reasons.top_blocks_verdict(
            best.name,
            len(history),
            right_per_image(tuned, y),
            probe_right,
            both_right,
            wins,
            gain,
            error,
        )
    )
    log(recipe.reasons[-1])
    if not wins:
        return None
    model = averaged_network(probe, split.model, best.size, classes)
    return TopBlocks(best.name, best.size, model, held, both, history)


def _train(
    top: _Top,
    activations: torch.Tensor,
    labels: torch.Tensor,
    recipe: Recipe,
    epochs: int,
    deadline: float | None,
    compute: Compute,
) -> History:
    """AdamW at ``AUTO.top_lr`` with a one-cycle schedule on every image and its mirror image
    (each a sample of its own), label smoothing and the recipe's class weights."""
    x = torch.cat([activations[0], activations[1]])
    y = torch.cat([labels, labels])
    generator = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ()).item()))
    loader = DataLoader(
        TensorDataset(x, y), batch_size=AUTO.batch_size, shuffle=True, generator=generator
    )
    params = [p for p in top.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=AUTO.top_lr, weight_decay=AUTO.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=AUTO.top_lr, total_steps=epochs * len(loader), pct_start=AUTO.warmup
    )
    trainer = Trainer(
        top,
        optimizer=optimizer,
        loss=loss_of(recipe, multi_label=False),
        device=compute.device,
        precision=compute.precision,  # type: ignore[arg-type]
        verbose=False,
        callbacks=[
            LRScheduler(schedule, interval="step"),
            Deadline(deadline, clock=shared_clock),
        ],
    )
    history = trainer.fit(loader, epochs=epochs)
    top.cpu()
    return history


def _average(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The normalised geometric mean of two models' probabilities (their logits averaged)."""
    logs = (a.clamp_min(1e-12).log() + b.clamp_min(1e-12).log()) / 2
    return logs.softmax(1)


def averaged_network(
    probe: ProbeStage, tuned: nn.Module, size: int, classes: int
) -> StackedBackbones:
    """The probe's network and ``tuned`` side by side under one head whose logits are the mean
    of theirs."""
    first = final_linear(probe.model)
    second = final_linear(tuned)
    if isinstance(probe.model, StackedBackbones):
        bodies, sizes = list(probe.model.bodies), list(probe.model.sizes)
    else:
        body = probe.model
        heads.replace_head(body, lambda n: nn.Identity())
        bodies, sizes = [body], [probe.size]
    heads.replace_head(tuned, lambda n: nn.Identity())
    head = build_head(first.in_features + second.in_features, classes)
    with torch.no_grad():
        linear = [m for m in head.modules() if isinstance(m, nn.Linear)][-1]
        linear.weight.copy_(torch.cat([first.weight, second.weight], 1) / 2)
        linear.bias.copy_((first.bias + second.bias) / 2)
    return StackedBackbones([*bodies, tuned], [*sizes, size], head).eval()
