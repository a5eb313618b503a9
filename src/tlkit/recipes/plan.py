"""The plan of [tlkit.finetune][] as data: the stages in order, each with whether it runs, its
predicted seconds, why and on what, and the measurements a plan rests on.

[tlkit.recipes.planner.plan][] makes a [Plan][tlkit.recipes.plan.Plan] from
[Measurements][tlkit.recipes.plan.Measurements] and the time left; the executor
([tlkit.recipes.run][]) runs it, records each stage's measured seconds beside its prediction
([tlkit.recipes.budget.Budget][]), and makes a new plan for the stages still to come from what
they measured ([replan][tlkit.recipes.plan.replan], [changed][tlkit.recipes.plan.changed]).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from .settings import AUTO, Settings

__all__ = [
    "RECIPES",
    "STAGES",
    "Backbone",
    "Measurements",
    "Plan",
    "RecipeName",
    "Stage",
    "changed",
    "replan",
]

RecipeName = Literal["auto", "probe", "lp-ft", "full"]
RECIPES = ("auto", "probe", "lp-ft", "full")
STAGES = (
    "ranking",
    "decoding",
    "features",
    "zoomed views",
    "probe fits",
    "top blocks",
    "fine-tuning",
    "calibration",
)
"""The stages of a plan, in the order they run."""


@dataclass(frozen=True, kw_only=True)
class Backbone:
    """A candidate backbone as measured here.

    Attributes:
        name: Its [tlkit.backbone][] name.
        seconds: Its feature pass over one view of one image, here.
        width: The features the probe reads (intermediate layers' and final).
        dim: The final features alone.
        epoch: Seconds per image of a fine-tuning epoch of it, here, over the images it
            trains on and those it is scored on (``None``: estimated at
            ``AUTO.train_slowdown`` times ``seconds``).
    """

    name: str
    seconds: float
    width: int = 1280
    dim: int = 1280
    epoch: float | None = None

    def epoch_seconds(self, settings: Settings = AUTO) -> float:
        """Seconds per image of a fine-tuning epoch: measured, else estimated."""
        return settings.train_slowdown * self.seconds if self.epoch is None else self.epoch


@dataclass(frozen=True, kw_only=True)
class Measurements:
    """What a plan rests on: the images, the backbones as measured, and what the stages that
    ran measured and decided.

    Attributes:
        recipe: ``"auto"``, ``"probe"``, ``"lp-ft"`` or ``"full"``.
        n_train: Training images.
        n_val: Validation images (0: judged by cross-validation).
        classes: Classes (or labels, with ``multi_label``).
        multi_label: Several labels per image.
        backbones: The candidates, in the order given.
        decode: Seconds to decode one image, all decoding workers together.
        rank: Seconds per image of LogME on every backbone.
        ranked: LogME's order once ranked (best first), else ``None``.
        pace: Measured seconds over predicted ones, by stage name.
        done: The stages that have run: their time is not counted again.
        sample: The training images the probe sees, once decoded.
        kept: The backbones whose features are computed, once that has begun.
        mirror: Whether the mirror images are computed, once that has begun.
        tuned: The backbone fine-tuning trains, once the probe has chosen it.
    """

    recipe: str = "auto"
    n_train: int
    n_val: int = 0
    classes: int
    multi_label: bool = False
    backbones: tuple[Backbone, ...]
    decode: float = 0.0
    rank: float = 0.0
    ranked: tuple[str, ...] | None = None
    pace: Mapping[str, float] = field(default_factory=dict)
    done: frozenset[str] = frozenset()
    sample: int | None = None
    kept: tuple[str, ...] | None = None
    mirror: bool | None = None
    tuned: str | None = None

    def __post_init__(self) -> None:
        if not self.backbones:
            raise ValueError("a plan needs at least one backbone")
        unknown = sorted(set(self.done) - set(STAGES))
        if unknown:
            raise ValueError(f"unknown stage {unknown[0]!r}: the stages are {', '.join(STAGES)}")

    def backbone(self, name: str) -> Backbone:
        return next(b for b in self.backbones if b.name == name)


@dataclass(frozen=True)
class Stage:
    """One stage of a plan: whether it runs, its predicted seconds, why (where it is left out
    or cut down), and what it runs on."""

    name: str
    run: bool
    seconds: float = 0.0
    reason: str = ""
    inputs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    """The stages in order, and the decisions the executor reads.

    Attributes:
        stages: One [Stage][tlkit.recipes.planner.Stage] per name of ``STAGES``, in order.
        backbones: The backbones whose features the probe computes, in the order given.
        order: The order in which backbones are preferred (LogME's once ranked).
        sample: The training images the probe sees.
        mirror: Whether the mirror images' features are computed.
        share: The share of the time left the probe's stages may take.
        left: The seconds left the plan was made for (``None``: no budget).
        reasons: The decisions that are not one stage's, in words.
    """

    stages: tuple[Stage, ...]
    backbones: tuple[str, ...]
    order: tuple[str, ...]
    sample: int
    mirror: bool
    share: float
    left: float | None
    reasons: tuple[str, ...] = ()

    def stage(self, name: str) -> Stage:
        """The stage called ``name``.

        Raises:
            KeyError: For a name that is not one of ``STAGES``.
        """
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(f"no stage {name!r}: the stages are {', '.join(STAGES)}")

    def runs(self, name: str) -> bool:
        """Whether the stage called ``name`` runs."""
        return self.stage(name).run

    def room(self) -> float | None:
        """Seconds the probe's stages may take: ``share`` of the time left."""
        return None if self.left is None else self.share * max(self.left, 0.0)


def replan(m: Measurements, **changes: Any) -> Measurements:
    """``m`` with ``changes``; ``done`` adds stages to those done before, ``pace`` adds to the
    paces measured before.

    Examples:
        >>> lite = Backbone(name="lite0", seconds=0.02)
        >>> m = Measurements(n_train=200, classes=10, backbones=(lite,))
        >>> sorted(replan(m, done={"decoding"}).done), sorted(replan(m, done={"ranking"}).done)
        (['decoding'], ['ranking'])
    """
    done = m.done | frozenset(changes.pop("done", ()))
    pace = {**m.pace, **changes.pop("pace", {})}
    return replace(m, done=done, pace=pace, **changes)


def changed(before: Plan, after: Plan, cause: str, stages: Sequence[str] = STAGES) -> str | None:
    """What a re-plan changed in the stages still to run (``stages``), and why, in words; or
    ``None`` when nothing did.

    Examples:
        >>> from tlkit.recipes.planner import plan
        >>> lite = Backbone(name="lite0", seconds=0.02)
        >>> m = Measurements(n_train=200, classes=10, backbones=(lite,))
        >>> slow = replan(m, pace={"features": 3.0}, done={"decoding", "features"},
        ...               sample=200, kept=("lite0",), mirror=True)
        >>> changed(plan(m, 40.0), plan(slow, 16.0), "features ran 3.0x the speed check")
        're-planned (features ran 3.0x the speed check): zoomed views dropped'
    """
    said = []
    for name in stages:
        old, new = before.stage(name), after.stage(name)
        if old.run and not new.run and name not in ("features", "decoding", "ranking"):
            said.append(f"{name} dropped")
        elif new.run and not old.run:
            said.append(f"{name} added")
        elif new.run and old.inputs.get("epochs") != new.inputs.get("epochs"):
            said.append(f"{name} {old.inputs.get('epochs')} -> {new.inputs.get('epochs')} epochs")
    if not said:
        return None
    return f"re-planned ({cause}): {', '.join(said)}"
