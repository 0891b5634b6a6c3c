"""Functional checks behind the performance work (never timings): batch sharding under DDP,
mixed precision code paths, the DDP launcher guard and the benchmark helpers."""

from __future__ import annotations

import importlib.util
import json
import sys
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch

from clm_torch.data import datamodules as dmod
from clm_torch.data.datamodules import IndexBatchSampler, TableDataModule, batch_loader, shared_seed
from clm_torch.data.sources.tables import FrameSource
from tests.conftest import REPO, messy_table


def _simulate(monkeypatch: pytest.MonkeyPatch, sampler: IndexBatchSampler, world: int) -> list[list[torch.Tensor]]:
    """The batches every rank of a ``world``-process run would draw (``_dist_info`` patched)."""
    out = []
    for rank in range(world):
        monkeypatch.setattr(dmod, "_dist_info", lambda r=rank: (r, world))
        sampler.set_epoch(3)
        batches = list(iter(sampler))
        assert len(batches) == len(sampler), (rank, world)
        out.append(batches)
    return out


@pytest.mark.parametrize("n,batch,world", [(450, 64, 2), (1001, 1000, 2), (2049, 1024, 2), (10, 4, 3), (7, 100, 4),
                                           (3, 1, 2)])
def test_eval_sharding_sees_every_row_once_with_equal_batch_counts(monkeypatch, n, batch, world) -> None:
    sampler = IndexBatchSampler(n, batch, shuffle=False)
    per_rank = _simulate(monkeypatch, sampler, world)
    assert len({len(b) for b in per_rank}) == 1  # DDP: the same number of steps on every rank
    rows = torch.cat([torch.cat(b) for b in per_rank])
    assert all(0 < len(x) <= batch for b in per_rank for x in b)
    if n >= world * len(per_rank[0]):
        assert sorted(rows.tolist()) == list(range(n))  # each row exactly once: gathered metrics are exact
    else:  # fewer rows than chunks: every row still seen, a few repeated
        assert set(rows.tolist()) == set(range(n))


@pytest.mark.parametrize("n,batch,world,drop_last", [(1000, 64, 2, False), (1001, 64, 2, True), (7, 2, 3, False),
                                                     (1, 4, 3, False), (2, 1, 5, False)])  # fewer rows than ranks
