"""The trained classifier, apart from training: what [tlkit.finetune][] returns
([FinetuneResult][tlkit.FinetuneResult], with the [Recipe][tlkit.Recipe] that made it), its
network, its save format, [tlkit.load_model][] and the checks a saved model passes before it
answers.

Nothing here imports the training stack (the Trainer, the recipes, the callbacks): loading a
model and predicting with it, ``tlkit predict``, ``tlkit evaluate`` and the exports run
without it.

- [tlkit.model.result][]: the result, ``model.pt`` and [tlkit.load_model][];
- [tlkit.model.network][]: the network, built the same way when trained and when loaded;
- [tlkit.model.images][]: images to tensors as the model sees them (geometry, normalisation);
- [tlkit.model.checks][]: what a saved model and its options are checked for.
"""

from __future__ import annotations

from .checks import check_confidence
from .network import StackedBackbones, build_head, build_network
from .result import FinetuneResult, Recipe, load_model

__all__ = [
    "FinetuneResult",
    "Recipe",
    "StackedBackbones",
    "build_head",
    "build_network",
    "check_confidence",
    "load_model",
]
