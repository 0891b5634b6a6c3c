"""Shared fixtures: compose the real Hydra configs into a temporary run directory."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import DictConfig, open_dict

from clm_torch.config import compose_config

REPO = Path(__file__).resolve().parents[1]

# `make test` runs the suite in parallel (pytest-xdist, one worker per core): each worker then gets an
# equal share of the cores, so two workers on two cores do not fight over four BLAS threads
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))))


@pytest.fixture(autouse=True)
def _same_random_state_for_every_test() -> None:
    """Every test starts from the same global RNG state (torch, numpy, random), whatever ran before it
    in its process: under xdist the files a worker runs first differ from run to run."""
    import random

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under xdist (``make test``: ``-n ... --dist loadfile --no-loadscope-reorder``) each test file is
    one unit of work, handed out in collection order: put the files with the most ``slow`` tests first,
    so the long units start at once instead of leaving one worker busy at the end while the other idles.
    Plain ``pytest`` keeps the usual order."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    slow = Counter(item.path for item in items if item.get_closest_marker("slow"))
    first = {}
    for i, item in enumerate(items):
        first.setdefault(item.path, i)
    items.sort(key=lambda item: (-slow[item.path], first[item.path]))


def compose_cfg(overrides: Sequence[str], output_dir: Path, config_name: str = "train.yaml") -> DictConfig:
    """Compose ``configs/<config_name>`` with overrides, as ``clm-train`` would, writing to ``output_dir``."""
    cfg = compose_config(overrides, config_name=config_name, output_dir=output_dir)
    with open_dict(cfg):
        cfg.paths.log_dir = str(output_dir.parent / "logs")
        cfg.paths.root_dir = str(REPO)
        if cfg.get("callbacks") and cfg.callbacks.get("progress_bar"):
            cfg.callbacks.progress_bar = None
    return cfg


@pytest.fixture
def make_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """``make_cfg(*overrides, out="run")`` → a composed config whose outputs go under tmp_path."""

    def _make(*overrides: str, out: str = "run", config_name: str = "train.yaml") -> DictConfig:
        return compose_cfg(overrides, tmp_path / out, config_name)

    return _make


def messy_table(n: int = 600, seed: int = 0) -> pd.DataFrame:
    """A small customer table with a learnable binary target, NaN, and mixed types."""
    rng = np.random.default_rng(seed)
    tenure = rng.integers(0, 72, n).astype(float)
    fee = rng.gamma(4.0, 20.0, n)
    contract = rng.choice(["month", "year", "two-year"], n, p=[0.5, 0.3, 0.2])
    region = rng.choice(["north", "south", "east", "west"], n)
    paperless = rng.choice(["yes", "no"], n)
    logit = -0.04 * tenure + 0.01 * fee + np.where(contract == "month", 1.0, -1.0) + rng.normal(0, 0.5, n)
    churn = np.where(logit > np.quantile(logit, 0.7), "Yes", "No")
    df = pd.DataFrame({"customer_id": [f"C{i:05d}" for i in range(n)], "tenure": tenure, "monthly_fee": fee,
                       "contract": contract, "region": region, "paperless": paperless, "churn": churn})
    df.loc[rng.random(n) < 0.05, "monthly_fee"] = np.nan
    df.loc[rng.random(n) < 0.05, "region"] = np.nan
    return df


@pytest.fixture
def table_csv(tmp_path: Path) -> Path:
    p = tmp_path / "customers.csv"
    messy_table().to_csv(p, index=False)
    return p


TINY_PIPELINE = [
    "data.n_customers=600", "models.vae.trainer.max_epochs=2", "models.churn.trainer.max_epochs=2",
    "models.recommender.trainer.max_epochs=2", "models.spend.trainer.max_epochs=2", "tensorboard=true",
    "segments.k_max=4", "score.gap_samples=2", "score.question_samples=4",
]


@pytest.fixture(scope="session")
def tiny_pipeline_run(tmp_path_factory) -> Path:
    """A whole clm-pipeline run on a tiny synthetic base (shared by the pipeline and notebook tests)."""
    from clm_torch.pipeline import run_pipeline

    out = tmp_path_factory.mktemp("pipeline") / "run"
    cfg = compose_cfg(TINY_PIPELINE, out, config_name="pipeline.yaml")
    run_pipeline(cfg)
    return out
