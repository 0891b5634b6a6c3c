"""data=parquet_shards: each rank reads only its own Parquet shards.

Ranks are simulated here with the DataModule's ``rank``/``world_size`` arguments (no processes);
the real two-process run through the CLI is in ``test_ddp.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from clm_torch.data.schema import SchemaError
from clm_torch.data.sharded import LocalBatchSampler, ShardedTableDataModule, hash_split, rank_loss_scale
from tests.conftest import messy_table


def write_shards(frame: pd.DataFrame, directory: Path, n: int, salt: int = 0) -> Path:
    """``frame`` in ``n`` Parquet files, by a hash of the customer id (``salt`` changes the hash)."""
    directory.mkdir(parents=True, exist_ok=True)
    h = pd.util.hash_pandas_object(frame["customer_id"].astype(str) + f"/{salt}", index=False).to_numpy() % n
    for k in range(n):
        frame[h == k].to_parquet(directory / f"part-{k:03d}.parquet", index=False)
    return directory


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return messy_table(1500)


def _same(a, b) -> bool:  # noqa: ANN001 - nested dicts/lists of tensors and plain values
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and bool(torch.equal(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b or (a != a and b != b)  # NaN equals NaN here


def _dm(path: Path, rank: int = 0, world: int = 1, **kw) -> ShardedTableDataModule:
    kw.setdefault("sample_rows", 600)
    dm = ShardedTableDataModule(str(path), target="churn", id_col="customer_id", rank=rank, world_size=world,
                                batch_size=64, **kw)
    dm.setup()
    return dm


def test_ranks_hold_disjoint_rows_encoded_as_by_one_process(table: pd.DataFrame, tmp_path: Path) -> None:
    """Two ranks together hold every customer of every split once, encoded exactly as one process
    that reads all shards; the fitted preprocessing is the same whatever the rank."""
    shards = write_shards(table, tmp_path / "s5", 5)
    one, r0, r1 = _dm(shards), _dm(shards, 0, 2), _dm(shards, 1, 2)
    assert [f.name for f in r0.my_shards()] == ["part-000.parquet", "part-002.parquet", "part-004.parquet"]
    assert _same(r0.preprocessing_state(), one.preprocessing_state())
    assert _same(r1.preprocessing_state(), one.preprocessing_state())
    assert r0.model_kwargs() == one.model_kwargs()
    n_ids = table["customer_id"].nunique()
    assert sum(len(one.ids(s)) for s in ("train", "val", "test")) == n_ids  # duplicates dropped in their shard
    for split in ("train", "val", "test"):
        both = np.concatenate([r0.ids(split), r1.ids(split)])
        assert len(set(both)) == len(both) and set(both) == set(one.ids(split)), split
        where = {c: i for i, c in enumerate(one.ids(split))}
        for dm in (r0, r1):
            rows = torch.tensor([where[c] for c in dm.ids(split)])
            for k, t in dm.tensors[split].items():
                if k != "row":
                    assert torch.equal(t, one.tensors[split][k].index_select(0, rows)), (split, k)
    shares = [len(one.ids(s)) / n_ids for s in ("train", "val", "test")]
    np.testing.assert_allclose(shares, [0.70, 0.15, 0.15], atol=0.04)


def test_the_split_follows_the_customer_not_the_sharding(table: pd.DataFrame, tmp_path: Path) -> None:
    a = _dm(write_shards(table, tmp_path / "a", 3, salt=1), 1, 3)
    b = _dm(write_shards(table, tmp_path / "b", 4, salt=2))
    for split in ("train", "val", "test"):
        assert set(a.ids(split)) <= set(b.ids(split)), split
    codes = hash_split(pd.Series(["x", "y", "z"] * 2), (0.15, 0.15), 0, source="s", column="id")
    assert codes[:3].tolist() == codes[3:].tolist()  # a function of the id only
    other = hash_split(pd.Series([f"c{i}" for i in range(2000)]), (0.15, 0.15), 1, source="s", column="id")
    assert (other != hash_split(pd.Series([f"c{i}" for i in range(2000)]), (0.15, 0.15), 0, source="s",
                                column="id")).mean() > 0.2  # split_seed draws another split


def test_local_sampler_gives_every_rank_the_same_number_of_batches() -> None:
    """A smaller rank cuts its rows into as many (smaller) batches as the largest rank: every row once
    per epoch, no padding; the loss factor then weighs every row the same across ranks."""
    small, big = LocalBatchSampler(37, 7, shuffle=True, seed=3), LocalBatchSampler(50, 7, shuffle=True, seed=3)
    assert len(small) == len(big) == len(list(small)) == 7
    rows = torch.cat(list(LocalBatchSampler(37, 7, shuffle=True, seed=3))).tolist()
    assert sorted(rows) == list(range(37))  # every row exactly once
    assert {len(b) for b in LocalBatchSampler(37, 7, shuffle=True, seed=3)} == {5, 6}
    first, second = (torch.cat(list(s)).tolist() for s in [LocalBatchSampler(37, 7, shuffle=True, seed=3)] * 2)
    assert sorted(first) == sorted(second) and first != second  # a new permutation per epoch
    ev = LocalBatchSampler(37, 7, shuffle=False)
    assert torch.cat(list(ev)).tolist() == list(range(37))
    tiny = torch.cat(list(LocalBatchSampler(3, 7, shuffle=False))).tolist()
    assert len(tiny) == 7 and set(tiny) == {0, 1, 2}  # fewer rows than batches: the only case that repeats
    # the mean over ranks of (factor x the rank's mean loss) is the mean over all rows
    counts, losses = [37, 50, 13], [torch.rand(n) for n in (37, 50, 13)]
    mixed = sum(rank_loss_scale(counts, r) * losses[r].mean() for r in range(3)) / 3
    assert float(mixed) == pytest.approx(float(torch.cat(losses).mean()), rel=1e-6)
    assert rank_loss_scale([5], 0) == 1.0


def test_shard_problems_are_named_errors(table: pd.DataFrame, tmp_path: Path) -> None:
    shards = write_shards(table, tmp_path / "s2", 2)
    with pytest.raises(SchemaError, match="2 shards with rows for 3 ranks: every rank needs"):
        _dm(shards, 0, 3).tensors["train"]
    table.iloc[:0].to_parquet(shards / "part-009.parquet", index=False)  # an empty shard is not a rank's share
    with pytest.raises(SchemaError, match=r"2 shards with rows for 3 ranks \(1 more are empty\)"):
        _dm(shards, 2, 3).tensors["train"]
    (shards / "part-009.parquet").unlink()
    with pytest.raises(SchemaError, match="no Parquet shards found"):
        ShardedTableDataModule(str(tmp_path / "nothing-*.parquet"), target="churn", id_col="customer_id")
    with pytest.raises(SchemaError, match="data.id_col is required"):
        ShardedTableDataModule(str(shards), target="churn")
    with pytest.raises(ValueError, match="clip_outliers"):
        ShardedTableDataModule(str(shards), target="churn", id_col="customer_id", clean={"clip_outliers": 3})
    bad = table.copy()
    bad.loc[bad.index[7], "customer_id"] = None
    broken = write_shards(bad.iloc[:700], tmp_path / "b1", 1)
    write_shards(table.iloc[700:], tmp_path / "b2", 1)
    (tmp_path / "b2" / "part-000.parquet").rename(broken / "part-001.parquet")
    with pytest.raises(SchemaError) as err:
        _dm(broken, sample_rows=10**6)
    assert "column 'customer_id', row 7: missing customer id" in str(err.value)
    assert str(err.value).startswith(str(broken / "part-000.parquet"))  # the shard and its own row
    table.iloc[:700].to_parquet(broken / "part-000.parquet", index=False)
    table.iloc[700:].drop(columns="churn").to_parquet(broken / "part-001.parquet", index=False)
    with pytest.raises(SchemaError, match=r"part-001\.parquet, column 'churn': target not found"):
        _dm(broken)
    table.iloc[700:].assign(extra=1).to_parquet(broken / "part-001.parquet", index=False)
    with pytest.raises(SchemaError, match=r"part-001\.parquet, column 'extra': the shards differ in their columns"):
        _dm(broken)


def test_a_column_of_another_type_in_one_shard_is_refused_in_training_and_evaluation(table: pd.DataFrame,
                                                                                       tmp_path: Path) -> None:
    """A shard whose column is text where the others hold numbers (or booleans where they hold
    'Yes'/'No') used to train without a word, the column turned into a category for every shard; the
    evaluation source read a shard without a column as NaN. Both are named errors now; int and float
    (a missing value in one shard) are one kind, and so is an all-missing column."""
    from clm_torch.data.sharded import ParquetShardsSource, shard_files

    shards = write_shards(table, tmp_path / "s", 3)
    part = pd.read_parquet(shards / "part-002.parquet")
    part.assign(tenure=part["tenure"].astype(str) + " months").to_parquet(shards / "part-002.parquet", index=False)
    with pytest.raises(SchemaError, match=r"part-002\.parquet, column 'tenure': text in this shard but number in "
                                          r"part-000\.parquet"):
        _dm(shards)
    source = ParquetShardsSource(shard_files(shards), str(shards), "churn", "customer_id", {}, [])
    with pytest.raises(SchemaError, match=r"part-002\.parquet, column 'tenure': text in this shard"):
        source.load()
    part.drop(columns="region").to_parquet(shards / "part-002.parquet", index=False)
    with pytest.raises(SchemaError, match=r"part-002\.parquet, column 'region': the shards differ in their columns"):
        source.load()
    # an all-missing column in the first shard does not hide text in one shard and numbers in another
    part0 = pd.read_parquet(shards / "part-000.parquet")
    part0.assign(tenure=None).to_parquet(shards / "part-000.parquet", index=False)
    part.assign(tenure=part["tenure"].astype(str)).to_parquet(shards / "part-002.parquet", index=False)
    with pytest.raises(SchemaError, match=r"part-002\.parquet, column 'tenure': text in this shard but number in "
                                          r"part-001\.parquet"):
        source.load()
    part0.to_parquet(shards / "part-000.parquet", index=False)
    # Arrow's string_view is text like string
    import pyarrow as pa
    import pyarrow.parquet as pq

    view = pa.Table.from_pandas(part, preserve_index=False)
    i = view.schema.get_field_index("customer_id")
    view = view.set_column(i, pa.field("customer_id", pa.string_view()), view.column(i).cast(pa.string_view()))
    pq.write_table(view, shards / "part-002.parquet")
    assert len(source.load().frame) == len(table)
    part.assign(tenure=part["tenure"].astype(float), region=None).to_parquet(shards / "part-002.parquet", index=False)
    assert len(source.load().frame) == len(table) and _dm(shards).encoder.feature_columns == _dm(
        write_shards(table, tmp_path / "ok", 3)).encoder.feature_columns


def test_clm_evaluate_names_the_shard_and_its_row_of_a_bad_value(table: pd.DataFrame, tmp_path: Path) -> None:
    """data=parquet_shards is scored as one table; a bad value used to be named by its row in all
    shards together under the folder's name. The error names the shard file and the row within it,
    also after duplicate ids in an earlier shard were dropped."""
    from clm_torch.data.datamodules import TableDataModule
    from clm_torch.data.sharded import ParquetShardsSource, shard_files
    from clm_torch.data.sources.tables import FrameSource
    from clm_torch.evaluate import evaluate_model
    from clm_torch.models.churn import ChurnClassifier

    dm = TableDataModule(FrameSource(table, target="churn", id_col="customer_id"), batch_size=64)
    dm.setup("fit")
    model = ChurnClassifier(**dm.model_kwargs(), k_ensemble=2, hidden=[8], d_embed=4)
    model.set_preprocessing(dm.preprocessing_state())
    shards = tmp_path / "s"
    shards.mkdir()
    parts = [table.iloc[:500], table.iloc[500:1000], table.iloc[1000:]]
    parts[0] = pd.concat([parts[0], parts[0].iloc[:3]], ignore_index=True)  # 3 repeated ids: dropped when scored
    parts = [p.astype({"tenure": "string"}) for p in parts]  # text in every shard (one kind per column)
    parts[2].iloc[17, parts[2].columns.get_loc("tenure")] = "seven"
    for k, part in enumerate(parts):
        part.to_parquet(shards / f"part-{k:03d}.parquet", index=False)
    data = ParquetShardsSource(shard_files(shards), str(shards), "churn", "customer_id", {}, []).load()
    assert data.parts == tuple((str(shards / f"part-{k:03d}.parquet"), len(p)) for k, p in enumerate(parts))
    with pytest.raises(SchemaError, match=r"part-002\.parquet, column 'tenure', row 17: expected a number but found "
                                          r"'seven'"):
        evaluate_model(model, data)


def test_empty_shards_other_column_orders_and_float_ids(table: pd.DataFrame, tmp_path: Path) -> None:
    """Spark/Dask write empty partitions; writers may order columns differently; an id column that a
    missing value made float elsewhere (5.0) must land in the same split as the integer 5."""
    shards = write_shards(table, tmp_path / "s", 3)
    part = pd.read_parquet(shards / "part-001.parquet")
    part[part.columns[::-1]].to_parquet(shards / "part-001.parquet", index=False)  # reversed column order
    table.iloc[:0].to_parquet(shards / "part-009.parquet", index=False)  # an empty shard
    one = _dm(shards)
    assert sum(len(one.ids(s)) for s in ("train", "val", "test")) == table["customer_id"].nunique()
    ids = pd.Series(np.arange(2000))
    as_int = hash_split(ids, (0.15, 0.15), 0, source="s", column="id")
    assert (hash_split(ids.astype(float), (0.15, 0.15), 0, source="s", column="id") == as_int).all()


def test_the_sample_reads_only_the_row_groups_it_needs(table: pd.DataFrame, tmp_path: Path, monkeypatch) -> None:
    import pyarrow.parquet as pq

    from clm_torch.data import sharded

    d = tmp_path / "rg"
    d.mkdir()
    for k in range(2):
        pq.write_table(__import__("pyarrow").Table.from_pandas(table.iloc[k::2], preserve_index=False),
                       d / f"part-{k}.parquet", row_group_size=50)
    read = []
    real = pq.ParquetFile.read_row_groups
    monkeypatch.setattr(pq.ParquetFile, "read_row_groups", lambda self, groups, *a, **kw: (
        read.append(len(groups)), real(self, groups, *a, **kw))[1])
    dm = ShardedTableDataModule(str(d), target="churn", id_col="customer_id", sample_rows=120)
    dm.setup()
    assert read == [2, 2]  # 60 rows per shard: 2 of its 15 row groups, not all
    assert sharded._shard_rows(d / "part-0.parquet") == 750


def test_the_models_apply_the_rank_loss_factor(table: pd.DataFrame, tmp_path: Path) -> None:
    """CLMModule.guard_loss multiplies the training loss by the DataModule's loss_scale (1 elsewhere)."""
    from types import SimpleNamespace

    from clm_torch import ChurnClassifier

    dm = _dm(write_shards(table, tmp_path / "s", 2))
    model = ChurnClassifier(**dm.model_kwargs())
    assert float(model.guard_loss(torch.tensor(2.0), 0)) == 2.0  # no trainer
    model._trainer = SimpleNamespace(datamodule=SimpleNamespace(loss_scale=0.25))
    assert float(model.guard_loss(torch.tensor(2.0), 0)) == 0.5
    model._trainer = SimpleNamespace(datamodule=None)
    assert float(model.guard_loss(torch.tensor(2.0), 0)) == 2.0


