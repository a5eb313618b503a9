"""Your images in, a classifier out: [tlkit.finetune][] picks and runs a transfer recipe.

Built only from tlkit's public pieces: [tlkit.backbone][], [tlkit.FreezePolicy][],
[tlkit.replace_head][], [tlkit.split][], [tlkit.augment.BatchAugment][],
[tlkit.extract_features][], [tlkit.discriminative_param_groups][] and [tlkit.Trainer][].

Three recipes:

- ``"probe"``: one pass of the frozen pretrained body over the images, then a linear head
  trained on the cached features. Seconds of training; the right choice for a handful of
  images per class, or when the budget does not allow a pass of back-propagation.
- ``"lp-ft"``: the probe, then the whole network fine-tuned from it at small, layer-wise
  decaying learning rates (Kumar et al., "Fine-Tuning can Distort Pretrained Features and
  Underperform Out-of-Distribution", ICLR 2022: a trained head keeps fine-tuning from
  destroying the features).
- ``"full"``: the whole network fine-tuned from a new head, with layer-wise learning rates.

``recipe="auto"`` measures this machine's speed for the backbone, then chooses the recipe, the
resolution, the memory format and the epochs from the images per class and the budget, and
says why: the probe for fewer than 20 images per class (or no time for a fine-tuning epoch);
``"full"`` with the probe run first below 60 training images per class, where the fine-tuned
model is kept only if it is more accurate on the validation images by more than one standard
error (the one-standard-error rule: the probe is the simpler and steadier model); ``"full"``
with the whole budget from 60 per class up, where fine-tuning beat the probe in 17 of 18 paired
runs of ``benchmarks/backbone_ranking.py`` (by 2.6 points on average). On Fashion-MNIST,
fine-tuning from a new head beat fine-tuning from the probe's head at equal time
(``benchmarks/auto_recipe.py``): the probe's head fits features computed with BatchNorm frozen
at ImageNet statistics, which fine-tuning changes.

The package, one concept per module: [tlkit.recipes.settings][] (every number of the recipe),
[tlkit.recipes.result][] (the result, its save format and its one head builder, importing nothing
of training), [tlkit.recipes.images][], [tlkit.recipes.store][] (the decoded images, in memory
or on disk), [tlkit.recipes.compute][] (the device and its precision),
[tlkit.recipes.measure][], [tlkit.recipes.plan][],
[tlkit.recipes.stages][], [tlkit.recipes.keep][], [tlkit.recipes.select][],
[tlkit.recipes.budget][], and [tlkit.recipes.run][], where [tlkit.finetune][] composes them.
"""

from .budget import parse_budget
from .result import FinetuneResult, Recipe, load_model
from .run import finetune

__all__ = ["FinetuneResult", "Recipe", "finetune", "load_model", "parse_budget"]
