"""Image decoding: every PIL mode reaches the model as the picture a person sees."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import tlkit
from tlkit import augment, to_rgb

RED = (220, 20, 20)


def noisy_rgba(alpha: int = 0) -> Image.Image:
    """A red square in the middle, noise under a transparent border."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (8, 8, 4), dtype=np.uint8)
    pixels[..., 3] = alpha
    pixels[2:6, 2:6] = (*RED, 255)
    return Image.fromarray(pixels, "RGBA")


@pytest.mark.parametrize("background", [(255, 255, 255), (0, 0, 0), (10, 200, 30)])
def test_transparency_is_composited_onto_the_background(background) -> None:
    image = noisy_rgba()
    for variant in (image, image.convert("LA"), image.convert("PA")):
        out = np.asarray(to_rgb(variant, background=background))
        inside = out[3, 3]
        assert (out[0, 0] == background).all(), variant.mode
        assert (out[:2].reshape(-1, 3) == background).all(), variant.mode
        assert inside.tolist() != list(background), variant.mode


def test_half_transparent_pixels_blend_and_palette_transparency_is_honoured() -> None:
    half = Image.new("RGBA", (1, 1), (200, 0, 0, 128))
    assert to_rgb(half, background=(0, 0, 0)).getpixel((0, 0)) == (100, 0, 0)
    palette = Image.new("P", (2, 1), 0)
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.putpixel((1, 0), 1)
    palette.info["transparency"] = 0  # index 0 (red) is transparent
    out = to_rgb(palette, background=(0, 255, 0))
    assert out.getpixel((0, 0)) == (0, 255, 0) and out.getpixel((1, 0)) == (0, 0, 255)


def test_sixteen_bit_and_float_images_are_scaled_not_saturated() -> None:
    ramp = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    for mode_image in (Image.fromarray(ramp), Image.fromarray(ramp.astype(np.int32), "I")):
        values = np.asarray(to_rgb(mode_image))[0, :, 0].tolist()
        assert values == [0, 100, 255], mode_image.mode
    floats = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), "F")
    assert np.asarray(to_rgb(floats))[0, :, 0].tolist() == [0, 128, 255]
    with pytest.raises(ValueError, match="outside the 16-bit range"):
        to_rgb(Image.fromarray(np.array([[-5, 3]], dtype=np.int32), "I"))
    with pytest.raises(ValueError, match="NaN"):
        to_rgb(Image.fromarray(np.array([[np.nan, 1]], dtype=np.float32), "F"))