def test_train_sharding_covers_the_epoch_with_equal_batch_counts(monkeypatch, n, batch, world, drop_last) -> None:
    sampler = IndexBatchSampler(n, batch, shuffle=True, seed=5, drop_last=drop_last)
    per_rank = _simulate(monkeypatch, sampler, world)
    assert len({len(b) for b in per_rank}) == 1
    assert len({sum(len(x) for x in b) for b in per_rank}) == 1  # same rows per rank
    rows = torch.cat([torch.cat(b) for b in per_rank]).tolist()
    per = -(-n // world)
    if not drop_last:
        assert set(rows) == set(range(n))
        assert len(rows) == per * world  # only the wrap-around padding repeats rows
    # ranks draw disjoint slices of one permutation (shared seed), apart from the padding
    assert len(rows) - len(set(rows)) <= per * world - n


def test_sampler_reshuffles_per_epoch_and_is_reproducible() -> None:
    a = IndexBatchSampler(100, 10, shuffle=True, seed=1)
    b = IndexBatchSampler(100, 10, shuffle=True, seed=1)
    e0 = torch.cat(list(a))
    e1 = torch.cat(list(a))  # __iter__ moves to the next epoch
    assert not torch.equal(e0, e1)
    assert torch.equal(e0, torch.cat(list(b)))
    b.set_epoch(1)
    assert torch.equal(e1, torch.cat(list(b)))
    assert sorted(e0.tolist()) == list(range(100))
    with pytest.raises(ValueError, match="batch_size"):
        IndexBatchSampler(10, 0, shuffle=False)


def test_shared_seed_without_distributed_is_the_seed() -> None:
    assert shared_seed(1234) == 1234


def test_batch_loader_yields_whole_batch_slices() -> None:
    g = torch.Generator().manual_seed(0)
    tensors = {"num": torch.randn(103, 3, generator=g), "cat": torch.randint(0, 5, (103, 2), generator=g),
               "y": torch.rand(103, generator=g)}
    loader = batch_loader(tensors, 25, shuffle=True, seed=3)
    batches = list(loader)
    assert len(batches) == len(loader) == 5 and [len(b["y"]) for b in batches] == [25, 25, 25, 25, 3]
    order = torch.cat(list(IndexBatchSampler(103, 25, shuffle=True, seed=3)))
    for k, v in tensors.items():
        assert torch.equal(torch.cat([b[k] for b in batches]), v.index_select(0, order))


# ---------------------------------------------------------------------------- precision
def _models() -> list[tuple[type, bool]]:
    from clm_torch.models.churn import ChurnClassifier

    out: list[tuple[type, bool]] = [(ChurnClassifier, True)]
    if importlib.util.find_spec("clm_torch.models.infogap_vae") is not None:
        from clm_torch.models.infogap_vae import InfoGapVAE

        out.append((InfoGapVAE, False))
    return out


@pytest.fixture(scope="module")
def small_dm() -> TableDataModule:
    dm = TableDataModule(FrameSource(messy_table(400), target="churn", id_col="customer_id"), batch_size=64)
    dm.setup()
    return dm


@pytest.mark.parametrize("model_cls,supervised", _models(), ids=lambda x: getattr(x, "__name__", str(x)))
def test_parameters_are_float32(small_dm, model_cls, supervised) -> None:
    """No float64 weights: they would mismatch bf16/fp16 activations under autocast (and be slow).
    Float64 metric accumulators are fine: they never enter autocast."""
    model = model_cls(**small_dm.model_kwargs())
    assert {str(p.dtype) for p in model.parameters()} == {"torch.float32"}


@pytest.mark.parametrize("model_cls,supervised", _models(), ids=lambda x: getattr(x, "__name__", str(x)))
def test_bf16_mixed_trains_and_tests_on_cpu(model_cls, supervised) -> None:
    dm = TableDataModule(FrameSource(messy_table(400), target="churn", id_col="customer_id"), batch_size=64,
                         require_target=supervised)
    dm.setup()
    L.seed_everything(0, verbose=False)
    model = model_cls(**dm.model_kwargs())
    model.set_preprocessing(dm.preprocessing_state())
    trainer = L.Trainer(max_epochs=1, precision="bf16-mixed", accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_train_batches=3, limit_val_batches=2, limit_test_batches=2)
    before = [p.detach().clone() for p in model.parameters()]
    trainer.fit(model, datamodule=dm)
    res = trainer.test(model, datamodule=dm, verbose=False)[0]
    assert res and all(np.isfinite(v) for v in res.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))  # it learned something
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # mixed: master weights stay fp32
    if supervised:
        p = model.predict_proba(messy_table(30, seed=4).drop(columns=["churn"]))
        assert p.dtype == np.float32 and np.isfinite(p).all()