def test_a_process_that_only_writes_predictions_encodes_only_the_test_rows(table: pd.DataFrame,
                                                                          tmp_path: Path) -> None:
    """The process that launched ddp_spawn writes predictions/test.csv: it keeps the test rows only."""
    shards = write_shards(table, tmp_path / "s", 3)
    full = _dm(shards)
    only = ShardedTableDataModule(str(shards), target="churn", id_col="customer_id", sample_rows=600)
    only.load_local(("test",))
    assert set(only.tensors) == {"test"} and (only.ids("test") == full.ids("test")).all()
    for k, t in only.tensors["test"].items():
        assert torch.equal(t, full.tensors["test"][k]), k
    assert len(only.ids("train")) == len(full.ids("train"))  # asking for another split reads them all
    assert set(only.tensors) == {"train", "val", "test"}


def _split_of(frame: pd.DataFrame) -> np.ndarray:
    """The split code of each row as ShardedTableDataModule draws it (defaults: 0.15/0.15, seed 0)."""
    return hash_split(frame["customer_id"], (0.15, 0.15), 0, source="s", column="customer_id")


def test_a_split_with_one_class_is_refused_and_a_small_split_warned(table: pd.DataFrame, tmp_path: Path,
                                                                   caplog) -> None:
    """As data=csv does (TableDataModule): a validation split of one class stops the run with the
    split and the counts named, before training; a small evaluation split is a warning."""
    import logging

    one_class = table.assign(churn=np.where(_split_of(table) == 1, "No", table["churn"]))
    dm = _dm(write_shards(one_class, tmp_path / "one", 3))
    n_val, n_pos = len(dm.ids("val")), int((one_class["churn"] == "Yes").sum())
    with pytest.raises(SchemaError, match=rf"one, column 'churn': the val split \({n_val} rows\) holds one class of "
                                          rf"'churn' only \({n_pos} positives in {len(table)} rows\)"):
        dm.train_dataloader()  # the first loader checks every split
    with caplog.at_level(logging.WARNING, logger="clm_torch.data.sharded"):
        small = _dm(write_shards(table.iloc[:200], tmp_path / "small", 2), sample_rows=200)
        small.train_dataloader()
        small.val_dataloader()
    assert caplog.text.count("small evaluation splits") == 1  # once, not per loader
    assert f"small evaluation splits {{'val': {len(small.ids('val'))}, 'test': {len(small.ids('test'))}}}" \
        in caplog.text


