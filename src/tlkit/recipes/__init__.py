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

``recipe="auto"`` plans before it runs: it measures this machine's speed for each backbone
(and a real pass over a part of the folder), makes a plan ([tlkit.recipes.planner.plan][]: a
pure function of the settings, those measurements and the time left), runs its stages, and
plans the stages still to come again from what each stage measured. Whether it fine-tunes is
decided in one place, the planner: from ``AUTO.few_per_class`` images per class to train on,
when ``AUTO.min_finetune_epochs`` epochs fit the time fine-tuning would have; the fine-tuned
model is then kept only if it is more accurate than the probe on the same held-out images by
more than ``AUTO.keep_margin`` standard errors (the one-standard-error rule: the probe is the
simpler and steadier model). On Fashion-MNIST, fine-tuning from a new head beat fine-tuning
from the probe's head at equal time (``benchmarks/auto_recipe.py``): the probe's head fits
features computed with BatchNorm frozen at ImageNet statistics, which fine-tuning changes.
Where fine-tuning everything does not fit (on a CPU, in minutes), ``auto`` fine-tunes the top
blocks of the probe's best backbone on cached activations instead, from
``AUTO.top_few_per_class`` images per class, and keeps the probe and that network averaged
when the keep rule prefers them to the probe alone on a held-out fold
([tlkit.recipes.top_blocks][]).

The package, one concept per module:

- what is planned: [tlkit.recipes.settings][] (every number of the recipe),
  [tlkit.recipes.plan][] (the plan as data: stages, measurements),
  [tlkit.recipes.planner][] (the rules that make a plan), [tlkit.recipes.budget][] (the one
  owner of the time), [tlkit.recipes.reasons][] (every decision in words);
- what is run: [tlkit.recipes.run][] (where [tlkit.finetune][] composes the rest),
  [tlkit.recipes.executor][] (runs a plan's stages and plans again),
  [tlkit.recipes.inputs][] (the arguments and datasets), [tlkit.recipes.candidates][] (the
  backbones and the speed checks), [tlkit.recipes.measure][] (timing on this machine),
  [tlkit.recipes.ranking][] (LogME's ranking), [tlkit.recipes.views][] (the feature passes),
  [tlkit.recipes.folds][] (what the probe's folds keep together), [tlkit.recipes.probing][]
  (the probe's choice), [tlkit.recipes.finetune_stage][] (the fine-tuning stage) and
  [tlkit.recipes.finetune_loop][] (its loop through the Trainer, at layer-wise rates),
  [tlkit.recipes.top_blocks][] (the top blocks tuned on cached activations, where everything
  does not fit),
  [tlkit.recipes.keep_rule][] (probe or fine-tuned), [tlkit.recipes.scores][] (each image's
  score, the metrics and the temperature);
- what the stages read: [tlkit.recipes.store][] (the decoded images, in memory or on disk) and
  [tlkit.recipes.compute][] (the device and its precision).

What comes out, the trained model with its save format, network and checks, is its own
package below this one, [tlkit.model][], importing nothing of training.
"""

from ..model.result import FinetuneResult, Recipe, load_model
from .budget import parse_budget
from .run import finetune

__all__ = ["FinetuneResult", "Recipe", "finetune", "load_model", "parse_budget"]
