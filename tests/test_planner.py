"""The planner as a table: measurements and a time left in, a plan out; no images, no networks,
no clock."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from tlkit.recipes.plan import STAGES, Backbone, Measurements, Plan, changed, replan
from tlkit.recipes.planner import (
    fit_count,
    fit_seconds,
    plan,
    plan_candidates,
    plan_sample,
    tuning_images,
    zoomed_fit_seconds,
)
from tlkit.recipes.settings import AUTO


def lites(*seconds: float, width: int = 2000, dim: int = 1280) -> tuple[Backbone, ...]:
    """Backbones named l0, l1, ... with these feature passes (seconds per image and view)."""
    return tuple(
        Backbone(name=f"l{i}", seconds=s, width=width, dim=dim) for i, s in enumerate(seconds)
    )


def m(**kwargs: object) -> Measurements:
    defaults: dict[str, object] = {"n_train": 200, "classes": 10, "backbones": lites(0.02)}
    return Measurements(**{**defaults, **kwargs})  # type: ignore[arg-type]


# ------------------------------------------------------------------ the stages and their seconds
@pytest.mark.parametrize("left", [None, 30.0, 120.0, 600.0])
def test_every_plan_lists_every_stage_in_order(left: float | None) -> None:
    p = plan(m(backbones=lites(0.02, 0.03, 0.05)), left)
    assert [s.name for s in p.stages] == list(STAGES)
    assert p.runs("calibration") and p.runs("features")
    assert all(s.seconds >= 0 for s in p.stages)


def test_predicted_seconds_follow_the_measurements() -> None:
    p = plan(m(decode=0.001, pace={"features": 1.5}), None)
    assert p.stage("decoding").seconds == pytest.approx(0.2)  # 200 images at 1 ms
    assert p.stage("features").seconds == pytest.approx(0.02 * 2 * 200 * 1.5)  # both views
    per_image = fit_seconds(lites(0.02), 10, mirror=True)
    zoom = zoomed_fit_seconds(lites(0.02), 10)
    assert p.runs("zoomed views")  # no budget: every stage in full
    fits = fit_count(lites(0.02), mirror=True) + 1  # and the zoomed views' one
    overhead = AUTO.probe_fit_overhead * fits
    assert p.stage("probe fits").seconds == pytest.approx((per_image + zoom) * 200 + overhead)
    assert p.stage("zoomed views").seconds == pytest.approx(p.stage("features").seconds)


# ------------------------------------------------------------------ which backbones
@pytest.mark.parametrize(
    ("left", "kept", "mirror"),
    [
        (None, ("l0", "l1", "l2"), True),  # no budget: every one
        (250.0, ("l0", "l1", "l2"), True),  # 180 s of features in 212 s of room
        (150.0, ("l0", "l1", "l2"), False),  # 127 s: one view of each (90 s)
        (80.0, ("l0", "l2"), False),  # 68 s: the costliest first, then what still fits
    ],
)
def test_the_probe_keeps_the_backbones_whose_features_fit_its_room(
    left: float | None, kept: tuple[str, ...], mirror: bool
) -> None:
    backbones = lites(0.05, 0.15, 0.25, width=4, dim=4)  # one view of 200 images: 10, 30, 50 s
    p = plan(m(backbones=backbones, recipe="probe"), left)
    assert (p.backbones, p.mirror, p.sample) == (kept, mirror, 200)


def test_plan_candidates_go_by_cost_or_by_logme_order() -> None:
    seconds = {"a": 10.0, "b": 30.0, "c": 50.0}
    assert plan_candidates(seconds, None) == (["a", "b", "c"], None)  # no budget: all
    assert plan_candidates(seconds, 90.0) == (["a", "b", "c"], None)
    kept, why = plan_candidates(seconds, 50.0)  # the costliest first, then what fits
    assert kept == ["c"] and why is not None and "a, b left out" in why
    assert plan_candidates(seconds, 80.0)[0] == ["b", "c"]
    assert plan_candidates(seconds, 5.0)[0] == ["a"]  # none fits: the cheapest
    assert plan_candidates(seconds, 50.0, priority=["a", "b", "c"])[0] == ["a", "b"]


# ------------------------------------------------------------------ ranking
@pytest.mark.parametrize(
    ("n_train", "left", "multi", "runs", "said"),
    [
        (400, 100.0, False, False, ""),  # within LogME's sample: ranking costs what it saves
        (2000, None, False, False, ""),  # no budget: every backbone anyway
        (2000, 100.0, True, False, ""),  # several labels: LogME is for one
        (2000, 200.0, False, True, ""),  # l1 could fit after ranking
        (2000, 30.0, False, False, "no LogME ranking: after it, only the quickest"),
    ],
)
def test_logme_ranks_only_where_its_order_can_change_what_is_kept(
    n_train: int, left: float | None, multi: bool, runs: bool, said: str
) -> None:
    backbones = lites(0.005, 0.02, 0.05)  # one view of 2,000 images: 10, 40, 100 s
    p = plan(m(n_train=n_train, backbones=backbones, multi_label=multi, rank=0.01), left)
    assert p.runs("ranking") == runs
    assert p.stage("ranking").reason.startswith(said)


@pytest.mark.parametrize(("rank", "images"), [(0.25, 500), (2.0, 187), (5.0, None)])
def test_ranking_takes_at_most_its_share_of_the_time_left(rank: float, images: int | None) -> None:
    # one view of 2,000 images: 100, 400 and 1,000 s, in 85% of 1,500 s: not all of them. A
    # quarter of 1,500 s ranks 500 images at 0.25 s each, 187 at 2 s, and at 5 s not even the
    # least sample (5 images per class, 500 s)
    backbones = lites(0.05, 0.2, 0.5)
    p = plan(m(n_train=2000, classes=20, backbones=backbones, rank=rank, recipe="probe"), 1500.0)
    stage = p.stage("ranking")
    if images is None:
        assert not stage.run and "more than 25% of the 1500 s left" in stage.reason
    else:
        assert stage.run and stage.inputs["images"] == images
        assert stage.seconds == pytest.approx(images * rank)


def test_once_ranked_the_order_decides_which_backbones_the_room_keeps() -> None:
    backbones = lites(0.005, 0.02, 0.05)
    ranked = m(n_train=2000, backbones=backbones, ranked=("l0", "l1", "l2"), done={"ranking"})
    p = plan(replace(ranked, done=frozenset({"ranking"})), 160.0)
    assert not p.runs("ranking") and p.order == ("l0", "l1", "l2")
    assert p.backbones[0] == "l0"  # LogME's first is kept before the costliest


# ------------------------------------------------------------------ sample and mirror images
def test_mirror_images_give_way_before_images_and_backbones_before_half_the_images() -> None:
    backbones = lites(0.5, 0.5, width=4, dim=4)  # each: 1 s per image and its mirror image
    # the fits at 3 us per image, view and feature, and nothing more per fit
    free = replace(AUTO, probe_fit_seconds=3e-6, probe_fit_overhead=0.0)
    kwargs = {"n_train": 30, "classes": 3, "backbones": backbones, "recipe": "probe"}
    roomy = plan(m(**kwargs), 100.0 / AUTO.probe_share_alone, free)  # 100 s of room
    assert roomy.sample == 30 and roomy.mirror and roomy.backbones == ("l0", "l1")
    assert roomy.reasons == ()
    one_view = plan(m(**kwargs), 42.0 / AUTO.probe_share_alone, free)
    assert one_view.sample == 30 and not one_view.mirror and one_view.backbones == ("l0", "l1")
    assert one_view.reasons == (
        "no mirror images: with them the probe would see 20 of the 30 training images (a new "
        "image teaches it more than a mirrored copy)",
    )
    # wide features (slow fits): with both backbones fewer than half the images even on one
    # view, so one is left out (LogME's last, or the last given); then every image fits on one
    wide = {**kwargs, "backbones": lites(0.5, 0.5, width=100_000, dim=100_000)}
    short = plan(m(**wide), 30.0 / AUTO.probe_share_alone, free)
    assert short.backbones == ("l0",) and not short.mirror and short.sample == 30
    assert short.reasons == (
        "l1 left out: with it the probe would see 13 of the 30 training images, fewer than 50% "
        "(more images help a probe more than another backbone's features)",
        "no mirror images: with them the probe would see 15 of the 30 training images (a new "
        "image teaches it more than a mirrored copy)",
    )
    ranked = plan(m(**wide, ranked=("l1", "l0")), 30.0 / AUTO.probe_share_alone, free)
    assert ranked.backbones == ("l1",)  # LogME's last goes first
    # a sample either way: of images on one view, twice as many as with their mirror images
    sampled = plan(m(**wide), 15.0 / AUTO.probe_share_alone, free)
    assert sampled.backbones == ("l0",) and not sampled.mirror and sampled.sample == 18
    assert "a stratified sample of 18 of the 30 training images" in sampled.reasons[-1]


def test_plan_sample_keeps_two_images_per_class_at_least() -> None:
    assert plan_sample(1000, 10, 0.05, None) == (1000, None)
    assert plan_sample(1000, 10, 0.05, 25.0)[0] == 500
    assert plan_sample(1000, 10, 0.05, 0.5)[0] == 20  # 2 per class, over the budget
    assert plan_sample(15, 10, 0.05, 0.5) == (15, None)  # two per class is all of them


def test_validation_images_are_decoded_and_passed_but_not_sampled() -> None:
    with_val = plan(m(n_val=100, recipe="probe"), 8.0)
    alone = plan(m(recipe="probe"), 8.0)
    assert with_val.sample < alone.sample  # the 100 val images take their share first


# ------------------------------------------------------------------ zoomed views
@pytest.mark.parametrize(("left", "zoom"), [(None, True), (1000.0, True), (20.0, False)])
def test_zoomed_views_only_with_room_after_every_image_and_its_mirror(
    left: float | None, zoom: bool
) -> None:
    p = plan(m(recipe="probe"), left)  # 8 s of features, 8 s more for the zoomed views
    assert p.runs("zoomed views") == zoom


def test_no_zoomed_views_without_mirror_images() -> None:
    p = plan(m(recipe="probe", sample=200, mirror=False, kept=("l0",), done={"decoding"}), None)
    assert not p.mirror and not p.runs("zoomed views")


def test_a_slow_feature_pass_drops_the_zoomed_views_of_the_re_plan() -> None:
    first = m(recipe="probe")
    p = plan(first, 40.0)
    assert p.runs("zoomed views")
    done = replan(
        first, done={"decoding", "features"}, sample=p.sample, kept=p.backbones, mirror=True
    )
    slow = plan(replan(done, pace={"features": 3.0}), 16.0)  # 24 s of zoom in 13.6 s
    assert not slow.runs("zoomed views")
    said = changed(p, slow, "the feature passes ran 3.00 times their prediction")
    assert said == (
        "re-planned (the feature passes ran 3.00 times their prediction): zoomed views dropped"
    )
    assert plan(replan(done, pace={"features": 0.5}), 20.0).runs("zoomed views")


# ------------------------------------------------------------------ fine-tuning and the shares
@pytest.mark.parametrize(
    ("recipe", "n_train", "left", "runs", "said"),
    [
        ("probe", 800, 1000.0, False, ""),
        ("auto", 160, 1000.0, False, "no fine-tuning: 17.1 images per class to fine-tune on"),
        ("auto", 800, 1000.0, True, ""),
        ("auto", 800, None, True, ""),
        ("auto", 800, 100.0, False, "no fine-tuning: 3 epochs would take about 96 s here"),
        ("lp-ft", 160, 1000.0, True, ""),  # asked for: fine-tunes anyway
        ("lp-ft", 800, 10.0, True, ""),
    ],
)
def test_when_fine_tuning_is_planned(
    recipe: str, n_train: int, left: float | None, runs: bool, said: str
) -> None:
    # 8 classes; an epoch estimated at 2 x 0.02 s an image: 32 s over 800 images
    p = plan(m(recipe=recipe, n_train=n_train, classes=8), left)
    assert p.runs("fine-tuning") == runs
    assert p.stage("fine-tuning").reason.startswith(said)


def test_few_images_per_class_count_what_fine_tuning_would_train_on() -> None:
    assert tuning_images(140, 0) == 120 and tuning_images(140, 30) == 140
    # 20 per class, less the held-out fold: too few; with validation images given: enough
    assert not plan(m(n_train=200, classes=10), 1000.0).runs("fine-tuning")
    assert plan(m(n_train=200, n_val=50, classes=10), 1000.0).runs("fine-tuning")


@pytest.mark.parametrize(
    ("epoch", "share"),
    [
        (None, 1 - 12 * 0.04 * 800 / 1000),  # estimated at 2 x 0.02 s: 12 epochs of 32 s
        (0.02, 1 - 12 * 0.02 * 800 / 1000),  # measured at half that
        (0.002, AUTO.probe_share_alone),  # quick: the probe's share when alone, at most
        (0.1, AUTO.probe_share),  # slow: fine-tuning has the other half, at most
    ],
)
def test_the_probe_has_what_fine_tuning_does_not_need(epoch: float | None, share: float) -> None:
    backbones = (Backbone(name="l0", seconds=0.02, epoch=epoch),)
    p = plan(m(n_train=800, classes=8, backbones=backbones), 1000.0)
    assert p.runs("fine-tuning") and p.share == pytest.approx(share)
    per_epoch = (0.04 if epoch is None else epoch) * 800
    assert p.stage("fine-tuning").seconds == pytest.approx(min(12 * per_epoch, 500.0))


def test_without_fine_tuning_the_probe_has_its_share_alone() -> None:
    assert plan(m(recipe="probe"), 100.0).share == AUTO.probe_share_alone
    assert plan(m(n_train=800, classes=8), 100.0).share == AUTO.probe_share_alone


def test_after_the_probe_fine_tuning_may_take_all_the_time_left() -> None:
    probed = m(n_train=800, classes=8, tuned="l0", done={"decoding", "features", "probe fits"})
    assert plan(probed, 100.0).runs("fine-tuning")  # 96 s of 100 left
    p = plan(probed, 90.0)
    assert not p.runs("fine-tuning")
    assert p.stage("fine-tuning").reason.endswith("more than the 90 s left")


def test_measured_speed_decides_and_the_epochs_follow_it() -> None:
    measured = (Backbone(name="l0", seconds=0.02, epoch=0.01),)  # 8 s an epoch
    p = plan(m(n_train=800, classes=8, backbones=measured, tuned="l0"), 1000.0)
    assert p.stage("fine-tuning").inputs["epochs"] == AUTO.max_epochs
    p = plan(replace(m(n_train=800, classes=8, backbones=measured), recipe="full"), 50.0)
    assert [s.name for s in p.stages if s.run] == ["decoding", "fine-tuning", "calibration"]
    assert p.stage("fine-tuning").inputs["epochs"] == 6  # 50 s of 8 s epochs


# ------------------------------------------------------------------ hundreds of cases at once
CASES = list(
    itertools.product(
        ["auto", "probe", "lp-ft"],
        [30, 200, 2000, 20000],
        [1, 3],
        [None, 20.0, 120.0, 300.0, 3600.0],
        [0.0, 0.002],
        [1.0, 2.0],
    )
)


@pytest.mark.parametrize(("recipe", "n", "k", "left", "decode", "pace"), CASES)
def test_every_plan_keeps_its_promises(
    recipe: str, n: int, k: int, left: float | None, decode: float, pace: float
) -> None:
    backbones = lites(*[0.01 * (i + 1) for i in range(k)])
    measured = m(
        recipe=recipe,
        n_train=n,
        classes=10,
        backbones=backbones,
        decode=decode,
        rank=0.05,
        pace={"features": pace},
    )
    p = plan(measured, left)
    assert isinstance(p, Plan) and p.backbones and set(p.backbones) <= {b.name for b in backbones}
    assert 2 * 10 <= p.sample <= n or p.sample == n
    assert AUTO.probe_share <= p.share <= AUTO.probe_share_alone or left is None
    if left is None:
        assert p.sample == n and len(p.backbones) == k and p.mirror
    else:
        probe = [p.stage(s).seconds for s in ("decoding", "features", "probe fits")]
        room = p.room()
        assert room is not None
        # within the probe's room, unless even the smallest plan (two images per class on
        # the quickest backbone) is over it
        assert sum(probe) <= room + 1e-6 or p.sample == 20 or len(p.backbones) == 1
    if recipe == "probe":
        assert not p.runs("fine-tuning")
    if p.runs("zoomed views"):
        assert p.mirror
    if p.runs("top blocks"):  # auto only, instead of fine-tuning everything, within the time
        assert recipe == "auto" and not p.runs("fine-tuning")
        assert left is None or p.stage("top blocks").seconds <= left + 1e-6
        assert 1 <= p.stage("top blocks").inputs["epochs"] <= AUTO.top_max_epochs
    for stage in p.stages:  # what is left out says why, where a rule left it out
        optional = ("ranking", "zoomed views", "top blocks", "fine-tuning")
        assert stage.run or stage.name in optional


def test_refused_measurements() -> None:
    with pytest.raises(ValueError, match="at least one backbone"):
        Measurements(n_train=10, classes=2, backbones=())
    with pytest.raises(ValueError, match="unknown stage 'report'"):
        Measurements(n_train=10, classes=2, backbones=lites(0.1), done=frozenset({"report"}))
    with pytest.raises(KeyError, match="no stage 'report'"):
        plan(m(), None).stage("report")


def test_every_setting_the_code_and_the_docs_name_exists() -> None:
    """A rule described in words names its setting (``AUTO.few_per_class``): the text drifts
    from the code the day the setting goes, unless this fails."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    files = [*(root / "src").rglob("*.py"), *(root / "docs").rglob("*.md"), root / "README.md"]
    named = {
        (path.relative_to(root).as_posix(), name)
        for path in files
        for name in re.findall(r"\bAUTO\.([A-Za-z_]+)", path.read_text())
    }
    assert len(named) > 20  # the rules are written with their settings
    missing = sorted(f"{where}: AUTO.{name}" for where, name in named if not hasattr(AUTO, name))
    assert missing == []


