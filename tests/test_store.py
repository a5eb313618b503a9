"""The decoded images of tlkit.finetune: in memory or in a file on disk, read back the same,
with the disk's space checked first; and the device the user asks for."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from PIL import Image

import tlkit
from tlkit import cli
from tlkit.recipes import store as store_module
from tlkit.recipes.store import Decoded, ImageStore, store_loader


def random_images(count: int, size: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8, generator=generator)


@pytest.mark.parametrize("on_disk", [False, True])
def test_a_store_reads_back_what_was_written_in_any_order(tmp_path: Path, on_disk: bool) -> None:
    images = random_images(10, 6)
    store = ImageStore.empty(10, 6, tmp_path if on_disk else None)
    store.write(0, images[:4])
    store.write(4, images[4:])
    assert store.on_disk == on_disk and len(store) == 10
    order = torch.tensor([9, 2, 3, 4, 0, 0, 7])  # runs, repeats and jumps
    assert torch.equal(store.read(order), images[order])
    view = store.subset(torch.tensor([8, 1, 5, 6])).subset([3, 0])  # a view of a view
    assert torch.equal(view.read(), images[[6, 8]]) and torch.equal(view[1], images[8])
    assert torch.equal(torch.cat(list(store.batches(3))), images)
    assert list(tmp_path.iterdir()) == []  # the file is unlinked at once: nothing left behind


def test_a_store_on_disk_refuses_a_cache_the_disk_cannot_hold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module.shutil, "disk_usage",
                        lambda path: type("U", (), {"free": 2_000_000_000})())  # fmt: skip
    with pytest.raises(
        ValueError,
        match=r"50000 images decoded at 224 px need 7.5 GB on disk; "
        r".* has 2.0 GB free: pass cache_dir \(--cache-dir\)",
    ):
        ImageStore.empty(50_000, 224, tmp_path)  # fmt: skip
    assert list(tmp_path.iterdir()) == []
    assert ImageStore.empty(1000, 224, tmp_path).on_disk  # 150 MB fit


def test_a_store_loader_gives_labelled_batches_resized_in_a_seeded_order() -> None:
    images, labels = random_images(10, 8), torch.arange(10)
    store = ImageStore.empty(10, 8)
    store.write(0, images)
    torch.manual_seed(3)
    first = [(x, y) for x, y in store_loader(store, labels, 4, True, size=4)]
    torch.manual_seed(3)
    again = [y for _, y in store_loader(store, labels, 4, True, size=4)]
    assert [len(y) for _, y in first] == [4, 4, 2]
    assert all(torch.equal(a, y) for a, (_, y) in zip(again, first, strict=True))
    assert sorted(torch.cat([y for _, y in first]).tolist()) == list(range(10))
    x, y = first[0]
    assert x.shape == (4, 3, 4, 4) and x.dtype == torch.uint8
    from tlkit.model.images import resize_square

    assert torch.equal(x, resize_square(images[y], 4))  # each image with its own label


def test_a_weighted_store_loader_draws_each_image_by_its_weight() -> None:
    labels = torch.tensor([0] * 90 + [1] * 10)
    store = ImageStore.empty(100, 2)
    store.write(0, random_images(100, 2))
    weights = torch.where(labels == 0, 1 / 90, 1 / 10).double()  # each class as likely
    torch.manual_seed(0)
    drawn = torch.cat([y for _, y in store_loader(store, labels, 50, True, samples=4000,
                                                  weights=weights)])  # fmt: skip
    assert len(drawn) == 4000
    assert 1800 < int((drawn == 1).sum()) < 2200  # 10 images drawn as often as the other 90
    torch.manual_seed(0)
    again = torch.cat([y for _, y in store_loader(store, labels, 50, True, samples=4000,
                                                  weights=weights)])  # fmt: skip
    assert torch.equal(drawn, again)  # seeded from torch's generator, as the plain order is


def photos(root: Path, per_class: int = 8) -> Path:
    for name, colour in (("red", (220, 30, 30)), ("blue", (30, 30, 220)), ("green", (30, 200, 30))):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = Image.new("RGB", (40, 30), tuple(max(0, c - 11 * i) for c in colour))
            image.save(root / name / f"{name}{i}.jpg", quality=90)
    return root


def test_finetune_gives_the_same_model_from_images_on_disk_as_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = photos(tmp_path / "data")
    kwargs = {"backbone_name": "resnet18", "weights": None, "recipe": "lp-ft",
              "image_size": 32, "verbose": False, "device": "cpu"}  # fmt: skip
    in_memory = tlkit.finetune(root, **kwargs)  # type: ignore[arg-type]
    no_memory = dataclasses.replace(store_module.AUTO, memory_cache_bytes=0)
    monkeypatch.setattr(store_module, "AUTO", no_memory)
    cache = tmp_path / "cache"
    cache.mkdir()
    on_disk = tlkit.finetune(root, cache_dir=cache, **kwargs)  # type: ignore[arg-type]
    assert isinstance(on_disk.val_images, ImageStore) and on_disk.val_images.on_disk
    assert isinstance(in_memory.val_images, ImageStore) and not in_memory.val_images.on_disk
    assert on_disk.recipe.kept == in_memory.recipe.kept
    assert on_disk.val_metrics["accuracy"] == in_memory.val_metrics["accuracy"]
    for key, value in in_memory.model.state_dict().items():
        assert torch.equal(value, on_disk.model.state_dict()[key]), key
    assert torch.equal(on_disk.val_probs, in_memory.val_probs)
    assert list(cache.iterdir()) == []  # nothing left in the cache folder
    assert next(on_disk.model.parameters()).device.type == "cpu"
    from tlkit.report import write_report

    write_report(on_disk, tmp_path / "run")  # the report reads its pictures from the file
    assert (tmp_path / "run" / "report.md").is_file()


def test_decoding_reads_each_dataset_into_one_store_training_images_first(tmp_path: Path) -> None:
    train = tlkit.ImageDataset.from_folder(photos(tmp_path / "train", 3))
    val = tlkit.ImageDataset.from_folder(photos(tmp_path / "val", 2))
    sets = Decoded.read(train, val, 16, "pad")
    assert len(sets.images) == 9 and sets.val_images is not None and len(sets.val_images) == 6
    assert torch.equal(sets.everything().read(), torch.cat([sets.images.read(),
                                                            sets.val_images.read()]))  # fmt: skip
    assert sets.labels.tolist() == train.targets


def test_under_torchrun_a_process_decodes_its_own_rows_and_finds_its_part(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tlkit import distributed

    train = tlkit.ImageDataset.from_folder(photos(tmp_path / "train", 3))  # 9 images
    val = tlkit.ImageDataset.from_folder(photos(tmp_path / "val", 2))  # 6 images
    whole = Decoded.read(train, val, 16, "pad")
    every = whole.everything().read()
    monkeypatch.setattr(distributed, "world", lambda: (1, 1, 2))  # rank 1 of 2
    mine = Decoded.read(train, val, 16, "pad")
    assert mine.rows is not None and mine.rows.tolist() == [1, 3, 5, 7, 9, 11, 13]
    assert mine.counts == (9, 6) and len(mine.images) == 4  # training rows 1, 3, 5, 7
    assert torch.equal(mine.everything().read(), every[1::2])
    assert mine.labels.tolist() == [train.targets[i] for i in (1, 3, 5, 7)]
    assert mine.val_labels is not None
    assert mine.val_labels.tolist() == [val.targets[i] for i in (0, 2, 4)]  # rows 9, 11, 13
    held = torch.tensor([6, 1, 2, 7])
    images, labels, where = mine.part(held)
    assert where.tolist() == [1, 3] and labels.tolist() == [train.targets[1], train.targets[7]]
    assert torch.equal(images.read(), every[[1, 7]])
    images, labels, where, total = mine.judging(held)  # with val images: they judge
    assert where.tolist() == [0, 2, 4] and total == 6 and torch.equal(images.read(), every[9::2])


def test_gathered_rows_must_cover_every_row_once() -> None:
    from tlkit import distributed

    values = torch.arange(6.0).view(3, 2)
    assert distributed.gather_rows(values, torch.tensor([2, 0, 1]), 3)[0].tolist() == [2.0, 3.0]
    with pytest.raises(ValueError, match="do not cover each of the 4 rows once"):
        distributed.gather_rows(values, torch.tensor([2, 0, 1]), 4)
    with pytest.raises(ValueError, match="do not cover each of the 3 rows once"):
        distributed.gather_rows(values, torch.tensor([2, 0, 0]), 3)


def test_a_device_this_machine_lacks_is_refused_before_any_image_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    missing = tmp_path / "no-such-folder"  # read after the device is checked: not reached
    with pytest.raises(ValueError, match="device 'cuda': this machine has no CUDA GPU"):
        tlkit.finetune(missing, device="cuda", weights=None, backbone_name="resnet18")
    with pytest.raises(ValueError, match="device must be 'auto', 'cpu', 'cuda', 'cuda:N'"):
        tlkit.finetune(missing, device="tpu", weights=None, backbone_name="resnet18")


def test_fit_with_device_cuda_on_a_machine_without_one_exits_2_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    root = photos(tmp_path / "data", 2)
    code = cli.main(["fit", str(root), "--out", str(tmp_path / "run"), "--device", "cuda:1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "device 'cuda:1': this machine has no CUDA GPU" in err
    assert not (tmp_path / "run").exists()


def test_without_a_budget_every_image_is_read_and_judged(tmp_path: Path) -> None:
    root = photos(tmp_path / "data", 12)  # 36 images
    unbounded = tlkit.finetune(
        root,
        backbone_name="resnet18",
        weights=None,
        recipe="probe",
        image_size=32,
        verbose=False,
        device="cpu",
    )
    assert unbounded.val_metrics["count"] == 36 and "sample" not in unbounded.recipe.describe()