def test_the_one_class_check_sums_the_ranks_counts(table: pd.DataFrame, tmp_path: Path, monkeypatch) -> None:
    """Under DDP a rank's share of a split may hold one class while the split holds both: the check
    runs on the counts gathered from every rank, so all ranks agree (here rank 0 of 2, with rank 1's
    counts faked in the all-gather)."""
    import torch.distributed as dist

    code = _split_of(table)
    shards = write_shards(table.assign(churn=np.where(code == 1, "No", table["churn"])), tmp_path / "s", 2)
    dm = _dm(shards, 0, 2)
    other: dict[str, tuple[int, int]] = {}
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "get_rank", lambda: 0)
    monkeypatch.setattr(dist, "broadcast_object_list", lambda box, src=0: None)  # the shuffle seed: rank 0's
    monkeypatch.setattr(dist, "all_gather_object", lambda out, mine: out.__setitem__(
        slice(None), [mine, (other["train"][0], None, other)]))
    other.update(train=(500, 150), val=(60, 20), test=(60, 20))  # rank 1's val split holds both classes
    dm.train_dataloader()
    dm._checked.clear()
    other.update(val=(60, 0))
    n_val = len(dm.ids("val")) + 60
    with pytest.raises(SchemaError, match=rf"the val split \({n_val} rows on 2 ranks together\) holds one class"):
        dm.val_dataloader()


