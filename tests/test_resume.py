"""A resumed run reproduces the uninterrupted one: 2 epochs straight == 1 epoch, stop, ``ckpt_path=last``
to 2 epochs, weight for weight, for each of the three models (same seed, CPU, deterministic ops).

The checkpoint carries the random-number state (torch, numpy, Python ``random``) that dropout, the
VAE's cell hiding and the recommender's negative sampling and history corruption draw from; the batch
order is a function of (seed, epoch) already (``IndexBatchSampler``)."""

from __future__ import annotations

import logging
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from clm_torch.data.sources.interactions import synthetic_lowrank_log
from clm_torch.train import train
from tests.conftest import compose_cfg, messy_table

COMMON = ["~logger", "callbacks.model_summary=null", "callbacks.early_stopping=null",
          "trainer.enable_model_summary=false"]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("resume_data")
    csv, log = tmp / "customers.csv", tmp / "log.csv"
    messy_table(300).to_csv(csv, index=False)
    synthetic_lowrank_log(n_users=120, n_items=50, rank=3, per_user=12, seed=0).to_csv(log, index=False)
    return {"table": csv, "log": log}


def _model_args(name: str, files: dict[str, Path]) -> list[str]:
    table = ["data=csv", f"data.path={files['table']}", "data.target=churn", "data.id_col=customer_id",
             "data.batch_size=64"]
    return {
        # dropout 0.2 in the members: the churn model draws from the global torch generator every step
        "churn": ["model=churn", *table, "model.k_ensemble=2", "model.hidden=[16]", "model.d_embed=8"],
        # random hiding rate and cells, reparameterised latent draws
        "vae": ["model=infogap_vae", *table, "model.latent_dim=4", "model.encoder_hidden=[16]",
                "model.decoder_hidden=[16]", "model.n_samples=2"],
        # user dropout, history corruption, sampled negatives
        "recommender": ["model=recommender", "data=interactions", f"data.path={files['log']}", "data.user_col=user",
                        "data.item_col=item", "data.protocol=random", "model.d=8"],
    }[name]


def _last(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)


@pytest.mark.slow  # three trainings each, 13-25 s on a busy 2-core machine; the VAE's and the recommender's in
@pytest.mark.parametrize("name", ["churn",  # `make test-extended` only (the RNG restore is the base class's, shared)
                                  pytest.param("vae", marks=pytest.mark.extended),
                                  pytest.param("recommender", marks=pytest.mark.extended)])
