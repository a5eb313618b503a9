"""Every number of the auto recipe, in one table that the stages read and the plan's text is
written from (a number restated by hand in an explanation drifts from the code)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["AUTO", "Settings"]


@dataclass(frozen=True, kw_only=True)
class Settings:
    """The auto recipe's numbers; [tlkit.finetune][] reads ``AUTO``.

    Examples:
        >>> from dataclasses import replace
        >>> replace(AUTO, max_epochs=4).max_epochs, AUTO.max_epochs
        (4, 12)
    """

    # which recipe
    few_per_class: int = 20  # below this many training images per class: the probe only
    keep_margin: float = 1.0  # standard errors by which fine-tuning must beat the probe
    imbalance_ratio: float = 4.0  # largest class over smallest above which auto balances
    # (benchmarks/beyond_single_label.py, Lite0 probe: balanced accuracy +1.0 to +2.6 points
    # at ratios 5 to 20 on Fashion-MNIST, +1.4 on Wesnoth at 15.5; +0.7 at 3 and -0.1 at 2
    # on Fashion-MNIST, -0.2 on emoji at 3.7)
    # validation
    val_fraction: float = 0.15  # held out of the training images when no val= is given
    memory_cache_bytes: int = 1_000_000_000  # decoded images beyond this go to a file on disk
    decode_workers: int = 4  # at most this many processes decode the images (fewer cores: fewer)
    # the probe
    probe_C: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)  # L2 strengths tried
    probe_folds: int = 5  # cross-validation folds choosing C, the backbones and the model
    probe_views: int = 2  # each image and its mirror image
    probe_taps: bool = True  # read intermediate layers too (tlkit.taps.default_layers)
    probe_zoom: float = 0.85  # zoomed copies with time left: the centre this share enlarged,
    # the image shrunk to it (benchmarks/real_folders.py, 3 Lites on cached features: test
    # +1.6 on digits, +0.4 on Fashion-MNIST at 20 per class, 0.0 on emoji; kept unless the
    # probe is worse out of fold with them)
    duplicate_similarity: float = 0.95  # cosine similarity joining near-duplicate images
    head_dropout: float = 0.1
    calibration_gain: float = 0.001  # a temperature is kept only when it lowers the
    # cross-fitted calibration error by more than one bootstrap standard error and at least
    # this much (out-of-fold predictions all right and sure would otherwise keep a sharpening
    # temperature fitted on nothing to correct)
    probe_fit_seconds: float = 2.2e-6  # per image, view and feature of a cross-validated probe
    probe_fit_overhead: float = 0.7  # seconds more per cross-validated fit (both: least
    # squares over the probe fits of 10 real-folder runs, 2 CPU cores; docs/benchmarks.md)
    probe_share: float = 0.5  # at most this share of the time left goes to probe features ...
    probe_share_alone: float = 0.85  # ... or this much when no fine-tuning will follow
    train_slowdown: float = 2.0  # a fine-tuning epoch against one view of the probe's
    # feature pass as its speed check estimates it (Wesnoth, Lite0, 2 CPU cores: 91-106 s
    # against 48 s)
    # fine-tuning
    min_finetune_epochs: int = 3  # auto fine-tunes only when this many epochs fit
    max_epochs: int = 12
    images_without_budget: int = 30_000  # without a budget, epochs see about this many images
    lr: float = 2e-3  # the head's; each stage towards the input gets layer_decay times more
    layer_decay: float = 0.9
    weight_decay: float = 0.01
    label_smoothing: float = 0.1
    warmup: float = 0.15  # share of the one-cycle schedule spent rising
    crop_scale: float = 0.35  # random crops cover at least this share of the image ...
    mild_crop_scale: float = 0.8  # ... or this much with fewer than crop_epochs epochs
    crop_epochs: int = 8
    batch_size: int = 32
    # the top blocks (on a CPU, where fine-tuning everything does not fit)
    top_blocks: int = 2  # the last this many stages of the probe's best backbone are tuned
    top_lr: float = 3e-4  # their rate and the head's (1e-3 diverged on digits, Lite0)
    top_few_per_class: int = 5  # below this many images per class to tune on: not tuned
    top_min_epochs: int = 3  # tuned only when this many epochs fit
    top_max_epochs: int = 10
    top_epoch_cost: float = 0.8  # an epoch per image and view against one view of the
    # backbone's feature pass with its intermediate layers (digits, 200 images, Lite2 at
    # 260 px, the last two stages, 2 CPU cores: 10 epochs in 110 s against a 16 s pass)
    large_batch_size: int = 64  # from large_from training images (CPUs run it faster per image)
    large_from: int = 4000
    # several backbones
    rank_images: int = 500  # LogME sample (stratified)
    rank_share: float = 0.25  # at most this share of the budget left goes to ranking
    rank_least_per_class: int = 5  # fewer than this per class (and 50): no ranking
    least_sampled: float = 0.5  # a backbone is left out before the probe sees fewer than
    # this share of the training images (emoji tags, 2 min: 238 of 689 images with Lite0+1
    # gave test mAP 0.668; all 689 with Lite0+1+2 in 151 s gave 0.709)

    def __post_init__(self) -> None:
        for name in (
            "val_fraction",
            "rank_share",
            "probe_share",
            "probe_share_alone",
            "least_sampled",
            "probe_zoom",
            "warmup",
            "crop_scale",
            "mild_crop_scale",
        ):
            value = getattr(self, name)
            if not 0 < value < 1 and not (value == 1 and "crop" in name):
                raise ValueError(f"{name} must be in (0, 1), got {value!r}")


AUTO = Settings()