def test_a_loader_reads_a_split_that_load_local_left_out(table: pd.DataFrame, tmp_path: Path) -> None:
    """After load_local(("test",)) (the ddp_spawn launcher's predictions) a training loader reads the
    rest of the rank's rows instead of failing with KeyError: 'train'."""
    shards = write_shards(table, tmp_path / "s3", 3)
    dm = ShardedTableDataModule(str(shards), target="churn", id_col="customer_id", batch_size=64, sample_rows=600)
    dm.load_local(("test",))
    rows = torch.cat([b["row"] for b in dm.train_dataloader()])
    assert sorted(rows.tolist()) == list(range(len(dm.ids("train"))))
    assert len(dm.ids("test")) + len(dm.ids("val")) + len(rows) == len(table)


def test_shards_written_with_the_id_as_index_keep_the_id_column(table: pd.DataFrame, tmp_path: Path) -> None:
    """Shards written by ``set_index("customer_id").to_parquet()`` hold the id as pandas' index: it is
    read as the id column (every shard was refused with "id column not found")."""
    d = tmp_path / "indexed"
    d.mkdir()
    for k, part in enumerate((table.iloc[:700], table.iloc[700:])):
        part.set_index("customer_id").to_parquet(d / f"part-{k}.parquet")
    ids = np.concatenate([_dm(d, r, 2).ids(s) for r in range(2) for s in ("train", "val", "test")])
    assert sorted(ids) == sorted(table["customer_id"])