@pytest.mark.parametrize("model_cls,supervised", _models(), ids=lambda x: getattr(x, "__name__", str(x)))
def test_fp16_autocast_step_with_grad_scaler(small_dm, model_cls, supervised) -> None:
    """The 16-mixed code path (autocast to float16 + GradScaler), exercised on the CPU: no dtype
    mismatch, a finite loss, gradients reach every trained parameter."""
    torch.manual_seed(0)
    model = model_cls(**small_dm.model_kwargs())
    model.set_preprocessing(small_dm.preprocessing_state())
    model.train()
    batch = next(iter(small_dm.train_dataloader()))
    scaler = torch.amp.GradScaler("cpu")
    with torch.autocast("cpu", dtype=torch.float16):
        out = model.model_step(batch, "train") if not supervised else model.model_step(batch)
    loss = out[0] if isinstance(out, tuple) else out
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    scaler.scale(loss).backward()
    assert any(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def _fit_and_test(name: str, precision: str, accelerator: str) -> dict[str, float]:
    """One short epoch of a small ``name`` model ("churn", "vae" or "recommender") at ``precision`` on
    ``accelerator``, then its test metrics."""
    if name == "recommender":
        from clm_torch.data.interactions import InteractionDataModule
        from clm_torch.data.sources.interactions import InteractionsFrameSource, synthetic_lowrank_log
        from clm_torch.models.recommender import EmbeddingRecommender

        dm = InteractionDataModule(InteractionsFrameSource(synthetic_lowrank_log(n_users=300, n_items=120, rank=3,
                                                                                 per_user=25, seed=0), time_col="time"),
                                   protocol="random", batch_size=64, split_seed=0, n_neighbors=20)
        cls, kw = EmbeddingRecommender, {"d": 16}
    else:
        from clm_torch.models.churn import ChurnClassifier
        from clm_torch.models.infogap_vae import InfoGapVAE

        dm = TableDataModule(FrameSource(messy_table(400), target="churn", id_col="customer_id"), batch_size=64,
                             require_target=name == "churn")
        cls, kw = (ChurnClassifier if name == "churn" else InfoGapVAE), {}
    dm.setup()
    L.seed_everything(0, verbose=False)
    model = cls(**dm.model_kwargs(), **kw)
    model.set_preprocessing(dm.preprocessing_state())
    prec: dict[str, Any] = {"precision": precision}
    if precision == "16-mixed" and accelerator == "cpu":  # Trainer(precision=...) would swap in bf16 on the CPU
        from lightning.pytorch.plugins.precision import MixedPrecision

        prec = {"plugins": [MixedPrecision("16-mixed", "cpu")]}
    trainer = L.Trainer(max_epochs=1, accelerator=accelerator, devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_train_batches=3,
                        limit_val_batches=2, limit_test_batches=2, num_sanity_val_steps=0,
                        use_distributed_sampler=name != "recommender", **prec)
    if precision == "16-mixed":  # Lightning's float16 autocast comes with a grad scaler on every device
        assert isinstance(trainer.precision_plugin.scaler, torch.amp.GradScaler)
    trainer.fit(model, datamodule=dm)
    if precision == "16-mixed":  # the scaler scaled the losses (its scale tensor is made on the first use)
        assert trainer.precision_plugin.scaler._scale is not None
    res = trainer.test(model, datamodule=dm, verbose=False)[0]
    assert res and all(np.isfinite(v) for v in res.values()), res
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # mixed: master weights stay fp32
    return res


@pytest.mark.parametrize("name", ["churn", "vae", "recommender"])
def test_16_mixed_with_grad_scaler_trains_and_tests_on_cpu(name) -> None:
    """16-mixed through Lightning's MixedPrecision plugin (float16 autocast + GradScaler) for all three
    models: on the CPU here (the plugin given explicitly), on a GPU in test_mixed_precision_on_gpu."""
    _fit_and_test(name, "16-mixed", "cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed"])
@pytest.mark.parametrize("name", ["churn", "vae", "recommender"])
def test_mixed_precision_on_gpu(name, precision) -> None:
    res = _fit_and_test(name, precision, "gpu")
    if name == "churn":
        assert 0.0 <= res["test/auroc"] <= 1.0


