"""tlkit.finetune: budgets, recipe choices, argument checks, the result's predictions."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

import tlkit
from tlkit.recipes import keep, parse_budget, probing, select, tuning, views
from tlkit.recipes.candidates import load_candidates
from tlkit.recipes.plan import choose_size, plan_candidates, plan_finetune
from tlkit.recipes.result import Recipe, StackedBackbones, build_network


def colours(root: Path, per_class: int = 6) -> Path:
    for name, colour in (("red", (220, 30, 30)), ("blue", (30, 30, 220)), ("green", (30, 200, 30))):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            shade = tuple(max(0, c - 9 * i) for c in colour)
            Image.new("RGB", (24, 24), shade).save(root / name / f"{i}.png")
    return root


def test_budget_strings() -> None:
    assert (
        parse_budget("90s") == 90 and parse_budget("2m30s") == 150 and parse_budget("1.5h") == 5400
    )
    assert parse_budget(" 1h 30m ") == 5400 and parse_budget("45") == 45
    # a number without its unit after another, a sign inside, a unit twice: refused, not guessed
    for bad in ("0s", "-5m", "5q", "", "m", True, "1h30", "1m-30s", "5m5m", "30s1m", "nan"):
        with pytest.raises(ValueError, match="budget must be a positive duration"):
            parse_budget(bad)  # type: ignore[arg-type]


def planned(name: str, n_train: int, remaining: float | None) -> Recipe:
    recipe = Recipe(name="probe", image_size=96)
    plan_finetune(name, recipe, n_train=n_train, n_val=40, classes=4, infer_rate=100.0,  # type: ignore[arg-type]
                  train_rate=20.0, remaining=remaining)  # fmt: skip
    return recipe


def test_auto_fine_tunes_from_20_images_per_class_when_three_epochs_fit() -> None:
    few = planned("auto", 76, 600.0)  # 19 per class
    assert few.finetune_epochs == 0 and "19.0 images per class to fine-tune on" in few.describe()
    short = planned("auto", 400, 60.0)  # an epoch takes 20.4 s: two fit, not three
    assert short.finetune_epochs == 0 and "allow 2 epochs, fewer than 3" in short.describe()
    plenty = planned("auto", 80, 600.0)  # 20 per class, 4.4 s per epoch
    assert plenty.finetune_epochs == 12 and "12 epochs fit the time left" in plenty.describe()
    assert planned("full", 76, 600.0).finetune_epochs == 12  # forced: fine-tunes anyway
    assert planned("full", 400, 10.0).finetune_epochs == 1  # forced, one epoch at least
    assert "1 epoch fits the time left" in planned("full", 400, 10.0).describe()
    assert planned("probe", 400, 600.0).finetune_epochs == 0
    unbounded = planned("auto", 400, None)  # 30,000 images: 75 epochs, at most 12
    assert unbounded.finetune_epochs == 12 and "about 30,000 images" in unbounded.describe()


def test_few_epochs_get_milder_crops() -> None:
    two, many = planned("full", 400, 50.0), planned("full", 400, 600.0)  # 20.4 s per epoch
    assert (two.finetune_epochs, many.finetune_epochs) == (2, 12)
    assert two.crop_scale > many.crop_scale
    assert f"at least {two.crop_scale:.0%} of the image" in two.describe()


def test_the_probe_computes_features_of_the_backbones_that_fit_its_share_of_the_time() -> None:
    seconds = {"a": 10.0, "b": 30.0, "c": 50.0}
    assert plan_candidates(seconds, None) == (["a", "b", "c"], None)  # no budget: all
    assert plan_candidates(seconds, 200.0) == (["a", "b", "c"], None)  # 90 s of 100
    kept, why = plan_candidates(seconds, 100.0)  # 50 s: the costliest first, then what fits
    assert kept == ["c"] and why is not None and "a, b left out" in why
    assert plan_candidates(seconds, 100.0, share=0.8)[0] == ["b", "c"]  # 80 s: c, b, not a
    assert plan_candidates(seconds, 10.0)[0] == ["a"]  # none fits: the cheapest
    ranked = plan_candidates(seconds, 100.0, priority=["a", "b", "c"])[0]  # LogME's order
    assert ranked == ["a", "b"]


def test_small_images_are_upscaled_to_a_multiple_of_8_not_to_the_pretraining_size() -> None:
    assert choose_size(224, 28)[0] == 72  # 2.5 x 28 = 70, rounded up to a multiple of 8
    assert choose_size(224, 8)[0] == 64  # never below 64 px
    assert choose_size(240, 500) == (240, "240 px: the backbone's pretraining size")


def test_several_backbones_are_probed_alone_and_together_and_the_best_is_kept(
    tmp_path: Path,
) -> None:
    root = colours(tmp_path / "data")
    with pytest.raises(ValueError, match="several different ones"):
        tlkit.finetune(root, backbone_name=["resnet18", "resnet18"])
    with pytest.raises(KeyError, match="unknown timm model"):  # before any image is read
        tlkit.finetune(tmp_path / "missing", backbone_name=["resnet18", "timm/nope_net"])
    names = ["resnet18", "mobilenet_v3_small"]
    result = tlkit.finetune(root, backbone_name=names, weights=None, recipe="probe",
                            image_size=32, verbose=False)  # fmt: skip
    reason = next(r for r in result.recipe.reasons if r.startswith("linear probe on"))
    listed = reason.split("(")[1].split(";")[0].split(", ")
    scores = dict(p.rsplit(" ", 1) for p in listed)
    assert set(scores) == {"resnet18", "mobilenet_v3_small", "resnet18+mobilenet_v3_small"}
    kept, together = result.backbone, "resnet18+mobilenet_v3_small"
    assert kept == together or float(scores[kept]) > float(scores[together])
    assert result.val_metrics["accuracy"] == pytest.approx(float(scores[kept]), abs=1e-4)
    assert "cross-validation" in result.val_metrics["method"]
    # where the time went, stage by stage: every second of the call is counted once
    spent = result.recipe.seconds
    assert list(spent) == ["start and speed checks", "choosing backbones", "decoding",
                           "features", "probe fits", "judging and calibration"]  # fmt: skip
    assert all(v >= 0 for v in spent.values()) and sum(spent.values()) <= result.seconds
    assert result.recipe.describe().splitlines()[-1].startswith("  - time: ")


def test_a_stacked_network_saves_loads_and_predicts_the_same(tmp_path: Path) -> None:
    root = colours(tmp_path / "data")
    result = tlkit.finetune(root, backbone_name="resnet18", weights=None, recipe="probe",
                            image_size=32, verbose=False)  # fmt: skip
    torch.manual_seed(0)
    names, sizes = ["resnet18", "mobilenet_v3_small"], [32, 24]
    model, _ = build_network(names, sizes, 3)
    assert isinstance(model, StackedBackbones)
    stacked = dataclasses.replace(result, model=model.eval(), backbone="+".join(names),
                                  backbones=names, sizes=sizes, taps=[])  # fmt: skip
    loaded = tlkit.load_model(stacked.save(tmp_path / "model.pt"))
    assert isinstance(loaded.model, StackedBackbones) and loaded.sizes == sizes
    files = [root / "red" / "0.png", root / "blue" / "1.png"]
    torch.testing.assert_close(loaded.predict(files), stacked.predict(files))


def test_ranking_takes_at_most_a_quarter_of_the_budget_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "data"
    for name, colour in (("red", (220, 30, 30)), ("blue", (30, 30, 220))):
        (root / name).mkdir(parents=True)
        for i in range(60):
            Image.new("RGB", (24, 24), tuple(max(0, c - i) for c in colour)).save(
                root / name / f"{i}.png"
            )
    data = tlkit.ImageDataset.from_folder(root)
    names = ["resnet18", "mobilenet_v3_small"]
    # each architecture "runs" at 10 img/s here: 0.2 s per image for the two, decoding aside
    monkeypatch.setattr(select, "time_batches", lambda *args, **kwargs: 10.0)

    def rank(seconds: float | None) -> tuple[list, str]:
        # a clock that stands still: decoding "takes" no time, whatever this machine's speed
        deadline = None if seconds is None else 1000.0 + seconds
        return select.rank_within_budget(
            names, None, data, 32, 24, 0, deadline, clock=lambda: 1000.0
        )

    everything, why = rank(None)
    assert {r.images for r in everything} == {120} and "fewer" not in why
    # a quarter of 60 s is 15 s: 75 of the 120 images at 0.2 s each, the same sample for both
    fewer, why = rank(60.0)
    assert {r.images for r in fewer} == {75}
    assert "fewer to fit a quarter of the budget" in why
    # a quarter of 32 s cannot score the least sample (50 images, 10 s): the first is taken
    none, why = rank(32.0)
    assert none == [] and why.startswith("backbone resnet18, the first given: ranking 2")


def test_channels_last_training_gives_a_normal_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = colours(tmp_path / "data", 8)
    monkeypatch.setattr(
        tuning, "measure", lambda model, size, batch, compute=None: (50.0, 50.0, True, "forced")
    )
    result = tlkit.finetune(root, backbone_name="resnet18", weights=None, recipe="lp-ft",
                            image_size=32, verbose=False)  # fmt: skip
    assert result.recipe.channels_last and "forced" in result.recipe.describe()
    assert [r["stage"] for r in result.history.records][-1] == "finetune"
    convs = [m for m in result.model.modules() if isinstance(m, torch.nn.Conv2d)]
    # back to the default memory format, as export and users expect
    assert convs and all(c.weight.is_contiguous() for c in convs)
    probs = result.predict([root / "green" / "0.png"])
    assert torch.allclose(probs.sum(1), torch.ones(1))


def test_flip_tta_averages_the_image_and_its_mirror(tmp_path: Path) -> None:
    root = colours(tmp_path / "data")
    result = tlkit.finetune(root, backbone_name="resnet18", weights=None, recipe="probe",
                            image_size=24, verbose=False)  # fmt: skip
    torch.manual_seed(0)  # a network that tells left from right, unlike pooled features
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 24 * 24, 3))
    result = dataclasses.replace(result, model=net, tta=False, geometry="crop", temperature=1.0)
    image = Image.new("RGB", (24, 24), (128, 128, 128))
    image.paste((220, 30, 30), (0, 0, 12, 24))
    mirror = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    plain, flipped = result.predict([image]), result.predict([mirror])
    assert not torch.allclose(plain, flipped, atol=1e-3)  # the test can fail
    assert torch.allclose(result.predict([image], tta=True), (plain + flipped) / 2, atol=1e-6)
    mirrored = dataclasses.replace(result, tta=True)  # a model trained on mirror images too
    assert torch.allclose(mirrored.predict([image]), (plain + flipped) / 2, atol=1e-6)
    assert torch.allclose(mirrored.predict([image], tta=False), plain)


def test_mirror_images_are_left_out_when_left_and_right_tell_the_classes_apart() -> None:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(2).repeat(30)
    signal = torch.nn.functional.one_hot(y, 8).float() * 3

    def probe_of(mirror_signal: torch.Tensor) -> probing.ProbeChoice:
        views = torch.stack([torch.randn(60, 8, generator=g) + signal,
                             torch.randn(60, 8, generator=g) + mirror_signal])  # fmt: skip
        candidate = probing.Candidate("a", torch.nn.Identity(), 8, (0.0,) * 3, (1.0,) * 3,
                                      features=views)  # fmt: skip
        return probing.choose_probe([candidate], y, 2, seed=0, log=lambda message: None)

    swapped = probe_of(signal.flip(1).roll(-6, 1))  # the mirror looks like the other class
    assert not swapped.mirror and swapped.reasons[1].startswith("without mirror images")
    same = probe_of(signal)  # mirror images look like their own class: they help or tie
    assert same.mirror and same.reasons[1].startswith("with mirror images")


def test_probe_fits_that_would_end_past_the_deadline_are_left_out_at_their_pace() -> None:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(2).repeat(30)
    candidates = [
        probing.Candidate(
            name,
            torch.nn.Identity(),
            8,
            (0.0,) * 3,
            (1.0,) * 3,
            features=torch.randn(2, 60, 8, generator=g) + y[:, None],
        )
        for name in ("a", "b")
    ]
    ticks = iter(range(0, 10_000, 10))  # each reading of the clock is 10 s later

    def choose(deadline: float | None) -> probing.ProbeChoice:
        clock = lambda: float(next(ticks))  # noqa: E731
        return probing.choose_probe(
            candidates, y, 2, seed=0, log=lambda m: None, deadline=deadline, clock=clock
        )

    everything = choose(None)
    assert set(everything.scores) == {"a", "b", "a+b"}
    assert any(r.startswith("with mirror images") for r in everything.reasons)
    # "a" takes 10 s (1.25 s per dimension); "b" (10 s) fits the 55 s left, "a+b" (20 s) does
    # not fit the 15 s then left, and the fit without mirror images (5 s) fits the 5 s after it
    ticks = iter(range(0, 10_000, 10))
    short = choose(85.0)
    assert set(short.scores) == {"a", "b"} and short.names in (["a"], ["b"])
    assert (
        "the probe on a+b not fitted: about 20 s at the pace of the fits before it, more than "
        "the 15 s left"
    ) in short.reasons
    assert any(r.startswith(("with mirror images", "without mirror images")) for r in short.reasons)
    ticks = iter(range(0, 10_000, 10))
    shortest = choose(35.0)  # after "a", 5 s left: nothing else fits
    assert set(shortest.scores) == {"a"} and shortest.names == ["a"]
    assert sum("not fitted" in r for r in shortest.reasons) == 3  # b, a+b, without mirror
    assert shortest.mirror  # the default when the check was not made
    # a backbone whose probe was left out is not a candidate for fine-tuning either
    assert probing.best_single(shortest, candidates).name == "a"


def test_bad_arguments_fail_before_any_work(tmp_path: Path) -> None:
    root = colours(tmp_path / "data")
    with pytest.raises(ValueError, match="recipe must be one of"):
        tlkit.finetune(root, recipe="fast")  # type: ignore[arg-type]
    with pytest.raises(KeyError, match="unknown timm model"):
        tlkit.finetune(root, backbone_name="timm/nope_net")
    with pytest.raises(ValueError, match="image_size must be a positive integer"):
        tlkit.finetune(root, image_size=0)
    with pytest.raises(ValueError, match="geometry must be one of pad, crop, got 'fit'"):
        tlkit.finetune(root, geometry="fit")  # type: ignore[arg-type]
    # a folder that does not exist: these fail before any image is looked for
    with pytest.raises(ValueError, match="key_map must be 'strict' or 'by_order', got 'names'"):
        tlkit.finetune(tmp_path / "missing", key_map="names")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="holds the weights of one architecture"):
        tlkit.finetune(tmp_path / "missing", backbone_name=["resnet18", "resnet34"],
                       weights=tmp_path / "resnet18.pt")  # fmt: skip
    (tmp_path / "one" / "only").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "one" / "only" / "a.png")
    with pytest.raises(ValueError, match="at least two classes"):
        tlkit.finetune(tmp_path / "one", backbone_name="resnet18", weights=None)


def test_a_given_validation_set_is_used_and_must_have_the_same_classes(tmp_path: Path) -> None:
    train, val = colours(tmp_path / "train"), colours(tmp_path / "val", 2)
    result = tlkit.finetune(train, val=val, backbone_name="resnet18", weights=None,
                            recipe="probe", image_size=32, verbose=False)  # fmt: skip
    assert result.val_metrics["count"] == 6  # the 2 per class given, not a held-out part
    assert result.val_metrics["accuracy"] == 1.0
    probs = result.predict([val / "green" / "0.png", Image.new("RGB", (50, 50), (220, 30, 30))])
    assert [result.classes[i] for i in probs.argmax(1).tolist()] == ["green", "red"]
    assert torch.allclose(probs.sum(1), torch.ones(2))
    (val / "purple").mkdir()
    Image.new("RGB", (8, 8)).save(val / "purple" / "a.png")
    with pytest.raises(ValueError, match="val has classes"):
        tlkit.finetune(train, val=val, backbone_name="resnet18", weights=None, verbose=False)


@pytest.mark.parametrize("fine_tuned", ["broken", "tie", "better"])
def test_the_fine_tuned_model_is_kept_only_when_clearly_better_than_the_probe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fine_tuned: str
) -> None:
    train, val = colours(tmp_path / "train", 8), colours(tmp_path / "val", 10)

    def fine_tune(model: torch.nn.Module, *args: object, **kwargs: object) -> tlkit.History:
        with torch.no_grad():
            if fine_tuned == "broken":  # every weight zero: one class for every image
                for param in model.parameters():
                    param.zero_()
            # a mark that changes no prediction: the same images right as the probe's
            model.bn1.num_batches_tracked.fill_(777)
        return tlkit.History([{"epoch": 0, "val_accuracy": 1.0}])

    monkeypatch.setattr(tuning, "train_full", fine_tune)
    if fine_tuned == "better":  # the rule's verdict (tested below) decides which model is kept
        monkeypatch.setattr(tuning, "fine_tuning_wins", lambda *a, **k: (True, "fine-tuning won"))
    result = tlkit.finetune(train, val=val, backbone_name="resnet18", weights=None,
                            recipe="lp-ft", image_size=32, verbose=False)  # fmt: skip
    assert result.recipe.probe and result.recipe.finetune_epochs > 0
    norms = [m for m in result.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    tuned_kept = any(int(m.num_batches_tracked) == 777 for m in norms)
    assert tuned_kept is (fine_tuned == "better")  # a tie goes to the probe, the simpler model
    zero = all(not p.any() for p in result.model.parameters())
    assert not zero and result.val_metrics["accuracy"] == 1.0
    assert any("kept the" in r or "fine-tuning won" in r for r in result.recipe.reasons)
    # which model came back is stated, in the plan's first line too
    assert result.recipe.kept == ("fine-tuned" if tuned_kept else "probe")
    assert (
        result.recipe.describe()
        .splitlines()[0]
        .endswith(f"returned the {result.recipe.kept} model")
    )
    loaded = tlkit.load_model(result.save(tmp_path / "model.pt"))  # and it survives saving
    assert loaded.recipe.kept == result.recipe.kept


def test_fine_tuning_must_beat_the_probe_by_more_than_one_standard_error() -> None:
    right = torch.ones(75, dtype=torch.bool)

    def verdict(only_tuned: int, only_probe: int = 0) -> tuple[bool, str]:
        probe, tuned = right.clone(), right.clone()
        probe[:only_tuned] = False
        tuned[only_tuned : only_tuned + only_probe] = False
        return keep.fine_tuning_wins(probe, tuned)

    # one image more: +0.0133 against a standard error of sqrt(1) / 75 = 0.0133
    assert not verdict(1)[0] and "1 s.e. 0.0133" in verdict(1)[1]
    assert verdict(2)[0]  # +0.0267 against sqrt(2) / 75 = 0.0189
    assert not verdict(6, 3)[0]  # +0.0400 against sqrt(9) / 75 = 0.0400: not more than one s.e.
    assert verdict(7, 3)[0]  # +0.0533 against sqrt(10) / 75 = 0.0422
    assert not keep.fine_tuning_wins(right, right)[0]  # identical: the probe
    assert not verdict(0, 20)[0]  # the probe better


def test_the_keep_margin_is_counted_in_standard_errors() -> None:
    right = torch.ones(75, dtype=torch.bool)
    probe, tuned = right.clone(), right.clone()
    probe[:4] = False  # 4 images right only when fine-tuned, 1 only by the probe
    tuned[4] = False  # +0.0400 against sqrt(5) / 75 = 0.0298
    assert keep.fine_tuning_wins(probe, tuned, margin=1.0)[0]
    assert not keep.fine_tuning_wins(probe, tuned, margin=1.5)[0]  # 0.0447 needed
    kept, why = keep.fine_tuning_wins(right, right, margin=0.0)
    assert not kept and "0 s.e." in why  # a tie still goes to the probe
    probe_only, tuned_only = right.clone(), right.clone()
    probe_only[0], tuned_only[1] = False, False  # one image each gets right alone
    why = keep.fine_tuning_wins(probe_only, tuned_only)[1]
    assert "1 image right only when fine-tuned, 1 only by the probe" in why


def test_letterboxing_keeps_the_whole_image_and_the_model_remembers_it(tmp_path: Path) -> None:
    from tlkit.recipes.images import square

    wide = Image.new("RGB", (60, 20), (30, 30, 220))
    wide.paste((220, 30, 30), (0, 0, 6, 20))  # a red end that a centre crop cuts off
    padded, cropped = square(wide, 20, "pad", (255, 255, 255)), square(wide, 20, "crop")
    assert padded[0].max() > 200 and padded[1, 0, 10] == 255  # red kept, white band above
    assert not bool(((cropped[0] > 200) & (cropped[1] < 60)).any())  # no red left
    root = colours(tmp_path / "data")
    result = tlkit.finetune(root, backbone_name="resnet18", weights=None, recipe="probe",
                            image_size=32, geometry="crop", verbose=False)  # fmt: skip
    loaded = tlkit.load_model(result.save(tmp_path / "model.pt"))
    assert (result.geometry, loaded.geometry, loaded.tta) == ("crop", "crop", True)
    torch.testing.assert_close(loaded.preprocess([wide]), result.preprocess([wide]))


def test_the_default_backbones_are_the_lites_whose_weights_are_at_hand(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tlkit.recipes import inputs

    monkeypatch.setattr(inputs, "weights_at_hand", lambda name: not name.endswith("lite1"))
    lite = "timm/tf_efficientnet_lite"
    assert inputs.default_backbones() == [f"{lite}0", f"{lite}2"]
    monkeypatch.setattr(inputs, "weights_at_hand", lambda name: False)
    assert inputs.default_backbones() == [f"{lite}0"]  # downloaded when first used
    names, _ = inputs.check_arguments(None, None, "strict", None, "auto", None, "pad")
    assert names == [f"{lite}0"]  # random weights: one architecture


def test_load_model_refuses_nan_weights_and_an_edited_description(tmp_path: Path) -> None:
    root = colours(tmp_path / "data")
    result = tlkit.finetune(root, backbone_name="resnet18", weights=None, recipe="probe",
                            image_size=32, verbose=False)  # fmt: skip
    path = result.save(tmp_path / "model.pt")
    good = torch.load(path, weights_only=True)
    edits = {
        "nan.pt": ({"state_dict": {k: v.float() * float("nan") if v.is_floating_point() else v
                                   for k, v in good["state_dict"].items()}},
                   "NaN or infinite weights in"),
        "classes.pt": ({"classes": ["red", "red", "blue"]}, "classes must be distinct names"),
        "size.pt": ({"image_size": 100000}, "image_size must be 8 to 4096 pixels, got 100000"),
        "mean.pt": ({"mean": [0.5, 0.5]}, "mean must be 3 numbers"),
        "more-classes.pt": ({"classes": ["a", "b", "c", "d"]}, "does not hold weights"),
    }  # fmt: skip
    for name, (change, message) in edits.items():
        torch.save({**good, **change}, tmp_path / name)
        with pytest.raises(ValueError, match=message):
            tlkit.load_model(tmp_path / name)
    broken = {k: v for k, v in good.items() if k != "std"}
    torch.save(broken, tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="it lacks std"):
        tlkit.load_model(tmp_path / "missing.pt")
    assert tlkit.load_model(path).classes == result.classes  # the untouched file still loads


def test_the_probe_gets_the_larger_share_when_fine_tuning_could_not_follow() -> None:
    from tlkit.recipes.probing import Candidate
    from tlkit.recipes.run import probe_alone

    class Folder:  # 8 classes of 100 images: enough per class to fine-tune
        classes = tuple(str(i) for i in range(8))

        def __len__(self) -> int:
            return 800

    # a 100 s feature pass (two views): one fine-tuning epoch estimated at 100 s here
    quick = [Candidate("a", torch.nn.Identity(), 32, (0.0,), (1.0,), seconds=100.0)]
    assert not probe_alone(quick, "auto", Folder(), 1000.0)  # 3 epochs fit half of 1000 s
    assert probe_alone(quick, "auto", Folder(), 500.0)  # ... not half of 500 s
    assert not probe_alone(quick, "auto", Folder(), None)  # no budget: fine-tuning may follow
    assert probe_alone(quick, "probe", Folder(), None)


def test_metrics_json_is_strict_json_where_a_metric_is_undefined(tmp_path: Path) -> None:
    import json

    from tlkit.report import write_report

    root = colours(tmp_path / "data")
    result = tlkit.finetune(root, backbone_name="resnet18", weights=None, recipe="probe",
                            image_size=32, verbose=False)  # fmt: skip
    result.val_metrics["loss"] = float("nan")  # e.g. a loss undefined on no images

    def refuse(constant: str) -> None:
        raise AssertionError(f"bare {constant} in metrics.json")

    write_report(result, tmp_path / "run")
    text = (tmp_path / "run" / "metrics.json").read_text()
    metrics = json.loads(text, parse_constant=refuse)
    assert metrics["loss"] is None and metrics["accuracy"] == result.val_metrics["accuracy"]


def test_auto_spends_nothing_on_fine_tuning_when_three_epochs_clearly_cannot_fit() -> None:
    import time

    from torch import nn

    # a feature pass of 100 s over both views: an epoch is estimated at 2 x 50 s
    best = probing.Candidate("net", nn.Identity(), 32, (0.0,) * 3, (1.0,) * 3, seconds=100.0)
    plan = Recipe(name="probe", image_size=32)
    now = time.perf_counter()
    assert not tuning.too_late(best, now + 1000.0, plan) and plan.reasons == []
    assert not tuning.too_late(best, None, plan)
    assert tuning.too_late(best, now + 200.0, plan)
    assert "no fine-tuning: 3 epochs would take about 300 s here" in plan.describe()


def timed_probe(
    root: Path,
    monkeypatch: pytest.MonkeyPatch,
    slowdown: float,
    deadline: float | None,
    mirror: bool = True,
) -> tuple[probing.ProbeStage, list[probing.Candidate], float]:
    """The probe stage of two backbones on the colour folder, each feature pass (of two views;
    of one, half as long, without ``mirror`` images) taking ``slowdown`` times the speed
    check's 10 s on an injected clock; the stage, the candidates and the clock's time at the
    end."""
    from tlkit.recipes.store import Decoded

    data = tlkit.ImageDataset.from_folder(colours(root))
    sets = Decoded.read(data, None, 32, "pad")
    n = len(data)
    candidates = load_candidates(["resnet18", "mobilenet_v3_small"], None, "strict", 32, 3, n,
                                 rate=lambda model, size: 2 * n / 10)  # fmt: skip
    for candidate in candidates:
        candidate.mirror = mirror
    now = [0.0]
    computed = views.features

    def timed(candidate: probing.Candidate, *args: object, **kwargs: object) -> torch.Tensor:
        given = kwargs.get("views", views.PREDICTED)
        assert isinstance(given, tuple)  # each pass takes `slowdown` times its estimate
        now[0] += candidate.seconds * len(given) / len(views.PREDICTED) * slowdown
        return computed(candidate, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(views, "features", timed)
    stage = probing.run_probe(candidates, sets, 3, 0, lambda m: None, deadline=deadline,
                              share=0.85, clock=lambda: now[0])  # fmt: skip
    return stage, candidates, now[0]


@pytest.mark.parametrize("slowdown", [1.0, 3.0])
def test_a_backbone_whose_features_no_longer_fit_at_the_measured_pace_is_left_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slowdown: float
) -> None:
    stage, candidates, _ = timed_probe(tmp_path / "data", monkeypatch, slowdown, 40.0)
    assert [c.seconds for c in candidates] == [10.0, 10.0]  # the speed check's estimates
    # 34 s for the features: two passes of 10 s fit; at 3 times the pace the second does not
    if slowdown == 1.0:
        assert set(stage.choice.scores) == {"resnet18", "mobilenet_v3_small",
                                            "resnet18+mobilenet_v3_small"}  # fmt: skip
    else:
        assert set(stage.choice.scores) == {"resnet18"} and stage.choice.names == ["resnet18"]
        assert (
            "features of mobilenet_v3_small not computed: about 30 s at the pace of the passes "
            "before it (3.0 times the speed check's estimate), more than the 4 s of 85% of the "
            "time left"
        ) in stage.choice.reasons


@pytest.mark.parametrize("order", [None, ["b", "a"]], ids=["as-given", "ranked"])
def test_mirror_images_give_way_when_that_lets_every_image_fit_then_backbones_go(
    tmp_path: Path, order: list[str] | None
) -> None:
    from tlkit.recipes.run import sample_within_budget

    data = tlkit.ImageDataset.from_folder(colours(tmp_path / "data", 10))  # 30 images

    def candidates() -> list[probing.Candidate]:  # each: 1 s per image and its mirror image
        head = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
        return [probing.Candidate(name, copy.deepcopy(head), 32, (0.0,) * 3, (1.0,) * 3,
                                  seconds=30.0) for name in "ab"]  # fmt: skip

    # 85% of 100 s: both backbones' features of every image and its mirror image fit
    plan = Recipe(name="probe", image_size=0)
    sampled, chosen = sample_within_budget(data, 0, candidates(), plan, 0, 100.0, 0.85, 0.0, order)
    assert len(sampled) == 30 and all(c.mirror for c in chosen) and plan.reasons == []
    # 85% of 42 s: with mirror images 17 of the 30 images; without them every image
    sampled, chosen = sample_within_budget(data, 0, candidates(), plan, 0, 42.0, 0.85, 0.0, order)
    assert len(sampled) == 30 and [c.name for c in chosen] == ["a", "b"]
    assert not any(c.mirror for c in chosen) and [c.pass_seconds for c in chosen] == [15.0] * 2
    assert plan.reasons == [
        "no mirror images: with them the probe would see 17 of the 30 training images (a new "
        "image teaches it more than a mirrored copy)"
    ]
    # 85% of 15 s: a sample either way (12 of 30 on one view), so both views, 6 images (fewer
    # than half): a backbone left out; the other fits 12 on both views, 25 on one (a sample)
    plan = Recipe(name="probe", image_size=0)
    sampled, chosen = sample_within_budget(data, 0, candidates(), plan, 0, 15.0, 0.85, 0.0, order)
    dropped = "b" if order is None else "a"
    assert len(sampled) == 12 and [c.name for c in chosen] == ["ab".replace(dropped, "")]
    assert plan.reasons[0].startswith(
        f"{dropped} left out: with it the probe would see 6 of the 30 training images, fewer "
        "than 50%"
    )
    assert "a stratified sample of 12 of the 30 training images" in plan.reasons[1]
    assert len(plan.reasons) == 2 and chosen[0].mirror  # sampled: both views, as paced
    assert chosen[0].seconds == pytest.approx(12.0)  # rescaled to the sample


def test_without_mirror_images_the_probe_computes_trains_and_predicts_one_view(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stage, candidates, now = timed_probe(tmp_path / "data", monkeypatch, 1.0, None, mirror=False)
    assert [c.features.shape[0] for c in candidates if c.features is not None] == [1, 1]
    assert now == 10.0  # two passes over one view: half the 10 s estimates each
    assert not stage.choice.mirror and not stage.choice.zoom  # zoomed views after mirror ones
    assert not any("mirror" in r or "zoomed" in r for r in stage.choice.reasons)
    chosen = [c for c in candidates if c.name in stage.choice.names]
    x = probing._matrix(chosen, slice(0, None), views=1, taps=stage.choice.taps)
    probe = stage.choice.probe
    again = tlkit.LinearProbe(C=probe.C_, class_weight=probe.class_weight)
    again.fit(x, stage.choice.probe.cv_probs_.argmax(1) * 0 + torch.tensor(
        tlkit.ImageDataset.from_folder(tmp_path / "data").targets), cv=False)  # fmt: skip
    assert torch.allclose(again.weight_, probe.weight_)  # trained on the one view computed


@pytest.mark.parametrize(("deadline", "zoomed"), [(None, True), (1000.0, True), (40.0, False)])
def test_zoomed_views_are_computed_only_with_time_left_after_every_backbone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, deadline: float | None, zoomed: bool
) -> None:
    stage, candidates, now = timed_probe(tmp_path / "data", monkeypatch, 1.0, deadline)
    # 20 s for both backbones' passes, 20 s more for their zoomed views: not in 85% of 40 s
    assert [c.features.shape[0] for c in candidates if c.features is not None] == (
        [4, 4] if zoomed else [2, 2]
    )
    assert now == (40.0 if zoomed else 20.0)
    said = [r for r in stage.choice.reasons if "zoomed copies" in r]
    assert len(said) == (1 if zoomed else 0)
    assert stage.choice.zoom == (zoomed and said[0].startswith("with"))


def test_auto_refuses_fine_tuning_on_few_images_per_class_before_any_speed_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def timed(*args: object, **kwargs: object) -> None:
        raise AssertionError("the fine-tuning speed check ran")

    monkeypatch.setattr(tuning, "measure", timed)
    result = tlkit.finetune(colours(tmp_path / "data"), backbone_name="resnet18", weights=None,
                            recipe="auto", image_size=32, verbose=False)  # fmt: skip
    assert result.recipe.kept == "probe" and result.recipe.finetune_epochs == 0
    assert "images per class to fine-tune on" in result.recipe.describe()