def test_shards_rows_without_a_label_are_refused_or_left_out_of_every_split(table: pd.DataFrame, tmp_path: Path,
                                                                             caplog) -> None:
    """data.drop_unlabelled on a sharded table: without it a missing target is refused naming the shard and
    its row and the setting; with it the sample leaves those rows out (one warning with the count and
    share) and every rank leaves them out of its splits: the same splits and preprocessing as shards
    written without them. One shard may be unlabelled throughout."""
    df = table.astype({"churn": object})
    unlabelled = np.random.default_rng(2).random(len(df)) < 0.1
    df.loc[unlabelled, "churn"] = np.nan
    shards = write_shards(df, tmp_path / "all", 4)
    ref = _dm(write_shards(df.loc[~unlabelled], tmp_path / "labelled", 4), sample_rows=10_000)
    with pytest.raises(SchemaError, match=r"part-00\d.parquet, column 'churn', row \d+: target has \d+ missing "
                                          r"values .*data.drop_unlabelled=true"):
        _dm(shards, sample_rows=10_000)
    with caplog.at_level("WARNING"):
        dm = _dm(shards, sample_rows=10_000, drop_unlabelled=True)
    said = [r.getMessage() for r in caplog.records if "without a label" in r.getMessage()]
    assert len(said) == 1 and f"dropped {int(unlabelled.sum())} of {len(df)} sampled rows" in said[0], said
    assert _same(dm.preprocessing_state(), ref.preprocessing_state())
    gone = set(df.loc[unlabelled, "customer_id"])
    for split in ("train", "val", "test"):
        assert not gone & set(dm.ids(split)) and list(dm.ids(split)) == list(ref.ids(split)), split
        assert _same(dm.tensors[split], ref.tensors[split]), split
    new = df.loc[~unlabelled].assign(customer_id=lambda f: f["customer_id"] + "n", churn=np.nan).iloc[:50]
    new = new.astype({"churn": "string"})  # a text column, as in the other shards, null in every row
    new.to_parquet(shards / "part-new.parquet", index=False)  # a shard of customers inside their label window
    assert sum(len(_dm(shards, drop_unlabelled=True).ids(s)) for s in ("train", "val", "test")) == \
        sum(len(ref.ids(s)) for s in ("train", "val", "test"))