# ---------------------------------------------------------------------------- training-step logging
def test_train_loss_is_the_row_weighted_epoch_mean_of_the_finite_batches() -> None:
    """add_train_terms: per epoch, sum(loss * rows) / rows over the batches with a finite loss (a
    NaN batch, skipped by nan_policy=skip, is left out), reset between epochs, logged once."""
    from torch.utils.data import DataLoader, TensorDataset

    from clm_torch.models.base import CLMModule

    losses = {0: [1.0, float("nan"), 4.0], 1: [5.0, 5.0, 8.0]}  # batches of 4, 4 and 2 rows

    class Fixed(CLMModule):
        def __init__(self) -> None:
            super().__init__()
            self.save_hyperparameters({"nan_policy": "skip"})
            self.w = torch.nn.Parameter(torch.zeros(()))

        def training_step(self, batch, batch_idx):
            loss = self.w * 0 + losses[self.current_epoch][batch_idx]
            self.add_train_terms(loss, len(batch[0]))
            return self.guard_loss(loss, batch_idx)

        def train_dataloader(self):
            return DataLoader(TensorDataset(torch.zeros(10, 1)), batch_size=4)

    seen = []

    class Record(L.Callback):  # the logged epoch value is in callback_metrics once the epoch has ended
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch:
                seen.append(float(trainer.callback_metrics["train/loss"]))

        def on_train_end(self, trainer, pl_module):
            seen.append(float(trainer.callback_metrics["train/loss"]))

    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[Record()])
    trainer.fit(Fixed())
    # (4*1 + 2*4) / 6 = 2.0 (unweighted 2.5, NaN included: nan); (4*5 + 4*5 + 2*8) / 10 = 5.6 (not reset: 4.25)
    assert seen == pytest.approx([2.0, 5.6])


@pytest.mark.parametrize("model_cls,supervised", _models(), ids=lambda x: getattr(x, "__name__", str(x)))
def test_training_step_does_not_call_self_log(small_dm, model_cls, supervised, monkeypatch) -> None:
    """Per-step self.log costs about a millisecond of Lightning bookkeeping: the training step only adds
    tensors (add_train_terms), and the epoch means are logged once at the epoch's end."""
    torch.manual_seed(0)
    model = model_cls(**small_dm.model_kwargs())
    model.set_preprocessing(small_dm.preprocessing_state())
    model.train()
    calls = []
    monkeypatch.setattr(model, "log", lambda *a, **k: calls.append(a[0]))
    monkeypatch.setattr(model, "log_dict", lambda *a, **k: calls.append(a[0]))
    batch = next(iter(small_dm.train_dataloader()))
    assert model.training_step(batch, 0) is not None
    assert calls == [] and model._train_sums is not None and torch.isfinite(model._train_sums).all()


# ---------------------------------------------------------------------------- DDP launcher guard
def test_ddp_relaunch_is_refused_inside_a_multirun_or_a_pipeline_subrun(make_cfg) -> None:
    import hydra

    from clm_torch.train import RunDirectoryError, check_launcher

    for mode, strategy, refused in (("MULTIRUN", "ddp", True), ("RUN", "ddp", False),
                                    ("MULTIRUN", "ddp_spawn", False)):
        cfg = make_cfg("trainer=ddp_sim", f"hydra.mode={mode}", f"trainer.strategy={strategy}")
        trainer = hydra.utils.instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
        if refused:
            with pytest.raises(RunDirectoryError, match="ddp_spawn"):
                check_launcher(trainer)
        else:
            check_launcher(trainer)
        if strategy == "ddp":  # a caller whose command line is not this run (the pipeline's sub-runs)
            with pytest.raises(RunDirectoryError, match="whole pipeline again; use trainer.strategy=ddp_spawn"):
                check_launcher(trainer, allow_relaunch=False)
        else:
            check_launcher(trainer, allow_relaunch=False)


# ---------------------------------------------------------------------------- benchmark helpers
def _bench_module():
    sys.path.insert(0, str(REPO / "experiments"))
    try:
        import bench_throughput
    finally:
        sys.path.pop(0)
    return bench_throughput


def test_rates_from_time_stamps() -> None:
    bt = _bench_module()
    stamps = [(0.0, 0.0), (1.0, 0.5), (3.0, 1.0), (4.0, 2.0)]  # (wall, cpu); steps of 1, 2, 1 s
    window, median, cpu, best = bt.rates(stamps, 10)
    assert window == pytest.approx(30 / 4) and median == pytest.approx(10 / 1)
    assert cpu == pytest.approx(30 / 2) and best == pytest.approx(10 / 1)


