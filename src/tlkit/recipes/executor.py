"""The executor: runs a plan's stages in order, records each stage's measured seconds beside its
prediction, and plans the stages still to come again from what the stages before them
measured ([tlkit.recipes.planner.plan][]).

Where the plan is made again: after LogME's ranking (its order may keep other backbones), after
the feature passes (their pace decides the zoomed views and the probe's fits), after the probe
(the backbone to fine-tune and the time left), and after fine-tuning's own speed check (its
epochs). The plan's text says what a re-plan changed and why.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from .. import distributed
from ..data import ImageDataset
from ..model.images import Geometry
from ..model.result import Recipe
from ..splits import split
from . import reasons
from .budget import Budget
from .compute import Compute
from .plan import Measurements, Plan, changed, replan
from .planner import plan
from .probing import ProbeStage, run_probe
from .ranking import rank_sample
from .store import Decoded
from .views import Candidate, add_zoomed_views, compute_features

__all__ = ["Executor", "decode", "probe_stages", "rank_and_choose"]


class Executor:
    """A plan in progress: the measurements it rests on, the [Budget][tlkit.recipes.budget.Budget]
    that times its stages, and the recipe whose reasons it writes.

    Args:
        measurements: What the speed checks measured.
        budget: The fit's budget (the one clock of the run).
        recipe: The recipe whose ``reasons`` the plan's decisions are written to.
        log: Where progress is printed.
    """

    def __init__(
        self,
        measurements: Measurements,
        budget: Budget,
        recipe: Recipe,
        log: Callable[[str], None],
    ) -> None:
        self.measurements, self.budget, self.recipe, self.log = measurements, budget, recipe, log
        self.plan: Plan = plan(measurements, budget.left())

    def replan(self, cause: str, **changes: Any) -> Plan:
        """Plan again from the measurements with ``changes`` and the time left; say what changed
        in the stages still to come, and why."""
        before = self.plan
        self.measurements = replan(self.measurements, **changes)
        self.plan = plan(self.measurements, self.budget.left())
        said = changed(before, self.plan, cause, self.to_come())
        if said is not None:
            self.say(said)
        return self.plan

    def to_come(self) -> list[str]:
        """The stages that have not run yet."""
        return [s.name for s in self.plan.stages if s.name not in self.measurements.done]

    def say(self, reason: str) -> None:
        """Write ``reason`` into the recipe's reasons (once) and print it."""
        if reason and reason not in self.recipe.reasons:
            self.recipe.reasons.append(reason)
            self.log(reason)

    def begin(self, stage: str) -> bool:
        """Whether the plan runs ``stage``; when it does, its prediction is recorded and the
        clock marked, else its reason (where it has one) is said."""
        current = self.plan.stage(stage)
        self.budget.lap("other")  # the time since the last stage: choices, networks built
        if not current.run:
            self.say(current.reason)
            return False
        self.budget.expect(stage, current.seconds)
        return True

    def finish(self) -> None:
        """Write where the time went into the recipe: each stage's predicted and measured
        seconds, the budget, and by how much it was overrun, if it was."""
        over = self.budget.over()
        if over > 0:
            self.recipe.reasons.append(reasons.over_budget(over))
        self.recipe.seconds, self.recipe.predicted = self.budget.measured, self.budget.predicted
        self.recipe.budget = self.budget.seconds

    def end(self, stage: str, part: tuple[str, float] | None = None) -> float:
        """Count the time since ``begin`` to ``stage``; the stage is done."""
        spent = self.budget.lap(stage, part)
        self.measurements = replan(self.measurements, done={stage})
        return spent


def rank_and_choose(
    ex: Executor,
    candidates: list[Candidate],
    data: ImageDataset,
    weights: str | Path | None,
    sizes: dict[str, int],
    seed: int,
    compute: Compute | None,
) -> tuple[list[Candidate], ImageDataset]:
    """LogME's ranking where the plan runs it; then the candidates the plan keeps (with or
    without their mirror images) and the training images it sees (a stratified sample where
    not all fit)."""
    if ex.begin("ranking"):
        stage = ex.plan.stage("ranking")
        names = [c.name for c in candidates]
        ranking, said = rank_sample(
            names, sizes, weights, data, stage.inputs["images"], seed, compute, stage.inputs["note"]
        )
        ranking, said = distributed.agree((ranking, said))  # under torchrun, rank 0's
        ex.end("ranking")
        ex.say(said)
        ex.replan("ranked by LogME", ranked=tuple(r.name for r in ranking))
    for reason in ex.plan.reasons:
        ex.say(reason)
    chosen = [c for c in candidates if c.name in ex.plan.backbones]
    n_total = len(data) + ex.measurements.n_val
    for candidate in chosen:
        candidate.mirror = ex.plan.mirror
        candidate.seconds *= (ex.plan.sample + ex.measurements.n_val) / n_total
    if ex.plan.sample < len(data):
        with warnings.catch_warnings():  # a label too rare for both parts: the plan says so
            warnings.simplefilter("ignore")
            parts = (ex.plan.sample, len(data) - ex.plan.sample)
            keep = split(len(data), parts, seed=seed, stratify=data.targets)[0]
        data = data.subset(keep.tolist())
    return chosen, data


def decode(
    ex: Executor,
    data: ImageDataset,
    held_out: ImageDataset | None,
    size: int,
    geometry: Geometry,
    cache_dir: str | Path | None,
) -> Decoded:
    """Every image the plan's stages read, decoded once at ``size``."""
    ex.begin("decoding")
    sets = Decoded.read(data, held_out, size, geometry, cache_dir)
    ex.end("decoding")
    p = ex.plan  # what the probe sees is now decided
    ex.replan("decoded", sample=p.sample, mirror=p.mirror, kept=p.backbones)
    return sets


def probe_stages(
    ex: Executor,
    chosen: list[Candidate],
    sets: Decoded,
    classes: int,
    seed: int,
    compute: Compute | None,
    class_weight: list[float] | None,
) -> ProbeStage:
    """The probe's stages: the kept backbones' features within the room the plan gives them,
    the zoomed views where the plan (re-made at the pace the features ran) still has room for
    them, and the cross-validated probes."""
    ex.begin("features")
    planned, fits = ex.plan, ex.plan.stage("probe fits").seconds

    def room() -> float | None:  # the plan's room on the time left now, less the probe's fits
        now = replace(planned, left=ex.budget.left()).room()
        return None if now is None else now - fits

    pace = ex.measurements.pace.get("features", 1.0)
    computed, skipped, spent = compute_features(
        chosen, sets, compute, room, ex.budget.clock, ex.log, pace
    )
    ex.end("features")
    for reason in skipped:
        ex.say(reason)
    predicted = sum(c.pass_seconds for c in computed) * pace  # of the passes that ran
    factor = spent / predicted if predicted >= 1.0 else 1.0
    ex.replan(
        f"the feature passes ran {factor:.2f} times their prediction",
        kept=tuple(c.name for c in computed),
        pace={"features": pace * factor},
    )
    if ex.begin("zoomed views"):
        add_zoomed_views(computed, sets, compute, ex.log)
        ex.end("zoomed views")
    ex.begin("probe fits")
    stage = run_probe(computed, sets, classes, seed, ex.log, ex.budget, class_weight)
    ex.end("probe fits")
    ex.recipe.reasons += [r for r in stage.choice.reasons if r not in ex.recipe.reasons]
    ex.recipe.gains += stage.choice.gains
    return stage