def test_a_resumed_run_ends_with_the_weights_of_the_uninterrupted_one(tmp_path: Path, files: dict[str, Path],
                                                                      name: str) -> None:
    """Before the checkpoint held the random-number state, the resumed run drew its dropout masks,
    hidden cells and negatives from a freshly seeded generator: after 2 epochs its weights differed
    from the uninterrupted run's by up to 0.13 (churn), 0.004 (VAE) and 0.03 (recommender)."""
    args = [*_model_args(name, files), *COMMON]
    train(compose_cfg([*args, "trainer.max_epochs=2"], tmp_path / "straight"))
    train(compose_cfg([*args, "trainer.max_epochs=1"], tmp_path / "resumed"))
    train(compose_cfg([*args, "trainer.max_epochs=2", "ckpt_path=last"], tmp_path / "resumed"))
    straight, resumed = _last(tmp_path / "straight"), _last(tmp_path / "resumed")
    assert straight["epoch"] == resumed["epoch"] == 1
    assert straight["global_step"] == resumed["global_step"]
    differ = {k: float((v.double() - resumed["state_dict"][k].double()).abs().max())
              for k, v in straight["state_dict"].items() if not torch.equal(v, resumed["state_dict"][k])}
    assert not differ, differ  # exactly equal on CPU
    for a, b in zip(straight["optimizer_states"][0]["state"].values(),
                    resumed["optimizer_states"][0]["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in a)


def _draws() -> tuple:
    return torch.rand(3).tolist(), np.random.rand(2).tolist(), random.random()


def test_the_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path: Path) -> None:
    """torch, numpy and Python ``random`` continue with the same numbers after a save and a load with
    ``weights_only=True`` (numpy's key array and Python's state tuple are stored as tensors)."""
    from clm_torch.utils.rng import rng_state, set_rng_state

    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    _draws()
    torch.save({"rng": rng_state()}, tmp_path / "s.ckpt")
    expected = _draws()
    _draws()  # move every generator on
    set_rng_state(torch.load(tmp_path / "s.ckpt", weights_only=True)["rng"])
    assert _draws() == expected


class _Trainer(SimpleNamespace):
    state = SimpleNamespace(fn="fit")
    lr_scheduler_configs: list = []


def test_a_resume_restores_its_own_ranks_state_and_warns_once_when_it_cannot(caplog) -> None:
    """Rank r takes the r-th state of the checkpoint; a checkpoint of another number of processes, or
    of an older clm_torch (no state), gets one warning line and leaves the generators as they are. A
    checkpoint loaded outside a fit (load_from_checkpoint, test) restores nothing."""
    from clm_torch import ChurnClassifier
    from clm_torch.utils.rng import RNG_KEY, rng_state

    model = ChurnClassifier(n_num=2, cat_cardinalities=[3], k_ensemble=1, hidden=[4], d_embed=4)
    states = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        states.append(rng_state())
    rank1 = torch.rand(3)
    model._trainer = _Trainer(world_size=2, global_rank=1, is_global_zero=False, ckpt_path="last.ckpt")
    model.on_load_checkpoint({RNG_KEY: {"ranks": states}})
    torch.manual_seed(0)
    model.on_train_start()
    assert torch.equal(torch.rand(3), rank1)
    for ckpt, why in (({RNG_KEY: {"ranks": states}}, "holds the random-number state of 2 processes, this run has 1"),
                      ({}, "was saved without the random-number state (by an older clm_torch)")):
        model._trainer = _Trainer(world_size=1, global_rank=0, is_global_zero=True, ckpt_path="last.ckpt")
        model.on_load_checkpoint(ckpt)
        torch.manual_seed(0)
        before = torch.get_rng_state()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="clm_torch.models.base"):
            model.on_train_start()
        assert torch.equal(torch.get_rng_state(), before)
        assert [r.getMessage() for r in caplog.records] == [
            f"last.ckpt {why}: the resumed run draws from seed=0 afresh, so it is not bit-identical to an "
            "uninterrupted run"]
    for trainer in (None, _Trainer(world_size=1, global_rank=0, is_global_zero=True, ckpt_path="best.ckpt",
                                   state=SimpleNamespace(fn="test"))):
        model._trainer = trainer
        model.on_load_checkpoint({RNG_KEY: {"ranks": states[:1]}})
        model._trainer = _Trainer(world_size=1, global_rank=0, is_global_zero=True, ckpt_path=None)
        torch.manual_seed(0)
        before = torch.get_rng_state()
        model.on_train_start()  # a later fit of the loaded model keeps its own seed
        assert torch.equal(torch.get_rng_state(), before)
    model._trainer = None


@pytest.mark.slow  # two trainings, 6-12 s on a busy 2-core machine
def test_a_checkpoint_without_the_rng_state_still_resumes(tmp_path: Path, files: dict[str, Path], caplog) -> None:
    """A last.ckpt written before the random-number state was saved resumes to the end, with one
    warning line."""
    args = [*_model_args("churn", files), *COMMON, "test=false"]
    train(compose_cfg([*args, "trainer.max_epochs=1"], tmp_path / "run"))
    path = tmp_path / "run" / "checkpoints" / "last.ckpt"
    old = torch.load(path, weights_only=True)
    torch.save({k: v for k, v in old.items() if k != "clm_rng"}, path)
    with caplog.at_level(logging.WARNING):
        train(compose_cfg([*args, "trainer.max_epochs=2", "ckpt_path=last"], tmp_path / "run"))
    assert _last(tmp_path / "run")["epoch"] == 1
    assert len([r for r in caplog.records if "saved without the random-number state" in r.getMessage()]) == 1