def test_paired_timer_interleaves_one_hand_step_per_lightning_step(monkeypatch) -> None:
    """A hand step before every Lightning step of the warm-up and the window; the window's hand steps and
    the Lightning steps between them are timed, each on its own clock span."""
    bt = _bench_module()
    clock = iter(range(1000))
    monkeypatch.setattr(bt.time, "perf_counter", lambda: float(next(clock)))

    class Hand:
        n = 0

        def step(self) -> None:
            Hand.n += 1

    warmup, steps = 2, 3
    timer = bt.PairedTimer(Hand(), warmup, steps)
    for i in range(warmup + steps + 1):  # max_steps = warmup + steps + 1, as in run_paired
        timer.on_train_batch_start(type("T", (), {"global_step": i})(), None, None, i)
    assert Hand.n == warmup + steps
    # every call reads the clock once on entry and once after a timed hand step: each span is 1 "second"
    assert timer.hand_s == [1.0] * steps and timer.ours_s == [1.0] * steps


def test_write_section_replaces_only_its_own_block(tmp_path, monkeypatch) -> None:
    bt = _bench_module()
    md = tmp_path / "performance.md"
    md.write_text("# Performance\n\nhand-written intro\n")
    monkeypatch.setattr(bt, "PERF_MD", md)
    monkeypatch.setattr(bt, "RESULTS", tmp_path)
    bt.write_section("alpha", "first", "Alpha")
    bt.write_section("beta", "other", "Beta")
    bt.write_section("alpha", "second", "Alpha")
    text = md.read_text()
    assert "hand-written intro" in text and "second" in text and "first" not in text and "other" in text
    assert text.count("## Alpha") == 1 and text.index("## Alpha") < text.index("## Beta")


def test_publish_prints_and_writes_json_and_section_unless_told_not_to(tmp_path, monkeypatch, capsys) -> None:
    bt = _bench_module()
    monkeypatch.setattr(bt, "PERF_MD", tmp_path / "performance.md")
    monkeypatch.setattr(bt, "RESULTS", tmp_path)
    bt.publish("alpha", "| a |", "Alpha", write=False, json_name="a.json", result={"x": 1})
    assert "| a |" in capsys.readouterr().out and not list(tmp_path.iterdir())
    bt.publish("alpha", "| b |", "Alpha", json_name="a.json", result={"x": 2})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 2}
    assert "## Alpha" in (tmp_path / "performance.md").read_text() and "| b |" in (tmp_path / "performance.md").read_text()


def test_machine_info_names_the_cpu_and_versions() -> None:
    info = _bench_module().machine_info()
    assert info["cores"] >= 1 and info["torch"] == torch.__version__ and info["cpu"]
    assert isinstance(info["avx512_bf16"], bool)


@pytest.mark.parametrize("n_num,cards,hidden,k,add", [(4, [3, 5, 2], [16, 16], 3, 2), (4, [3, 5, 2], [], 2, 0),
                                                      (0, [3, 5], [8], 2, 1), (3, [], [8, 8], 2, 2)])
def test_fused_inference_matches_the_plain_forward(n_num, cards, hidden, k, add) -> None:
    """The inference fusion of categorical embeddings into the first layer changes no probability,
    is only used in eval mode without gradients, and is released afterwards."""
    from clm_torch.models.churn import ChurnClassifier

    torch.manual_seed(0)
    m = ChurnClassifier(n_num, cards, hidden=hidden, k_ensemble=k, additive_members=add, d_embed=4).eval()
    n = 300
    batch = {"num": torch.randn(n, n_num), "num_mask": torch.rand(n, n_num) > 0.2,
             "cat": torch.stack([torch.randint(0, c, (n,)) for c in cards], 1) if cards
             else torch.zeros(n, 0, dtype=torch.long)}
    with torch.no_grad():
        plain = m(batch)
        with m.fused_inference():
            assert m._fused is not None
            fused = m(batch)
    assert m._fused is None
    assert fused.shape == plain.shape == (k + add, n)
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5)
    m.train()
    with torch.no_grad(), m.fused_inference():
        assert m._fused is None  # training mode: the plain forward


