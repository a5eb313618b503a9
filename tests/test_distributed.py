"""DDP under torchrun: two processes match one; loaders keep their settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from .jobs.common import ColourDataset

JOBS = Path(__file__).parent / "jobs"


@pytest.mark.parametrize("unfreeze", [False, True], ids=["plain", "gradual-unfreeze"])
def test_ddp_two_processes_match_one_process(tmp_path: Path, unfreeze: bool) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    script = str(JOBS / "ddp_job.py")
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    extra = ["--unfreeze"] if unfreeze else []
    single = [sys.executable, script, "--out", str(one), "--batch-size", "16", *extra]
    subprocess.run(single, check=True, env=env, timeout=300)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    double = [*launcher, script, "--out", str(two), "--batch-size", "8", *extra]
    subprocess.run(double, check=True, env=env, timeout=300)
    m1 = json.loads((one / "metrics.json").read_text())
    m2 = json.loads((two / "metrics.json").read_text())
    assert m1["world_size"] == 1 and m2["world_size"] == 2
    assert m2["eval"]["count"] == 64
    for r1, r2 in zip(m1["history"], m2["history"], strict=True):
        for key in r1:
            assert r2[key] == pytest.approx(r1[key], abs=1e-4), key
    assert m2["eval"]["accuracy"] == pytest.approx(m1["eval"]["accuracy"], abs=1e-6)
    # with gradual unfreezing the conv trains from epoch 2: its gradients must be all-reduced
    assert m2["conv_weight_sum"] == pytest.approx(m1["conv_weight_sum"], abs=1e-4)
    assert sorted(p.name for p in two.iterdir()) == ["last.pt", "metrics.json"]


def test_distributed_loader_keeps_every_setting_of_the_users_loader(monkeypatch) -> None:
    from tlkit import distributed

    data = ColourDataset(32)
    gen = torch.Generator().manual_seed(3)
    original = DataLoader(
        data, batch_size=4, shuffle=True, generator=gen, timeout=7.0, num_workers=1,
        multiprocessing_context="spawn", drop_last=True,
    )  # fmt: skip
    assert distributed.distributed_loader(original, train=True) is original  # one process
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    rebuilt = distributed.distributed_loader(original, train=True)
    assert isinstance(rebuilt.sampler, torch.utils.data.DistributedSampler)
    assert rebuilt.sampler.num_replicas == 2 and rebuilt.sampler.rank == 1
    assert rebuilt.sampler.shuffle
    for name in ("generator", "timeout", "num_workers", "multiprocessing_context", "drop_last",
                 "batch_size", "collate_fn", "pin_memory", "worker_init_fn"):  # fmt: skip
        assert getattr(rebuilt, name) == getattr(original, name), name


def test_tlkit_fit_under_torchrun_agrees_and_writes_once(tmp_path: Path) -> None:
    from tlkit.model import load_model

    from . import shapes

    data = shapes.write(tmp_path / "train", 10, seed=0)
    out, record = tmp_path / "run", tmp_path / "record"
    record.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    job = [*launcher, str(JOBS / "fit_job.py"), str(data), str(out), str(record)]
    done = subprocess.run(job, check=True, env=env, timeout=600, capture_output=True, text=True)
    assert done.stdout.count("; report: ") == 1, done.stdout  # rank 0 alone prints and writes
    ranks = [torch.load(record / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["epochs"] > 0  # fine-tuned with DDP, then kept or not by the keep rule
    assert ranks[0]["kept"] == ranks[1]["kept"]
    assert torch.equal(ranks[0]["probs"], ranks[1]["probs"])
    assert len(ranks[0]["probs"]) == 40 or ranks[0]["kept"] == "fine-tuned"
    for name, tensor in ranks[0]["state"].items():
        assert torch.equal(tensor, ranks[1]["state"][name]), name
    saved = load_model(out)
    for name, tensor in saved.model.state_dict().items():
        assert torch.equal(tensor, ranks[0]["state"][name]), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert any("2 processes under torchrun" in r for r in metrics["recipe"]["reasons"])
    assert {"model.pt", "metrics.json", "report.md"} <= {p.name for p in out.iterdir()}


def test_when_one_process_stops_every_process_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    """A deadline reached in one process only (its epochs ran slower) must stop them all: the
    others would otherwise wait forever for its gradients."""
    from tlkit import distributed

    from .helpers import loader, trainer_for
    from .jobs.common import small_net

    asked: list[int] = []

    def another_process_stopped(value: int) -> int:
        asked.append(int(value))
        return 1

    trainer = trainer_for(small_net())
    monkeypatch.setattr(distributed, "most", another_process_stopped)
    history = trainer.fit(loader(32), epochs=4)
    assert len(history) == 1 and asked == [0]  # this process wanted to go on, and stopped