def test_top_blocks_are_planned_where_fine_tuning_everything_does_not_fit() -> None:
    """On few images per class or a slow machine the whole network is not fine-tuned; its top
    blocks are, at as many epochs as fit, from ``AUTO.top_few_per_class`` images per class;
    the probe's share of the time makes room for them."""
    lite = lites(0.02)
    few = plan(m(n_train=200, classes=10, backbones=lite), 300.0)
    assert not few.runs("fine-tuning") and few.runs("top blocks")
    top = few.stage("top blocks")
    assert top.inputs["epochs"] == AUTO.top_max_epochs and top.inputs["backbone"] == "l0"
    cache = 0.02 * 200 * AUTO.probe_views
    epoch = AUTO.top_epoch_cost * 0.02 * tuning_images(200, 0) * AUTO.probe_views
    assert top.seconds == pytest.approx(cache + AUTO.top_max_epochs * epoch)
    assert few.share == pytest.approx(1 - top.seconds / 300.0) or few.share == AUTO.probe_share
    # less time: fewer epochs, then none, said with the seconds they would take
    short = plan(m(n_train=200, classes=10, backbones=lite), 60.0).stage("top blocks")
    assert short.run and AUTO.top_min_epochs <= short.inputs["epochs"] < AUTO.top_max_epochs
    none = plan(m(n_train=200, classes=10, backbones=lite), 20.0).stage("top blocks")
    assert not none.run and "top blocks not tuned" in none.reason and "s here" in none.reason
    # too few images per class, several labels, or another recipe: not planned
    tiny = plan(m(n_train=40, classes=10, backbones=lite), 300.0).stage("top blocks")
    assert not tiny.run and f"fewer than {AUTO.top_few_per_class}" in tiny.reason
    multi = plan(m(n_train=200, classes=10, backbones=lite, multi_label=True), 300.0)
    assert not multi.runs("top blocks")
    val = plan(m(n_train=150, n_val=50, classes=10, backbones=lite), 300.0).stage("top blocks")
    assert not val.run and "val= images are given" in val.reason
    for recipe in ("probe", "lp-ft"):
        assert not plan(m(recipe=recipe, n_train=200, classes=10, backbones=lite), 300.0).runs(
            "top blocks"
        )
    # once tuned, fine-tuning everything does not follow
    done = m(n_train=5000, classes=10, backbones=lite, done=frozenset({"top blocks"}))
    assert not plan(done, 36000.0).runs("fine-tuning")
