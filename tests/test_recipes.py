"""tlkit.finetune: budgets, recipe choices, argument checks, the result's predictions."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from PIL import Image

import tlkit
from tlkit.recipes import keep, parse_budget, run, select
from tlkit.recipes.plan import choose_size, make_plan


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
    for bad in ("0s", "-5m", "5q", "", "m", True):
        with pytest.raises(ValueError, match="budget must be a positive duration"):
            parse_budget(bad)  # type: ignore[arg-type]


def test_the_recipe_follows_images_per_class_and_the_budget() -> None:
    common = dict(n_val=40, classes=4, size=96, size_reason="96 px", infer_rate=100.0,
                  train_rate=20.0)  # fmt: skip
    few = make_plan("auto", n_train=20, remaining=600.0, **common)  # 5 per class
    assert few.name == "probe" and "fewer than 20 images per class" in few.describe()
    short = make_plan("auto", n_train=400, remaining=10.0, **common)  # an epoch takes 20 s
    assert short.name == "probe" and "budget does not allow" in short.describe()
    plenty = make_plan("auto", n_train=200, remaining=600.0, **common)  # 50 per class: probe first
    assert plenty.name == "full" and 1 <= plenty.finetune_epochs <= 12
    assert plenty.probe_epochs > 0
    assert "kept unless fine-tuning is more accurate" in plenty.describe()
    # just under the threshold: the count is not rounded up to it, and the probe still comes first
    under = make_plan("auto", n_train=238, remaining=600.0, **common)  # 59.5 per class
    assert under.probe_epochs > 0 and "59.5 training images per class" in under.describe()
    assert "(59.5 training images per class, below 60)" in under.describe()
    many = make_plan("auto", n_train=240, remaining=600.0, **common)  # 60 per class: no probe
    assert many.name == "full" and many.probe_epochs == 0 and "no probe first" in many.describe()
    # no feature pass for a probe (3 s of 50): 4 epochs of 12 s fit instead of 3
    with_probe = make_plan("auto", n_train=236, remaining=50.0, **common)
    without = make_plan("auto", n_train=240, remaining=50.0, **common)
    assert (with_probe.finetune_epochs, without.finetune_epochs) == (3, 4)
    one = make_plan("auto", n_train=240, remaining=20.0, **common).describe()  # 12.4 s per epoch
    assert "96 px, 1 fine-tuning epoch\n" in one and "1 epoch fits the budget" in one
    assert make_plan("full", n_train=400, remaining=600.0, **common).probe_epochs == 0  # forced
    assert make_plan("full", n_train=400, remaining=None, **common).finetune_epochs >= 2


def test_few_epochs_get_milder_crops_and_the_memory_format_is_explained() -> None:
    common = dict(n_val=40, classes=4, size=96, size_reason="96 px", infer_rate=100.0,
                  train_rate=20.0)  # fmt: skip
    two = make_plan("full", n_train=400, remaining=50.0, **common)  # 20 s per epoch
    many = make_plan("full", n_train=400, remaining=600.0, **common)
    assert (two.finetune_epochs, many.finetune_epochs) == (2, 12)
    assert two.crop_scale > many.crop_scale
    assert f"at least {two.crop_scale:.0%} of the image" in two.describe()
    fast = make_plan("full", n_train=400, remaining=None, channels_last=True,
                 layout_reason="channels-last memory format: 1.8x", **common)  # fmt: skip
    assert fast.channels_last and "channels-last memory format: 1.8x" in fast.describe()


def test_small_images_are_upscaled_to_a_multiple_of_8_not_to_the_pretraining_size() -> None:
    assert choose_size(224, 28)[0] == 72  # 2.5 x 28 = 70, rounded up to a multiple of 8
    assert choose_size(224, 8)[0] == 64  # never below 64 px
    assert choose_size(240, 500) == (240, "240 px: the backbone's pretraining size")


def test_several_backbones_are_ranked_and_only_the_best_is_trained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = colours(tmp_path / "data")
    with pytest.raises(ValueError, match="several different ones"):
        tlkit.finetune(root, backbone_name=["resnet18", "resnet18"])
    with pytest.raises(KeyError, match="unknown timm model"):  # before any image is read
        tlkit.finetune(tmp_path / "missing", backbone_name=["resnet18", "timm/nope_net"])
    built = []
    real_backbone = run.backbone

    def counted(name: str, *args: object, **kwargs: object) -> object:
        built.append(name)
        return real_backbone(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(run, "backbone", counted)
    result = tlkit.finetune(root, backbone_name=["resnet18", "mobilenet_v3_small"], weights=None,
                            recipe="probe", image_size=32, verbose=False)  # fmt: skip
    reason = result.recipe.reasons[0]
    assert reason.startswith(f"backbone {result.backbone}: best LogME score of 2 candidates")
    scores = dict(part.rsplit(" ", 1) for part in reason.split("(")[1].rstrip(")").split(", "))
    assert result.backbone == max(scores, key=lambda name: float(scores[name]))
    assert built == [result.backbone]  # rank_backbones loads the candidates; one is trained


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
        deadline = None if seconds is None else time.perf_counter() + seconds
        return select.rank_within_budget(names, None, data, 32, 24, 0, deadline)

    everything, why = rank(None)
    assert {r.images for r in everything} == {120} and "fewer" not in why
    # a quarter of 60 s is 15 s: about 75 of the 120 images, the same sample for both
    fewer, why = rank(60.0)
    assert len({r.images for r in fewer}) == 1 and 60 <= fewer[0].images <= 75
    assert "fewer to fit a quarter of the budget" in why
    # a quarter of 32 s cannot score the least sample (50 images, 10 s): the first is taken
    none, why = rank(32.0)
    assert none == [] and why.startswith("backbone resnet18, the first given: ranking 2")
    monkeypatch.undo()  # real speeds: a 1 s budget is spent before training
    result = tlkit.finetune(root, backbone_name=names, weights=None, budget=1, image_size=32,
                            recipe="probe", verbose=False)  # fmt: skip
    assert result.backbone == "resnet18" and "the first given" in result.recipe.reasons[0]
    assert any("the budget is spent" in reason for reason in result.recipe.reasons)


def test_channels_last_training_gives_a_normal_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = colours(tmp_path / "data", 8)
    monkeypatch.setattr(run, "measure", lambda model, size, batch: (50.0, 50.0, True, "forced"))
    result = tlkit.finetune(root, backbone_name="resnet18", weights=None, recipe="lp-ft",
                            image_size=32, verbose=False)  # fmt: skip
    assert result.recipe.channels_last and "forced" in result.recipe.describe()
    assert [r["stage"] for r in result.history.records][-1] == "finetune"
    weight = result.model.conv1.weight
    assert weight.is_contiguous()  # back to the default format, as export and users expect
    probs = result.predict([root / "green" / "0.png"])
    assert torch.allclose(probs.sum(1), torch.ones(1))


def test_flip_tta_averages_the_image_and_its_mirror(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for name, colour in (("left", (220, 30, 30)), ("right", (30, 30, 220))):
        (root / name).mkdir(parents=True)
        for i in range(6):  # half the image coloured: a mirror image changes the class
            image = Image.new("RGB", (24, 24), (128, 128, 128))
            image.paste(colour, (0, 0, 12, 24) if name == "left" else (12, 0, 24, 24))
            image.save(root / name / f"{i}.png")
    result = tlkit.finetune(root, backbone_name="resnet18", weights=None, recipe="probe",
                            image_size=24, verbose=False)  # fmt: skip
    image = Image.open(root / "left" / "0.png")
    mirror = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    plain, flipped = result.predict([image]), result.predict([mirror])
    assert not torch.allclose(plain, flipped, atol=1e-3)  # the test can fail
    assert torch.allclose(result.predict([image], tta=True), (plain + flipped) / 2, atol=1e-6)


def test_bad_arguments_fail_before_any_work(tmp_path: Path) -> None:
    root = colours(tmp_path / "data")
    with pytest.raises(ValueError, match="recipe must be one of"):
        tlkit.finetune(root, recipe="fast")  # type: ignore[arg-type]
    with pytest.raises(KeyError, match="unknown timm model"):
        tlkit.finetune(root, backbone_name="timm/nope_net")
    with pytest.raises(ValueError, match="image_size must be a positive integer"):
        tlkit.finetune(root, image_size=0)
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
    probs = result.predict([val / "green" / "0.png", Image.new("RGB", (50, 20), (220, 30, 30))])
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

    monkeypatch.setattr(run, "train_full", fine_tune)
    if fine_tuned == "better":  # the rule's verdict (tested below) decides which model is kept
        monkeypatch.setattr(run, "fine_tuning_wins", lambda *a: (True, "fine-tuning won"))
    result = tlkit.finetune(train, val=val, backbone_name="resnet18", weights=None,
                            recipe="lp-ft", image_size=32, verbose=False)  # fmt: skip
    assert max(r["val_accuracy"] for r in result.history.records if r["stage"] == "probe") == 1.0
    tuned_kept = int(result.model.bn1.num_batches_tracked) == 777
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
