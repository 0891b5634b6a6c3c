"""Distributed training, simulated with 2 CPU processes (gloo).

* the batch sampler of a real 2-process group: one shared shuffle, disjoint shards, equal batch counts;
  the same for the training loaders of the table and the interaction DataModules when the ranks'
  torch seeds differ (as under ``ddp_spawn``);
* ``clm-train ... trainer=ddp_sim`` from the command line (slow): one epoch, sane metrics that equal
  the single-process evaluation of the saved checkpoint (so val/test metrics were gathered from both
  ranks, every row once), and exactly one run directory written, once, by rank 0.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.conftest import messy_table


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sampler_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    from clm_torch.data.datamodules import IndexBatchSampler, TableDataModule, shared_seed
    from clm_torch.data.interactions import InteractionDataModule
    from clm_torch.data.sources.interactions import InteractionsFrameSource, synthetic_lowrank_log
    from clm_torch.data.sources.tables import FrameSource

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        seed = shared_seed(1000 + rank)  # ranks start from different seeds, as spawned workers may
        train = [b.tolist() for b in IndexBatchSampler(101, 8, shuffle=True, seed=seed)]
        evals = [b.tolist() for b in IndexBatchSampler(101, 8, shuffle=False)]
        # the DataModules' training loaders, from a torch seed that differs by rank
        torch.manual_seed(2000 + rank)
        dms = {"table": TableDataModule(FrameSource(messy_table(203), target="churn", id_col="customer_id"),
                                        batch_size=16),
               "interactions": InteractionDataModule(InteractionsFrameSource(
                   synthetic_lowrank_log(n_users=150, n_items=40, per_user=8), time_col="time"), batch_size=16)}
        loaders = {}
        for name, dm in dms.items():
            dm.setup()
            loader = dm.train_dataloader()
            loaders[name] = {"n": len(loader.dataset), "rows": [b.tolist() for b in loader.sampler]}
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps({"seed": seed, "train": train, "eval": evals,
                                                                 "loaders": loaders}))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # spawning two interpreters that import torch
def test_sampler_in_a_real_two_process_group(tmp_path: Path) -> None:
    mp.spawn(_sampler_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["seed"] == r1["seed"] == 1000  # rank 0's seed everywhere
    assert len(r0["train"]) == len(r1["train"]) and len(r0["eval"]) == len(r1["eval"])
    train = [i for b in r0["train"] + r1["train"] for i in b]
    assert set(train) == set(range(101)) and len(train) == 102  # one padded row
    evals = sorted(i for b in r0["eval"] + r1["eval"] for i in b)
    assert evals == list(range(101))
    for name in ("table", "interactions"):  # each DataModule's shards: one shared shuffle, disjoint
        n = r0["loaders"][name]["n"]
        shards = [[i for b in r["loaders"][name]["rows"] for i in b] for r in (r0, r1)]
        assert len(shards[0]) == len(shards[1]) == (n + 1) // 2, name
        assert set(shards[0] + shards[1]) == set(range(n)), name


# ---------------------------------------------------------------------------- the CLI, end to end
def _run_cli(tmp: Path, *overrides: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "clm-train"
    cmd = [str(exe) if exe.exists() else "clm-train", *overrides]
    env = {**os.environ, "CLM_ROOT": str(tmp), "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "ddp_spawn"])
def test_ddp_sim_from_the_cli(tmp_path: Path, strategy: str) -> None:
    from clm_torch import ChurnClassifier
    from clm_torch.models.churn import binary_metrics

    data = tmp_path / "customers.csv"
    raw = messy_table(1200)
    raw.to_csv(data, index=False)
    # no additive members: they learn slowly, and one epoch split over two ranks is short
    proc = _run_cli(tmp_path, "model=churn", "data=csv", f"data.path={data}", "data.target=churn",
                    "model.additive_members=0", "data.id_col=customer_id", "trainer=ddp_sim", f"trainer.strategy={strategy}",
                    "trainer.max_epochs=1", "model.k_ensemble=2", "model.hidden=[32]", "data.batch_size=64",
                    "callbacks.model_summary=null", "callbacks.progress_bar=null")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "MEMBER: 2/2" in proc.stdout + proc.stderr  # two processes really ran

    runs = [p for p in (tmp_path / "logs").rglob("*") if p.is_dir() and p.parent.name == "runs"]
    assert len(runs) == 1, runs  # the re-launched rank must not create its own timestamped directory
    run = runs[0]
    events = list((run / "tensorboard").glob("events.out.tfevents.*"))  # events.out.tfevents.<t>.<host>.<pid>.<n>
    assert events
    if strategy == "ddp":  # ranks are separate interpreters: every event file comes from the launching rank 0
        assert len({f.name.split(".")[-2] for f in events}) == 1, events
    assert (run / ".hydra" / "config.yaml").exists() and (run / "checkpoints" / "best.ckpt").exists()
    # train/loss: one value for the epoch, from the running sums of both ranks (summed across them)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    loss = [e.value for e in EventAccumulator(str(run / "tensorboard")).Reload().Scalars("train/loss")]
    assert len(loss) == 1 and 0 < loss[0] < 5, loss
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]

    metrics = json.loads((run / "metrics.json").read_text())
    for k in ("val/auroc", "test/auroc"):
        assert 0.6 < metrics[k] <= 1.0, metrics  # one epoch already learns the planted signal
    assert np.isfinite(metrics["test/log_loss"]) and 0 < metrics["test/brier"] < 0.25

    preds = pd.read_csv(run / "predictions" / "test.csv")
    assert preds["customer_id"].is_unique and len(preds) == round(0.15 * len(raw))
    # the checkpoint scored in one process reproduces predictions.csv and the logged test metrics:
    # test metrics were gathered from both ranks, with every test row exactly once
    model = ChurnClassifier.load_from_checkpoint(run / "checkpoints" / "best.ckpt")
    p = model.predict_proba(raw.set_index("customer_id").loc[preds["customer_id"]].reset_index())
    np.testing.assert_allclose(p, preds["prediction"].to_numpy(), atol=1e-5)
    single = binary_metrics(torch.tensor(p), torch.tensor(preds["label"].to_numpy(), dtype=torch.float32))
    for k in ("auroc", "ap", "log_loss", "brier"):
        assert float(single[k]) == pytest.approx(metrics[f"test/{k}"], abs=2e-4), k
    shutil.rmtree(tmp_path / "logs", ignore_errors=True)
