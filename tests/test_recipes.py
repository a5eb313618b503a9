"""tlkit.finetune: budgets, recipe choices, argument checks, the result's predictions."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from torch import nn

import tlkit
from tlkit.model import Recipe, StackedBackbones, build_network
from tlkit.recipes import executor, finetune_loop, keep_rule, parse_budget, probing, ranking
from tlkit.recipes.budget import Budget
from tlkit.recipes.candidates import load_candidates
from tlkit.recipes.executor import Executor
from tlkit.recipes.plan import Backbone, Measurements
from tlkit.recipes.planner import choose_size, plan_finetune
from tlkit.recipes.settings import AUTO
from tlkit.recipes.store import ImageStore


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
    plan_finetune(
        name,  # type: ignore[arg-type]
        recipe,
        n_train=n_train,
        n_val=40,
        infer_rate=100.0,
        train_rate=20.0,
        remaining=remaining,
    )
    return recipe


def test_fine_tuning_runs_as_many_epochs_as_fit_the_time_left() -> None:
    # whether auto fine-tunes at all is the plan's (tests/test_planner.py); then the epochs
    assert planned("full", 80, 600.0).finetune_epochs == 12  # 4.4 s per epoch, at most 12
    tuned = planned("full", 80, 600.0)  # at the recipe's rates, decaying towards the input
    assert (tuned.lr, tuned.layer_decay) == (AUTO.lr, AUTO.layer_decay) != (0.0, 1.0)
    assert f"x{AUTO.layer_decay:g} per stage towards the input" in tuned.describe()
    assert "12 epochs fit the time left" in planned("full", 80, 600.0).describe()
    assert planned("full", 400, 10.0).finetune_epochs == 1  # one epoch at least
    assert "1 epoch fits the time left" in planned("full", 400, 10.0).describe()
    unbounded = planned("auto", 400, None)  # 30,000 images: 75 epochs, at most 12
    assert unbounded.finetune_epochs == 12 and "about 30,000 images" in unbounded.describe()


def test_few_epochs_get_milder_crops() -> None:
    two, many = planned("full", 400, 50.0), planned("full", 400, 600.0)  # 20.4 s per epoch
    assert (two.finetune_epochs, many.finetune_epochs) == (2, 12)
    assert two.crop_scale > many.crop_scale
    assert f"at least {two.crop_scale:.0%} of the image" in two.describe()


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
    spent, predicted = result.recipe.seconds, result.recipe.predicted
    ran = ["decoding", "features", "zoomed views", "probe fits", "calibration"]  # no budget
    assert [s for s in spent if s not in ("speed checks", "other")] == ran
    assert list(predicted) == ran  # each stage's prediction beside what it measured
    assert all(v >= 0 for v in spent.values()) and sum(spent.values()) <= result.seconds
    assert (
        result.recipe.describe()
        .splitlines()[-1]
        .startswith("  - time by stage, predicted / measured: ")
    )


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


def test_logme_ranks_every_backbone_on_the_same_sample_of_the_size_the_plan_gives(
    tmp_path: Path,
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
    sizes = dict.fromkeys(names, 32)
    ranked, why = ranking.rank_sample(names, sizes, None, data, 75, 0, note=", fewer to fit 25%")
    assert {r.images for r in ranked} == {75} and {r.name for r in ranked} == set(names)
    assert ranked[0].score >= ranked[1].score
    assert why.startswith(f"backbone {ranked[0].name}: best LogME score of 2 candidates on 75")
    assert "75 images, fewer to fit 25% (" in why


def test_channels_last_training_gives_a_normal_model() -> None:
    torch.manual_seed(0)
    model = tlkit.backbone("resnet18", weights=None, num_classes=3)[0]
    images = torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8)
    store = ImageStore.empty(12, 32)
    store.write(0, images)
    labels = torch.arange(12) % 3
    recipe = Recipe(name="full", image_size=32, finetune_epochs=1, batch_size=4, lr=1e-3)
    recipe.channels_last = True
    augment = tlkit.augment.BatchAugment(32)
    history = finetune_loop.train_full(
        model, (store, labels, store, labels), augment, recipe, None, print, size=32
    )
    assert len(history) == 1 and history["train_loss"][0] > 0  # it trained, channels-last
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    # back to the default memory format, as export and users expect
    assert convs and all(c.weight.is_contiguous() for c in convs)


def test_the_memory_format_measured_is_the_one_trained_and_said(tmp_path: Path) -> None:
    root = colours(tmp_path / "data", 8)
    result = tlkit.finetune(root, backbone_name="resnet18", weights=None, recipe="lp-ft",
                            image_size=32, verbose=False)  # fmt: skip
    layout = "channels-last" if result.recipe.channels_last else "channels-first"
    assert f"{layout} memory format: " in result.recipe.describe()
    assert [r["stage"] for r in result.history.records][-1] == "finetune"
    convs = [m for m in result.model.modules() if isinstance(m, torch.nn.Conv2d)]
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

    def choose(seconds: float | None) -> probing.ProbeChoice:
        clock = lambda: float(next(ticks))  # noqa: E731
        budget = Budget(seconds, start=0.0, clock=clock)
        return probing.choose_probe(candidates, y, 2, seed=0, log=lambda m: None, budget=budget)

    everything = choose(None)
    assert set(everything.scores) == {"a", "b", "a+b"}
    # what each choice added: the out-of-fold scores' difference, with the model with it first
    added = {g["choice"]: g for g in everything.gains}
    scores = everything.scores
    assert added["backbones together"]["gain"] == pytest.approx(
        scores["a+b"] - max(scores["a"], scores["b"])
    )
    assert added["backbones together"]["kept"] == (everything.names == ["a", "b"])
    assert added["mirror images"]["kept"] == everything.mirror
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


def nearest_mean_head(trainer: tlkit.Trainer, loader: Any) -> None:
    """Set ``trainer.model``'s last linear layer to the nearest class mean of its inputs over
    ``loader``: a head that classifies those images right."""
    last = [m for m in trainer.model.modules() if isinstance(m, nn.Linear)][-1]
    seen: list[torch.Tensor] = []
    hook = last.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    trainer.model.eval()
    labels: list[torch.Tensor] = []
    with torch.no_grad():
        for x, y in loader:
            trainer.model(trainer.inputs(x, train=False))
            labels.append(y)
        hook.remove()
        x, labels = torch.cat(seen), torch.cat(labels)
        means = torch.stack([x[labels == c].mean(0) for c in range(last.out_features)])
        last.weight.copy_(means)
        last.bias.copy_(-0.5 * means.pow(2).sum(1))


@pytest.mark.parametrize("fine_tuned", ["broken", "tie", "better"])
def test_the_fine_tuned_model_is_kept_only_when_clearly_better_than_the_probe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fine_tuned: str
) -> None:
    train, val = colours(tmp_path / "train", 8), colours(tmp_path / "val", 10)
    if fine_tuned == "better":  # validation labels the colours otherwise: the probe is wrong
        for old, new in (("red", "x"), ("blue", "red"), ("green", "blue"), ("x", "green")):
            (val / old).rename(val / new)

    def fine_tune(trainer: tlkit.Trainer, train: Any, val: Any, **kwargs: Any) -> tlkit.History:
        with torch.no_grad():
            if fine_tuned == "broken":  # every weight zero: one class for every image
                for param in trainer.model.parameters():
                    param.zero_()
            if fine_tuned == "better":  # a head fitted on the validation images themselves
                nearest_mean_head(trainer, val)
            # a mark that changes no prediction
            trainer.model.bn1.num_batches_tracked.fill_(777)
        return tlkit.History([{"epoch": 0, "val_accuracy": 1.0}])

    monkeypatch.setattr(tlkit.Trainer, "fit", fine_tune)  # the loop, not a recipe's function
    result = tlkit.finetune(train, val=val, backbone_name="resnet18", weights=None,
                            recipe="lp-ft", image_size=32, verbose=False)  # fmt: skip
    assert result.recipe.probe and result.recipe.finetune_epochs > 0
    norms = [m for m in result.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    tuned_kept = any(int(m.num_batches_tracked) == 777 for m in norms)
    assert tuned_kept is (fine_tuned == "better")  # a tie goes to the probe, the simpler model
    zero = all(not p.any() for p in result.model.parameters())
    assert not zero and result.val_metrics["accuracy"] == 1.0
    assert any("kept the" in r for r in result.recipe.reasons)
    (added,) = [g for g in result.recipe.gains if g["choice"] == "fine-tuning"]
    assert added["kept"] is tuned_kept and added["judged_on"] == "val images"
    assert added["images"] == 30 and (added["gain"] > 0) is (fine_tuned == "better")  # val
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
        return keep_rule.fine_tuning_wins(probe, tuned)

    # one image more: +0.0133 against a standard error of sqrt(1) / 75 = 0.0133
    assert not verdict(1)[0] and "1 s.e. 0.0133" in verdict(1)[1]
    assert verdict(2)[0]  # +0.0267 against sqrt(2) / 75 = 0.0189
    assert not verdict(6, 3)[0]  # +0.0400 against sqrt(9) / 75 = 0.0400: not more than one s.e.
    assert verdict(7, 3)[0]  # +0.0533 against sqrt(10) / 75 = 0.0422
    assert not keep_rule.fine_tuning_wins(right, right)[0]  # identical: the probe
    assert not verdict(0, 20)[0]  # the probe better


def test_the_keep_margin_is_counted_in_standard_errors() -> None:
    right = torch.ones(75, dtype=torch.bool)
    probe, tuned = right.clone(), right.clone()
    probe[:4] = False  # 4 images right only when fine-tuned, 1 only by the probe
    tuned[4] = False  # +0.0400 against sqrt(5) / 75 = 0.0298
    assert keep_rule.fine_tuning_wins(probe, tuned, margin=1.0)[0]
    assert not keep_rule.fine_tuning_wins(probe, tuned, margin=1.5)[0]  # 0.0447 needed
    kept, why = keep_rule.fine_tuning_wins(right, right, margin=0.0)
    assert not kept and "0 s.e." in why  # a tie still goes to the probe
    probe_only, tuned_only = right.clone(), right.clone()
    probe_only[0], tuned_only[1] = False, False  # one image each gets right alone
    why = keep_rule.fine_tuning_wins(probe_only, tuned_only)[1]
    assert "1 image right only when fine-tuned, 1 only by the probe" in why


def test_letterboxing_keeps_the_whole_image_and_the_model_remembers_it(tmp_path: Path) -> None:
    from tlkit.model.images import square

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


def timed_probe(
    root: Path, slowdown: float, seconds: float | None
) -> tuple[probing.ProbeStage, list[probing.Candidate], float, Recipe]:
    """The probe's stages (as the plan of ``recipe="probe"`` with a budget of ``seconds`` runs
    them) for two backbones on the colour folder, on an injected clock: each backbone's speed
    check says 10 s for every image and its mirror image, and each of its forward passes takes
    ``slowdown`` times that on the clock. The stage, the candidates, the clock's time at the end,
    and the recipe with the plan's reasons."""
    data = tlkit.ImageDataset.from_folder(colours(root))
    n, now = len(data), [0.0]
    names = ["resnet18", "mobilenet_v3_small"]
    candidates = load_candidates(
        names, None, "strict", 32, 3, n, rate=lambda model, size: 2 * n / 10
    )
    for candidate in candidates:  # a network that takes its time, on the clock

        def take(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            now[0] += slowdown * 10.0 / (2 * n) * len(args[0])

        candidate.model.register_forward_pre_hook(take)
    measured = Measurements(
        recipe="probe",
        n_train=n,
        classes=3,
        backbones=tuple(
            Backbone(name=c.name, seconds=c.seconds / (2 * n), width=c.width, dim=c.dim)
            for c in candidates
        ),
    )
    budget = Budget(seconds, start=0.0, clock=lambda: now[0])
    recipe = Recipe(name="probe", image_size=0)
    ex = Executor(measured, budget, recipe, lambda message: None)
    sizes = dict.fromkeys(names, 32)
    chosen, data = executor.rank_and_choose(ex, candidates, data, None, sizes, 0, None)
    sets = executor.decode(ex, data, None, 32, "pad", None)
    stage = executor.probe_stages(ex, chosen, sets, 3, 0, None, None)
    return stage, candidates, now[0], recipe


@pytest.mark.parametrize("slowdown", [1.0, 3.0])
def test_a_backbone_whose_features_no_longer_fit_at_the_measured_pace_is_left_out(
    tmp_path: Path, slowdown: float
) -> None:
    stage, _candidates, _, recipe = timed_probe(tmp_path / "data", slowdown, 40.0)
    # 34 s for the probe, less its fits' (about 3 s): two passes of 10 s fit; at 3 times the
    # pace the first takes 30 s, and the second (30 s) does not fit the probe's share of the 9 s
    # left then, less the fits
    if slowdown == 1.0:
        assert set(stage.choice.scores) == {
            "resnet18",
            "mobilenet_v3_small",
            "resnet18+mobilenet_v3_small",
        }
    else:
        assert set(stage.choice.scores) == {"resnet18"} and stage.choice.names == ["resnet18"]
        assert (
            "features of mobilenet_v3_small not computed: about 30 s at the pace of the passes "
            "before it (3.0 times the speed check's estimate), more than the 5 s the probe has "
            "left for them"
        ) in recipe.reasons


def test_without_mirror_images_the_probe_computes_trains_and_predicts_one_view(
    tmp_path: Path,
) -> None:
    # 85% of 18 s less the probe's fits (about 3 s): one view of every image (10 s) fits, both
    # views (20 s) do not
    stage, candidates, now, recipe = timed_probe(tmp_path / "data", 1.0, 18.0)
    assert [c.features.shape[0] for c in candidates if c.features is not None] == [1, 1]
    # two passes over one view, half the 10 s estimates each (and the stacked network built)
    assert now == pytest.approx(10.0, abs=0.5)
    assert not stage.choice.mirror and not stage.choice.zoom  # zoomed views after mirror ones
    assert any(r.startswith("no mirror images: with them the probe") for r in recipe.reasons)
    assert not any("mirror" in r or "zoomed" in r for r in stage.choice.reasons)
    chosen = [c for c in candidates if c.name in stage.choice.names]
    x = probing._matrix(chosen, slice(0, None), views=1, taps=stage.choice.taps)
    probe = stage.choice.probe
    again = tlkit.LinearProbe(C=probe.C_, class_weight=probe.class_weight)
    targets = torch.tensor(tlkit.ImageDataset.from_folder(tmp_path / "data").targets)
    again.fit(x, targets, cv=False)
    assert torch.allclose(again.weight_, probe.weight_)  # trained on the one view computed


@pytest.mark.parametrize(("seconds", "zoomed"), [(None, True), (1000.0, True), (40.0, False)])
def test_zoomed_views_are_computed_only_with_time_left_after_every_backbone(
    tmp_path: Path, seconds: float | None, zoomed: bool
) -> None:
    stage, candidates, now, _recipe = timed_probe(tmp_path / "data", 1.0, seconds)
    # 20 s for both backbones' passes, 20 s more for their zoomed views: not in 85% of 40 s
    assert [c.features.shape[0] for c in candidates if c.features is not None] == (
        [4, 4] if zoomed else [2, 2]
    )
    assert now == pytest.approx(40.0 if zoomed else 20.0, abs=0.5)
    said = [r for r in stage.choice.reasons if "zoomed copies" in r]
    assert len(said) == (1 if zoomed else 0)
    assert stage.choice.zoom == (zoomed and said[0].startswith("with"))


def test_a_folder_too_large_for_the_budget_is_sampled_stratified_and_the_plan_says_so(
    tmp_path: Path,
) -> None:
    data = tlkit.ImageDataset.from_folder(colours(tmp_path / "data", 12))  # 36 images
    candidate = load_candidates(["resnet18"], None, "strict", 32, 3, 36, rate=lambda m, s: 1e6)
    measured = Measurements(
        recipe="probe",
        n_train=36,
        classes=3,
        backbones=(Backbone(name="resnet18", seconds=1e-6, width=512, dim=512),),
        decode=100.0,  # seconds per image
    )
    recipe = Recipe(name="probe", image_size=0)
    ex = Executor(measured, Budget(1000.0, start=0.0, clock=lambda: 0.0), recipe, print)
    _, sampled = executor.rank_and_choose(ex, candidate, data, None, {}, 0, None)
    # 85% of the 1000 s left allow 8 images at 100 s each (and a few ms of features)
    assert len(sampled) == 8 and sorted(set(sampled.targets)) == [0, 1, 2]
    assert any("a stratified sample of 8 of the 36 training images" in r for r in recipe.reasons)


def test_auto_refuses_fine_tuning_on_few_images_per_class_before_any_speed_check(
    tmp_path: Path,
) -> None:
    root = colours(tmp_path / "data")
    result = tlkit.finetune(
        root, backbone_name="resnet18", weights=None, image_size=32, budget=600, verbose=False
    )
    assert result.recipe.kept == "probe" and result.recipe.finetune_epochs == 0
    assert "images per class to fine-tune on" in result.recipe.describe()
    assert "fine-tuning" not in result.recipe.seconds  # neither trained nor timed
    assert not any("memory format" in r for r in result.recipe.reasons)


def test_a_slow_feature_pass_re_plans_the_stages_after_it_and_says_so(tmp_path: Path) -> None:
    # 85% of 100 s: both passes (20 s) and their zoomed views (20 s) are planned; at 2.5 times
    # the pace the passes take 50 s, and the zoomed views (50 s more) no longer fit the 42 s
    _, candidates, _, recipe = timed_probe(tmp_path / "fast", 1.0, 100.0)
    assert [c.features.shape[0] for c in candidates if c.features is not None] == [4, 4]
    assert not any(r.startswith("re-planned") for r in recipe.reasons)
    _, candidates, now, recipe = timed_probe(tmp_path / "slow", 2.5, 100.0)
    assert [c.features.shape[0] for c in candidates if c.features is not None] == [2, 2]
    assert now == pytest.approx(50.0, abs=1.0)
    assert (
        "re-planned (the feature passes ran 2.50 times their prediction): zoomed views dropped"
    ) in recipe.reasons