def test_category_lookup_per_distinct_value_matches_the_row_keys() -> None:
    """``transform`` normalises each distinct category once; the indices equal a row-by-row lookup
    for string, float, bool, categorical and mixed object columns, NaN and unseen values included."""
    import pandas as pd

    from clm_torch.data.encoding import FeatureEncoder, _category_keys

    rng = np.random.default_rng(0)
    n = 2000
    df = pd.DataFrame({
        "s": pd.Series(rng.choice(["Yes", " no", "NO", None, "x"], n), dtype="string"),
        "f": rng.choice([1.0, 2.0, np.nan, 3.5], n),
        "b": rng.choice([True, False], n),
        "c": pd.Categorical(rng.choice(["u", "v", None], n)),
        "o": pd.Series(rng.choice(np.array([1, "1", 2.5, "z", None, True, 1.0], dtype=object), n), dtype=object),
    })
    enc = FeatureEncoder(numeric=[], categorical=list(df.columns)).fit(df.head(1500))
    new = df.tail(500).copy()
    new.loc[new.index[:5], "s"] = "never seen"
    got = enc.transform(new)["cat"].numpy()
    for j, col in enumerate(df.columns):
        keys = _category_keys(new[col]).astype(object).where(new[col].notna(), None)
        want = pd.Index(enc.keys[col]).get_indexer(keys)
        np.testing.assert_array_equal(got[:, j], np.where(want < 0, 0, want), err_msg=col)
    assert (got[:5, 0] == 0).all()
    # scoring in chunks reuses the per-value cache; the indices do not change
    chunked = np.concatenate([enc.transform(new.iloc[i: i + 64])["cat"].numpy() for i in range(0, len(new), 64)])
    np.testing.assert_array_equal(chunked, got)


# ------------------------------------------------------------------ page size of the data steps
def _hugepages_on() -> bool:
    """NumPy's current MADV_HUGEPAGE setting (read by setting it and putting it back)."""
    from clm_torch.utils import memory

    state = memory._switch(True)
    memory._switch(state)
    return state


def _no_switch() -> bool:
    from clm_torch.utils import memory

    return memory._switch is None


needs_switch = pytest.mark.skipif(_no_switch(), reason="this NumPy has no MADV_HUGEPAGE switch")


@needs_switch
def test_small_pages_turns_hugepages_off_inside_and_restores_them(monkeypatch) -> None:
    from clm_torch.utils import memory

    monkeypatch.delenv("NUMPY_MADVISE_HUGEPAGE", raising=False)
    before = memory._switch(True)
    try:
        with memory.small_pages():
            assert not _hugepages_on()
            with memory.small_pages():  # nested: the inner exit keeps them off
                pass
            assert not _hugepages_on()
        assert _hugepages_on()
        memory._switch(False)  # the previous setting comes back, whatever it was
        with memory.small_pages():
            pass
        assert not _hugepages_on()
        # the user's explicit choice in the environment is left alone
        memory._switch(True)
        monkeypatch.setenv("NUMPY_MADVISE_HUGEPAGE", "1")
        with memory.small_pages():
            assert _hugepages_on()
    finally:
        memory._switch(before)


@needs_switch
def test_data_steps_run_with_small_pages(monkeypatch) -> None:
    """The generator, the event view and the table set-up allocate without huge pages (utils/memory.py)."""
    from clm_torch.data import datamodules, events, synthetic

    monkeypatch.delenv("NUMPY_MADVISE_HUGEPAGE", raising=False)
    seen = {}

    def spy(name, fn):
        def wrapped(*args, **kwargs):
            seen[name] = _hugepages_on()
            return fn(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(synthetic, "_catalogue", spy("generator", synthetic._catalogue))
    monkeypatch.setattr(events, "_factorize", spy("view", events._factorize))
    monkeypatch.setattr(datamodules, "clean_table", spy("setup", datamodules.clean_table))
    before = _hugepages_on()
    base = synthetic.generate_customer_base(300, events_per_customer=3, seed=1)
    events.build_customer_view(base.events, base.cutoff, horizon_days=base.horizon_days)
    TableDataModule(FrameSource(base.customers, target="churn", id_col="customer_id"), batch_size=64).setup("fit")
    assert seen == {"generator": False, "view": False, "setup": False}
    assert _hugepages_on() == before