def test_greyscale_cmyk_and_exif_orientation() -> None:
    assert to_rgb(Image.new("L", (2, 2), 77)).getpixel((0, 0)) == (77, 77, 77)
    assert to_rgb(Image.new("1", (2, 2), 1)).getpixel((0, 0)) == (255, 255, 255)
    cmyk = to_rgb(Image.new("CMYK", (1, 1), (0, 255, 255, 0)))
    assert cmyk.getpixel((0, 0)) == (255, 0, 0)
    wide = Image.new("RGB", (4, 2), (0, 0, 0))
    wide.putpixel((0, 0), (255, 255, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    buffer = io.BytesIO()
    wide.save(buffer, "JPEG", exif=exif, quality=100)
    upright = to_rgb(Image.open(buffer))
    assert upright.size == (2, 4)


def test_bad_images_and_backgrounds_are_refused() -> None:
    with pytest.raises(ValueError, match="background must be three ints"):
        to_rgb(Image.new("RGB", (1, 1)), background=(0, 0, 256))
    with pytest.raises(ValueError, match="empty"):
        to_rgb(Image.new("RGB", (0, 0)))
    with pytest.raises(TypeError, match="expected a PIL image"):
        to_rgb(np.zeros((2, 2, 3)))  # type: ignore[arg-type]


def test_to_rgb_transform_refuses_what_would_saturate_and_composites_alpha() -> None:
    convert = augment.ToRGB()
    with pytest.raises(ValueError, match=r"float images must lie in \[0, 1\], got values 0\.\.255"):
        convert(torch.linspace(0, 255, 3 * 4 * 4).reshape(3, 4, 4))
    with pytest.raises(ValueError, match="NaN"):
        convert(torch.full((3, 4, 4), float("nan")))
    with pytest.raises(ValueError, match="empty"):
        convert(torch.zeros(3, 0, 0, dtype=torch.uint8))
    rgba = torch.zeros(4, 2, 2, dtype=torch.uint8)  # black, fully transparent
    assert augment.ToRGB(background=(9, 8, 7))(rgba)[:, 0, 0].tolist() == [9, 8, 7]
    with pytest.raises(ValueError, match="image_size=1000000 is larger than 4096"):
        augment.get("standard", image_size=10**6)


# ---------------------------------------------------------------------------- ImageDataset
def write_folder(root, counts=None, size=(6, 5)):
    counts = counts or {"circle": 3, "square": 2}
    for name, count in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            noisy_rgba().resize(size).save(root / name / f"{i}.png")
    return root


def test_from_folder_classes_targets_and_composited_items(tmp_path) -> None:
    root = write_folder(tmp_path / "data")
    (root / "square" / "nested").mkdir()
    Image.new("LA", (4, 4), (80, 255)).save(root / "square" / "nested" / "grey.png")
    (root / "square" / "notes.txt").write_text("not an image")
    ds = tlkit.ImageDataset.from_folder(root, background=(0, 0, 0))
    assert ds.classes == ["circle", "square"] and ds.targets == [0, 0, 0, 1, 1, 1]
    image, label = ds[0]
    assert image.mode == "RGB" and label == 0
    assert image.getpixel((0, 0)) == (0, 0, 0)  # transparent noise became the background
    assert ds[5][0].getpixel((0, 0)) == (80, 80, 80)
    parts = tlkit.split(ds, (0.5, 0.5), seed=0, stratify=ds.targets)
    assert sorted(len(p) for p in parts) == [3, 3]
    tensor_ds = ds.with_transform(augment.get("none", image_size=4)[1])
    assert tensor_ds[0][0].shape == (3, 4, 4) and ds.transform is None


def test_every_corrupt_file_is_named_at_once_or_skipped(tmp_path) -> None:
    root = write_folder(tmp_path / "data")
    (root / "circle" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    good = (root / "square" / "0.png").read_bytes()
    (root / "square" / "half.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match=r"2 of 7 image files cannot be read") as error:
        tlkit.ImageDataset.from_folder(root)
    assert "broken.png" in str(error.value) and "half.png" in str(error.value)
    ds = tlkit.ImageDataset.from_folder(root, on_error="skip")
    assert len(ds) == 5 and sorted(p.rsplit("/", 1)[1] for p, _ in ds.skipped) == [
        "broken.png",
        "half.png",
    ]


def test_folder_layout_mistakes_name_the_path(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        tlkit.ImageDataset.from_folder(tmp_path / "nope")
    flat = tmp_path / "flat"
    flat.mkdir()
    noisy_rgba().save(flat / "a.png")
    with pytest.raises(ValueError, match=r"no class folders \(it holds images directly: a.png\)"):
        tlkit.ImageDataset.from_folder(flat)
    root = write_folder(tmp_path / "data")
    (root / "empty").mkdir()
    with pytest.raises(ValueError, match=r"hold no image.*empty"):
        tlkit.ImageDataset.from_folder(root)
    with pytest.raises(ValueError, match="on_error must be"):
        tlkit.ImageDataset.from_folder(root, on_error="ignore")  # type: ignore[arg-type]


def test_from_csv_paths_labels_and_mistakes(tmp_path) -> None:
    root = write_folder(tmp_path / "imgs")
    rows = ["path,label", "circle/0.png,10", "circle/1.png,2", "square/0.png,2"]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    ds = tlkit.ImageDataset.from_csv(tmp_path / "labels.csv", root=root)
    assert ds.classes == ["2", "10"] and ds.targets == [1, 0, 0]  # numeric order
    (root / "local.csv").write_text("file,class\ncircle/0.png,a\n")
    assert tlkit.ImageDataset.from_csv(root / "local.csv").classes == ["a"]  # relative to CSV
    (tmp_path / "extra.csv").write_text("path,label,weight\ncircle/0.png,a,1\n")
    with pytest.raises(ValueError, match=r"columns \['path', 'label', 'weight'\]"):
        tlkit.ImageDataset.from_csv(tmp_path / "extra.csv", root=root)
    (tmp_path / "missing.csv").write_text("path,label\ncircle/0.png,a\nnope.png,b\n")
    with pytest.raises(ValueError, match=r"1 file.* do not exist.*nope\.png"):
        tlkit.ImageDataset.from_csv(tmp_path / "missing.csv", root=root)
    skipped = tlkit.ImageDataset.from_csv(tmp_path / "missing.csv", root=root, on_error="skip")
    assert len(skipped) == 1 and skipped.skipped[0][1] == "file does not exist"


def _photo(width: int, height: int) -> Image.Image:
    """A smooth real-looking picture: scikit-image's coffee photo stretched to the size."""
    from skimage import data

    return Image.fromarray(data.coffee()).resize((width, height), Image.Resampling.BICUBIC)


def test_min_side_decodes_a_jpeg_at_reduced_scale_to_the_same_picture(tmp_path) -> None:
    from tlkit.model.images import square

    path = tmp_path / "photo.jpg"
    _photo(3000, 2000).save(path, quality=92)
    whole = tlkit.read_image(path)
    reduced = tlkit.read_image(path, min_side=224)
    assert whole.size == (3000, 2000) and reduced.size == (375, 250)  # 1/8: 250 >= 224
    assert tlkit.read_image(path, min_side=600).size == (1500, 1000)  # 1/2: 1/4 gives 500
    assert tlkit.read_image(path, min_side=5000).size == (3000, 2000)  # never upscaled
    # what the model sees at 224 px barely moves (mean difference well under 1 of 255)
    a, b = square(whole, 224).float(), square(reduced, 224).float()
    assert (a - b).abs().mean() < 1.5
    # EXIF orientation still applies: the photo is turned upright, its short side kept
    exif = Image.Exif()
    exif[0x0112] = 6
    _photo(3000, 2000).save(tmp_path / "turned.jpg", exif=exif)
    assert tlkit.read_image(tmp_path / "turned.jpg", min_side=224).size == (250, 375)
    # other formats are decoded whole
    _photo(1200, 800).save(tmp_path / "photo.png")
    assert tlkit.read_image(tmp_path / "photo.png", min_side=224).size == (1200, 800)
    for bad in (0, -3):
        with pytest.raises(ValueError, match="min_side"):
            tlkit.read_image(path, min_side=bad)


def test_the_recipes_decode_large_jpegs_reduced_and_ranking_at_its_resize_side(tmp_path) -> None:
    from tlkit.ranking import _resize_side
    from tlkit.recipes.store import Decoded

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        _photo(1600, 1200).save(tmp_path / name / "1.jpg", quality=95)
    ds = tlkit.ImageDataset.from_folder(tmp_path)
    assert ds.min_side is None and ds.with_min_side(300).load(0).size == (400, 300)
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="min_side must be a positive integer"):
            ds.with_min_side(bad)  # type: ignore[arg-type]
    decoded = Decoded.read(ds, None, 96, "crop").images.read()
    whole = torch.stack([augment_square(ds.load(i), 96) for i in range(2)])
    assert decoded.shape == (2, 3, 96, 96) and (decoded.float() - whole.float()).abs().mean() < 1.5
    _, evaluation = augment.get("none", image_size=224, mean=(0.5,) * 3, std=(0.5,) * 3,
                                crop_pct=0.875)  # fmt: skip
    assert _resize_side(evaluation) == 256


def augment_square(image: Image.Image, size: int) -> torch.Tensor:
    from tlkit.model.images import square

    return square(image, size)


def test_from_folder_leaves_out_hidden_files_and_folders_and_survives_link_loops(
    tmp_path: Path,
) -> None:
    for name in ("cat", "dog"):
        (tmp_path / name / "sub").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / name / "a.png")
        Image.new("RGB", (8, 8)).save(tmp_path / name / "sub" / "b.png")
    (tmp_path / "cat" / ".thumbs").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "cat" / ".thumbs" / "0.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "cat" / "._a.png")  # macOS resource fork
    (tmp_path / "cat" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (tmp_path / "dog" / "sub" / "loop").symlink_to(tmp_path / "dog", target_is_directory=True)
    data = tlkit.ImageDataset.from_folder(tmp_path)
    names = sorted(str(Path(f).relative_to(tmp_path)) for f in data.files)
    assert names == ["cat/a.png", "cat/sub/b.png", "dog/a.png", "dog/sub/b.png"]


def test_from_csv_keeps_a_repeated_row_once_and_refuses_conflicts_and_blank_labels(
    tmp_path: Path,
) -> None:
    for name in ("a", "b", "c"):
        Image.new("RGB", (8, 8)).save(tmp_path / f"{name}.png")
    csv = tmp_path / "list.csv"
    csv.write_text("path,label\na.png,cat\nb.png,dog\n./a.png,cat\nc.png,dog\n")
    data = tlkit.ImageDataset.from_csv(csv)
    assert sorted(Path(f).name for f in data.files) == ["a.png", "b.png", "c.png"]
    assert data.skipped == [(str(tmp_path / "./a.png"), "listed again on line 4: kept once")]
    csv.write_text("path,label\na.png,cat\nb.png,dog\na.png,dog\n")
    with pytest.raises(ValueError, match="'cat' on line 2 and as 'dog' on line 4"):
        tlkit.ImageDataset.from_csv(csv)
    csv.write_text("path,label\na.png,cat\nb.png,\n")
    with pytest.raises(ValueError, match=r"no path or no label, on line\(s\) 3"):
        tlkit.ImageDataset.from_csv(csv)


def test_a_jpeg_cut_in_half_is_found_when_the_dataset_is_built(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i in range(2):
            photo = Image.effect_noise((300, 200), 50).convert("RGB")
            photo.save(tmp_path / name / f"{i}.jpg", quality=90)
    whole = (tmp_path / "a" / "0.jpg").read_bytes()
    (tmp_path / "a" / "0.jpg").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(
        ValueError, match=r"(?s)1 of 4 image files cannot be read.*0\.jpg.*truncated"
    ):
        tlkit.ImageDataset.from_folder(tmp_path)
    data = tlkit.ImageDataset.from_folder(tmp_path, on_error="skip")
    assert len(data) == 3 and data.skipped[0][0].endswith("0.jpg")
    (tmp_path / "a" / "1.jpg").write_bytes(whole[: len(whole) // 2])  # now all of class a
    with pytest.raises(ValueError, match="every image of class\\(es\\) 'a' is unreadable"):
        tlkit.ImageDataset.from_folder(tmp_path, on_error="skip")


def test_subset_keeps_the_classes_and_refuses_an_index_out_of_range(tmp_path: Path) -> None:
    for i, name in enumerate("aabbb"):
        (tmp_path / name).mkdir(exist_ok=True)
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / name / f"{i}.png")
    data = tlkit.ImageDataset.from_folder(tmp_path)
    part = data.subset([4, 1])
    assert part.classes == ["a", "b"] and part.targets == [1, 0] and len(data) == 5
    assert part.files == [data.files[4], data.files[1]]
    assert part.load(0).getpixel((0, 0)) == data.load(4).getpixel((0, 0))
    with pytest.raises(IndexError, match="subset index 5 is out of range for 5 images"):
        data.subset([0, 5])


def test_a_csv_that_is_not_utf8_is_named_with_the_way_out(tmp_path) -> None:
    (tmp_path / "a.png").write_bytes(b"")
    table = tmp_path / "labels.csv"
    table.write_bytes("path,label\na.png,caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"labels\.csv' is not UTF-8 text .* save it as UTF-8"):
        tlkit.ImageDataset.from_csv(table)


def _images(root: Path, n: int) -> list[str]:
    for i in range(n):
        Image.new("RGB", (6, 6), (i * 20, 0, 0)).save(root / f"{i}.png")
    return [f"{i}.png" for i in range(n)]


def test_multi_label_csvs_in_both_layouts_give_the_same_multi_hot_targets(tmp_path) -> None:
    names = _images(tmp_path, 4)
    tags = ["cat|outdoor", "dog", "", "outdoor|dog|cat"]
    (tmp_path / "tags.csv").write_text(
        "path,tags\n" + "".join(f"{n},{t}\n" for n, t in zip(names, tags, strict=True))
    )
    rows = ["1,0,1", "0,1,0", "0,0,0", "1,1,1"]
    (tmp_path / "onehot.csv").write_text(
        "image,cat,dog,outdoor\n" + "".join(f"{n},{r}\n" for n, r in zip(names, rows, strict=True))
    )
    (tmp_path / "sep.csv").write_text(
        'path,label\n0.png,"cat, outdoor"\n1.png,dog\n2.png,\n3.png,"dog, cat, outdoor"\n'
    )
    a = tlkit.ImageDataset.from_csv(tmp_path / "tags.csv")
    b = tlkit.ImageDataset.from_csv(tmp_path / "onehot.csv")
    c = tlkit.ImageDataset.from_csv(tmp_path / "sep.csv", label_sep=",")
    expected = torch.tensor([[1, 0, 1], [0, 1, 0], [0, 0, 0], [1, 1, 1]], dtype=torch.float32)
    for ds in (a, b, c):
        assert ds.multi_label and ds.classes == ["cat", "dog", "outdoor"]
        assert torch.equal(ds.targets, expected)
    image, target = a[3]
    assert image.size == (6, 6) and torch.equal(target, expected[3])
    part = a.subset([3, 0])
    assert part.multi_label and torch.equal(part.targets, expected[[3, 0]])
    with pytest.raises(ValueError, match="no label"):  # without label_sep: one label each
        tlkit.ImageDataset.from_csv(tmp_path / "sep.csv")


def test_multi_label_csv_mistakes_are_named(tmp_path) -> None:
    names = _images(tmp_path, 3)
    bad = tmp_path / "bad.csv"
    bad.write_text(f"path,cat,dog\n{names[0]},1,0\n{names[1]},yes,0\n")
    with pytest.raises(ValueError, match="must hold 0 or 1; line 3 holds 'yes'"):
        tlkit.ImageDataset.from_csv(bad)
    bad.write_text(f"path,cat,dog\n{names[0]},1,0\n{names[1]},1,0\n")
    with pytest.raises(ValueError, match=r"class column\(s\) 'dog' .* hold no 1"):
        tlkit.ImageDataset.from_csv(bad)
    bad.write_text(f"path,tags\n{names[0]},a|b\n{names[0]},a\n")
    with pytest.raises(ValueError, match=r"as 'a\|b' on line 2 and as 'a' on line 3"):
        tlkit.ImageDataset.from_csv(bad)
    bad.write_text(f"path,tags\n{names[0]},\n{names[1]},\n")
    with pytest.raises(ValueError, match="gives no image a label"):
        tlkit.ImageDataset.from_csv(bad)
    bad.write_text(f"path,label,weight\n{names[0]},a,1\n")
    with pytest.raises(ValueError, match="or one 0/1 column per class"):
        tlkit.ImageDataset.from_csv(bad)
    bad.write_text(f"path,tags\n{names[0]},a|b,extra\n")
    with pytest.raises(ValueError, match="another number of values than its 2 columns, on line"):
        tlkit.ImageDataset.from_csv(bad)
    with pytest.raises(ValueError, match="label_sep must be a non-empty string"):
        tlkit.ImageDataset.from_csv(bad, label_sep="")
    with pytest.raises(ValueError, match=r"multi-label targets must be a \(N, 2\) matrix"):
        tlkit.ImageDataset([tmp_path / names[0]], [[1, 0, 1]], ["a", "b"])


def test_a_label_whose_every_image_is_unreadable_is_refused_in_a_multi_label_set(tmp_path) -> None:
    names = _images(tmp_path, 2)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    files = [tmp_path / names[0], tmp_path / names[1], tmp_path / "broken.png"]
    targets = [[1, 0], [1, 0], [0, 1]]
    with pytest.raises(ValueError, match="every image of class"):
        tlkit.ImageDataset(files, targets, ["a", "b"], on_error="skip")
    kept = tlkit.ImageDataset(files, [[1, 0], [1, 1], [0, 1]], ["a", "b"], on_error="skip")
    assert len(kept) == 2 and kept.skipped[0][0].endswith("broken.png")
