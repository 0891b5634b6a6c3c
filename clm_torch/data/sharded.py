"""A customer table in Parquet shards, each rank reading only its own (``data=parquet_shards``).

For tables larger than one machine's memory. The table is split into Parquet files (shards), best
by a hash of the customer id so that the rows of one customer share a shard. Under DDP with ``W``
ranks, rank ``r`` reads shards ``r, r + W, r + 2W, ...`` and nothing else:

* **Preprocessing.** The schema and the :class:`~clm_torch.data.encoding.FeatureEncoder` are fitted
  on a sample of ``sample_rows`` rows drawn from every shard (one shard in memory at a time). The
  draw is seeded, so every rank fits the same encoder without any communication, and the
  checkpoint's preprocessing does not depend on the number of ranks.
* **Split.** A row's split follows from a hash of its customer id (seeded by ``split_seed``), so a
  customer is in the same split whatever the sharding and the number of ranks.
* **Batches.** Every rank batches only its own rows (no further sharding). DDP needs the same
  number of steps on every rank: training pads a rank's shuffled rows, by wrapping, to the row
  count of the largest rank; evaluation cuts each rank's rows into the same number of batches, so
  every row is seen once (metrics are gathered over the ranks).

Cleaning runs per shard: duplicate ids are dropped within a shard (shard by id so that duplicates
meet), and ``clean.clip_outliers`` (per-table statistics) is refused.
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Sampler

from clm_torch.data.cleaning import clean_table
from clm_torch.data.datamodules import (TableDataModule, TensorTable, _dist_info, check_both_classes,
                                        drop_unlabelled_rows, loader_generator, shuffle_seed, warn_small_splits)
from clm_torch.data.encoding import FeatureEncoder
from clm_torch.data.schema import (SchemaError, TableSchema, check_drop, index_as_columns, infer_schema,
                                   ints_if_whole)
from clm_torch.data.sources.tables import TableData

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def shard_files(path: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """The shards named by ``path``: a directory (its ``*.parquet`` files), a glob pattern, or a list
    of files; sorted by name, so that every rank sees the same list."""
    if isinstance(path, (list, tuple)):
        files = [Path(p) for p in path]
        name = f"{len(files)} files"
    else:
        p, name = Path(str(path)), str(path)
        if p.is_dir():
            files = [f for f in p.iterdir() if f.suffix.lower() in (".parquet", ".pq") and f.is_file()]
        else:
            files = [Path(f) for f in glob.glob(str(path))]
    if not files:
        raise SchemaError("no Parquet shards found (give a directory of .parquet files, a glob pattern such as "
                          "'shards/part-*.parquet', or a list of files)", source=name)
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise SchemaError("shard file not found", source=str(missing[0]))
    return sorted(files, key=lambda f: str(f))


def _shard_meta(f: Path) -> tuple[int, dict[str, str]]:
    """A shard's number of rows and the kind of each column (:func:`_column_kind`), from its metadata."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(f)
        kinds = {field.name: _column_kind(field.type) for field in pf.schema_arrow
                 if not field.name.startswith("__index_level_")}
        return int(pf.metadata.num_rows), kinds
    except Exception as e:  # noqa: BLE001 - any unreadable shard is the user's file problem
        raise SchemaError(f"cannot read Parquet shard: {type(e).__name__}: {e}", source=str(f)) from None


def _shard_rows(f: Path) -> int:
    return _shard_meta(f)[0]


def _column_kind(t: Any) -> str:
    """An Arrow type's family: a shard's column may be int in one file and float in another (a
    missing value), but not text in one and numbers in another."""
    import pyarrow as pa

    if pa.types.is_dictionary(t):
        t = t.value_type
    tests = [("null", "is_null"), ("bool", "is_boolean"), ("text", "is_string"), ("text", "is_large_string"),
             ("text", "is_string_view"), ("bytes", "is_binary"), ("bytes", "is_large_binary"),
             ("bytes", "is_binary_view"), ("datetime", "is_temporal")]
    for kind, name in tests:
        test = getattr(pa.types, name, None)  # the *_view types are newer than some pyarrow versions
        if test is not None and test(t):
            return kind
    return "number" if (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)) else str(t)


def check_shard_columns(files: Sequence[Path], required: Mapping[str, str] = {}) -> list[int]:
    """The number of rows of each shard, once the non-empty shards are checked to hold the same
    columns (in any order), each of one kind (numbers, text, booleans, times; int and float are one
    kind): read from the files' metadata, so that a column written as text in one shard cannot make
    the whole table's column a category (or missing). ``required``: column → what it is
    (``"target"``), named when a shard lacks it."""
    first: tuple[Path, dict[str, str]] | None = None
    kind_of: dict[str, tuple[str, Path]] = {}  # column -> its kind, from the first shard where it is not all-null
    sizes = []
    for f in files:
        n, kinds = _shard_meta(f)
        sizes.append(n)
        if n == 0:
            continue
        for col, what in required.items():
            if col not in kinds:
                raise SchemaError(f"{what} not found; columns are {list(kinds)}", source=str(f), column=col)
        if first is None:
            first = (f, kinds)
        ref_file, ref = first
        extra = [c for c in kinds if c not in ref]
        lost = [c for c in ref if c not in kinds]
        if extra or lost:
            what = f"not in {ref_file.name}" if extra else f"missing ({ref_file.name} has it)"
            raise SchemaError(f"the shards differ in their columns: this one is {what}", source=str(f),
                              column=(extra or lost)[0])
        for col, kind in kinds.items():
            if kind == "null":
                continue
            seen = kind_of.setdefault(col, (kind, f))
            if kind != seen[0]:
                raise SchemaError(f"{kind} in this shard but {seen[0]} in {seen[1].name}: write the column with "
                                  "one type in every shard", source=str(f), column=col)
    return sizes


def _sample_shard(f: Path, k: int, rng: np.random.Generator) -> pd.DataFrame:
    """``k`` rows of shard ``f`` drawn with ``rng``, reading only as many of its row groups (chosen at
    random) as hold ``k`` rows: a shard written as one row group is read whole."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(f)
        sizes = np.array([pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)])
        order = rng.permutation(len(sizes))
        groups = sorted(order[: int(np.searchsorted(np.cumsum(sizes[order]), k)) + 1].tolist())
        starts = np.concatenate([[0], np.cumsum(sizes)])
        df = index_as_columns(pf.read_row_groups(groups).to_pandas())
        df.index = np.concatenate([np.arange(starts[g], starts[g + 1]) for g in groups])  # rows of the shard
    except Exception as e:  # noqa: BLE001 - an unreadable shard is the user's file problem
        raise SchemaError(f"cannot read Parquet shard: {type(e).__name__}: {e}", source=str(f)) from None
    if k < len(df):
        df = df.iloc[np.sort(rng.choice(len(df), size=k, replace=False))]
    return df


def _read_shard(f: Path) -> pd.DataFrame:
    from clm_torch.data.schema import read_table

    return read_table(f, what="Parquet shard")


def hash_split(ids: pd.Series, fractions: tuple[float, float], seed: int, *, source: str,
               column: str) -> np.ndarray:
    """Split code per row (0 train, 1 val, 2 test) from a seeded hash of the customer id: the same
    for a customer in any shard, on any rank. ``fractions`` = (val, test)."""
    if ids.isna().any():
        first = ids.index[ids.isna().to_numpy()][0]
        raise SchemaError("missing customer id: the split of a sharded table hashes the id", source=source,
                          column=column, row=first)
    key = f"{int(seed) % 10**13:013d}clm"  # hash_pandas_object takes a 16-character key
    ids = ints_if_whole(ids)  # 5.0 (a column that a missing value made float elsewhere) hashes as 5
    h = pd.util.hash_pandas_object(ids.astype(str), index=False, hash_key=key).to_numpy()
    u = (h >> np.uint64(11)).astype(np.float64) / 2.0**53
    val, test = fractions
    return np.where(u < 1.0 - val - test, 0, np.where(u < 1.0 - test, 1, 2)).astype(np.int8)


class LocalBatchSampler(Sampler[torch.Tensor]):
    """``n_batches`` index batches over one rank's own rows (no sharding by rank).

    Every rank yields the same number of batches (DDP needs it), each rank's rows cut into that many
    nearly equal chunks: every row exactly once per epoch, a fresh permutation per epoch when
    ``shuffle``, in order otherwise. So a rank's batches are as large as its share of the rows (see
    :func:`rank_loss_scale` for the loss weight that keeps every row's gradient weight equal). Only a
    rank with fewer rows than batches repeats rows (wrapping) to fill its batches.
    """

    def __init__(self, n: int, n_batches: int, *, shuffle: bool, seed: int = 0) -> None:
        if n < 1:
            raise ValueError("a rank holds no rows of this split")
        if n_batches < 1:
            raise ValueError(f"n_batches must be >= 1, got {n_batches}")
        self.n, self.n_batches, self.shuffle, self.seed = int(n), int(n_batches), shuffle, int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _batches(self) -> list[torch.Tensor]:
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + 7919 * self.epoch))
        else:
            order = torch.arange(self.n)
        if self.n < self.n_batches:  # too few rows for one per batch: wrap
            order = order[torch.arange(self.n_batches) % self.n]
        return list(torch.tensor_split(order, self.n_batches))

    def __iter__(self) -> Iterator[torch.Tensor]:
        yield from self._batches()
        if self.shuffle:
            self.epoch += 1

    def __len__(self) -> int:
        return self.n_batches


def rank_loss_scale(counts: Sequence[int], rank: int) -> float:
    """The factor on rank ``rank``'s mean training loss that makes DDP's average of the ranks'
    gradients the mean over every row: ``W · n_rank / Σ n``. Rank r's batches hold about
    ``n_r / n_batches`` rows, so without it a row on a small rank would weigh more than one on a
    large rank."""
    total = float(sum(counts))
    return len(counts) * counts[rank] / total if total > 0 else 1.0


class ParquetShardsSource:
    """All shards as one table (``load()``): what ``clm-evaluate`` reads; training reads per rank."""

    def __init__(self, files: Sequence[Path], name: str, target: str | None, id_col: str | None,
                 roles: Mapping[str, Sequence[str]], drop: Sequence[str]) -> None:
        self.files, self.name, self.target, self.id_col = list(files), name, target, id_col
        self.roles, self.drop = {k: list(v) for k, v in roles.items()}, list(drop)

    def load(self) -> TableData:
        sizes = check_shard_columns(self.files, {c: w for c, w in ((self.id_col, "id column"),) if c})
        parts = tuple((str(f), n) for f, n in zip(self.files, sizes) if n > 0)
        frame = pd.concat([_read_shard(Path(f)) for f, _ in parts], ignore_index=True)
        return TableData(frame, name=self.name, target=self.target, id_col=self.id_col, roles=self.roles,
                         drop=self.drop, parts=parts)


class ShardedTableDataModule(TableDataModule):
    """A customer table in Parquet shards; each rank reads, cleans and encodes only its own shards.

    Args:
        path: a directory of ``.parquet`` files, a glob pattern, or a list of files.
        target, id_col, roles, drop: as ``data=parquet``; ``id_col`` is required (the split hashes it).
        sample_rows: rows drawn over all shards to infer the schema and fit the encoder.
        rank, world_size: this process's shard set (default: ``torch.distributed``'s rank and world
            size when initialised, else 0 of 1); for custom launchers and tests.
        Other arguments: as :class:`~clm_torch.data.datamodules.TableDataModule`.
    """

    rank_local = True  # each rank holds other rows: train() gathers the test predictions

    def __init__(self, path: str | Sequence[str], target: str | None = None, id_col: str | None = None,
                 roles: Mapping[str, Sequence[str]] | None = None, drop: Sequence[str] = (),
                 sample_rows: int = 200_000, rank: int | None = None, world_size: int | None = None,
                 require_target: bool | None = None, clean: Mapping[str, Any] | None = None,
                 frame_transform: Callable[..., pd.DataFrame] | None = None, **kwargs: Any) -> None:
        if path is None or str(path) in ("", "???"):
            raise SchemaError("no shards given: set data.path=<directory of .parquet files or a glob>", source="data.path")
        if not id_col:
            raise SchemaError("data.id_col is required for a sharded table: a row's split is a hash of its customer "
                              "id, so that every rank agrees without reading the other shards", source="data.id_col")
        if (clean or {}).get("clip_outliers") is not None:
            raise ValueError("data.clean.clip_outliers needs statistics of the whole table; a sharded table cleans "
                             "each shard on its own: leave it null (data.encoder.clip_to_range bounds the encoded "
                             "values instead)")
        if int(sample_rows) < 1:
            raise ValueError(f"data.sample_rows must be >= 1, not {sample_rows}")
        kwargs.pop("test_frame", None)
        files = shard_files(path)
        name = str(path) if not isinstance(path, (list, tuple)) else f"{len(files)} Parquet shards"
        source = ParquetShardsSource(files, name, target, id_col, dict(roles or {}), list(drop or ()))
        super().__init__(source, require_target=target is not None if require_target is None else require_target,
                         clean=clean, frame_transform=frame_transform, **kwargs)
        self.files, self.name, self.sample_rows = files, name, int(sample_rows)
        self._rank_override = None if rank is None else (int(rank), int(world_size or 1))
        self._local: tuple[tuple[int, int], frozenset] | None = None  # ((rank, world), splits) self._tensors holds
        self._sample: dict[str, pd.DataFrame] = {}
        self._ids: dict[str, np.ndarray] = {}
        self._clean_schema: TableSchema | None = None
        self._sizes: dict[Path, int] = {}
        self._columns: list[str] = []
        self.loss_scale = 1.0  # this rank's training-loss factor (rank_loss_scale), read by CLMModule.guard_loss
        self.target_mean: float | None = None
        self._checked: set[str] = set()  # splits already checked (_check_splits): warned once, not per loader

    # tensors of this rank's shards, read when first used (after the process group exists)
    @property
    def tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        """This rank's encoded splits, read on first use (every split, unless :meth:`load_local` chose)."""
        if self._ready and (self._local is None or self._local[0] != self.rank_world()):
            self._ensure_local()
        return self._tensors

    @tensors.setter
    def tensors(self, value: dict[str, dict[str, torch.Tensor]]) -> None:
        self._tensors = value

    def rank_world(self) -> tuple[int, int]:
        return self._rank_override or _dist_info()

    def my_shards(self) -> list[Path]:
        """This rank's shards: every ``world``-th of the non-empty ones (empty shards hold no rows)."""
        rank, world = self.rank_world()
        files = [f for f in self.files if self._sizes.get(f, 1) > 0]
        if len(files) < world:
            empty = len(self.files) - len(files)
            raise SchemaError(f"{len(files)} shards with rows for {world} ranks"
                              + (f" ({empty} more are empty)" if empty else "")
                              + ": every rank needs at least one (split the table into more files)", source=self.name)
        return files[rank::world]

    # ------------------------------------------------------------------ setup: preprocessing from a sample
    def setup(self, stage: str | None = None) -> None:
        if self._ready:
            return
        data = self.source
        target = data.target if self.require_target else None
        sizes = check_shard_columns(self.files, {c: w for c, w in ((data.target, "target"), (data.id_col, "id column"))
                                                 if c})
        total = sum(sizes)
        if total == 0:
            raise SchemaError("the shards hold no rows", source=self.name)
        self._sizes = dict(zip(self.files, sizes))
        parts: list[pd.DataFrame] = []
        sampled = 0  # rows sampled, labelled or not
        for i, (f, n_f) in enumerate(zip(self.files, sizes)):
            if n_f == 0:  # Spark and Dask write empty partitions
                continue
            k = n_f if self.sample_rows >= total else min(n_f, -(-self.sample_rows * n_f // total))
            df = _sample_shard(f, k, np.random.default_rng([self.split_seed, i]))
            self._check_shard(df, str(f), parts[0] if parts else None)
            sampled += len(df)
            if target:  # rows without a label: refused (naming the shard's row), or left out of the sample
                df = drop_unlabelled_rows(df, target, drop=self.drop_unlabelled, source=str(f), whole=False,
                                          level=logging.DEBUG)
            parts.append(df[list(parts[0].columns)] if parts else df)
        self._columns = list(parts[0].columns)
        sample = pd.concat(parts, ignore_index=True)
        if target and len(sample) < sampled:
            if len(sample) == 0:
                raise SchemaError(f"target column is entirely empty in the sample ({sampled} rows): no row has a "
                                  "label to learn from", source=self.name, column=target)
            log.warning("%s, column '%s': dropped %d of %d sampled rows (%.1f %%) without a label "
                        "(data.drop_unlabelled=true); every rank leaves such rows of its shards out of every split",
                        self.name, target, sampled - len(sample), sampled, 100 * (sampled - len(sample)) / sampled)
        check_drop(data.drop, sample.columns, source=self.name)
        if not self.require_target and data.target and data.target in sample.columns:
            sample = sample.drop(columns=[data.target])
        schema = infer_schema(sample, target=target, id_col=data.id_col, overrides=data.roles, drop=data.drop,
                              source=f"{self.name} [sample]", date_format=self.date_format)
        if not schema.features:
            raise SchemaError("no feature columns left after removing id, target and dropped columns", source=self.name)
        clean, self.report = clean_table(sample, schema, source=f"{self.name} [sample]", **self.clean_kwargs)
        self._clean_schema = schema  # before frame_transform's columns: what each shard is cleaned with
        frames = self._split(clean, schema, f"{self.name} [sample]")
        for split, f in frames.items():
            if len(f) == 0:
                raise SchemaError(f"the sample's {split} split is empty: raise data.sample_rows ({self.sample_rows}) "
                                  f"or the {split} share", source=self.name)
        if self.frame_transform is not None:
            frames = {k: self.frame_transform(f, source=f"{self.name} [sample, {k} split]") for k, f in frames.items()}
            added = [c for c in frames["train"].columns if c not in clean.columns]
            schema = dataclasses.replace(schema, numeric=[*schema.numeric, *added])
        self.schema = schema
        self.encoder = FeatureEncoder.from_schema(schema, **self.encoder_kwargs_target, **self.encoder_kwargs).fit(
            frames["train"], source=f"{self.name} [sample, train split]")
        self._sample = frames
        if target:
            y = self.encoder.transform(frames["train"], source=f"{self.name} [sample]", require_target=True)["y"]
            self.target_mean = float(y.double().clamp_min(0).mean())  # a net refund counts 0, as in the spend loss
        self._ready = True
        log.info("data %s: %d shards, %d rows; preprocessing fitted on a sample of %d rows",
                 self.name, len(self.files), total, len(sample))

    def _check_shard(self, df: pd.DataFrame, source: str, first: pd.DataFrame | None) -> None:
        """Every shard (each is read once for the sample): the id and target columns, no missing id,
        and the columns of the first shard."""
        for col, what in ((self.source.target, "target"), (self.source.id_col, "id column")):
            if col and col not in df.columns:
                raise SchemaError(f"{what} not found; columns are {list(df.columns)}", source=source, column=col)
        ids = df[self.source.id_col]
        if ids.isna().any():
            raise SchemaError(f"missing customer id ({int(ids.isna().sum())} rows): the split of a sharded table "
                              "hashes the id", source=source, column=self.source.id_col,
                              row=ids.index[ids.isna().to_numpy()][0])
        if first is not None and set(df.columns) != set(first.columns):  # another order is fine
            extra = [c for c in df.columns if c not in first.columns]
            lost = [c for c in first.columns if c not in df.columns]
            what = "not in the first shard" if extra else "missing (the first shard has it)"
            raise SchemaError(f"the shards differ in their columns: this one is {what}", source=source,
                              column=(extra or lost)[0])

    def _split(self, clean: pd.DataFrame, schema: TableSchema, source: str) -> dict[str, pd.DataFrame]:
        code = hash_split(clean[schema.id_col], (self.val_size, self.test_size), self.split_seed, source=source,
                          column=schema.id_col)
        return {split: clean.iloc[np.flatnonzero(code == j)] for j, split in enumerate(SPLITS)}

    # ------------------------------------------------------------------ this rank's rows
    def load_local(self, splits: Sequence[str] = SPLITS) -> None:
        """Read, clean and encode this rank's shards, keeping only ``splits`` (``train()`` asks for the
        test split alone where it only writes predictions, e.g. in the process that launched
        ``ddp_spawn``). Nothing is read again when those splits are already held."""
        self.setup()
        self._ensure_local(tuple(splits))

    def _ensure_local(self, splits: tuple[str, ...] = SPLITS) -> None:
        rank_world = self.rank_world()
        if self._local is not None and self._local[0] == rank_world and set(splits) <= self._local[1]:
            return
        target = self.source.target if self.require_target else None
        pieces: dict[str, list[dict[str, torch.Tensor]]] = {s: [] for s in splits}
        ids: dict[str, list[np.ndarray]] = {s: [] for s in splits}
        for f in self.my_shards():
            if self._sizes.get(f, 1) == 0:
                continue
            raw = _read_shard(f)
            if set(raw.columns) != set(self._columns):
                self._check_shard(raw, str(f), pd.DataFrame(columns=self._columns))
            raw = raw[self._columns]
            if not self.require_target and self.source.target and self.source.target in raw.columns:
                raw = raw.drop(columns=[self.source.target])
            if target:  # the sample's rule for every row of the shard (the count: at the sample, as a share)
                raw = drop_unlabelled_rows(raw, target, drop=self.drop_unlabelled, source=str(f), whole=False,
                                           level=logging.INFO)
            clean, _ = clean_table(raw, self._clean_schema, source=str(f), **self.clean_kwargs)
            for split, part in self._split(clean, self.schema, str(f)).items():
                if len(part) == 0 or split not in splits:
                    continue
                if self.frame_transform is not None:
                    part = self.frame_transform(part, source=f"{f} [{split} split]")
                pieces[split].append(self.encoder.transform(part, source=f"{f} [{split} split]",
                                                            require_target=bool(target)))
                ids[split].append(part[self.schema.id_col].to_numpy())
            del raw, clean
        tensors: dict[str, dict[str, torch.Tensor]] = {}
        self._ids = {}
        for split in splits:
            if not pieces[split]:
                raise SchemaError(f"rank {rank_world[0]} of {rank_world[1]} has no rows in the {split} split: its "
                                  f"shards are too small", source=self.name)
            keys = pieces[split][0].keys()
            tensors[split] = {k: torch.cat([p[k] for p in pieces[split]]) for k in keys}
            tensors[split]["row"] = torch.arange(len(tensors[split][next(iter(keys))]))
            self._ids[split] = np.concatenate(ids[split])
        self._tensors = tensors
        self._local = (rank_world, frozenset(splits))
        log.info("data %s, rank %d of %d: %d shards, %s rows", self.name, rank_world[0], rank_world[1],
                 len(self.my_shards()), {k: len(v) for k, v in self._ids.items()})

    def model_kwargs(self) -> dict[str, Any]:
        """Sizes from the encoder; the positive rate from the sample (the same on every rank)."""
        self.setup()
        d = self.encoder.dims()
        if self.require_target and self.target_type == "binary" and self.target_mean is not None:
            d["pos_rate"] = self.target_mean
        return d

    def preprocessing_state(self) -> dict[str, Any]:
        self.setup()
        state = {"encoder": self.encoder.state_dict(), "schema": self.schema.to_dict(),
                 "cleaning": dict(self.clean_kwargs)}
        if self.target_type == "continuous" and self.target_mean is not None:
            state["target_mean"] = self.target_mean
        return state

    def ids(self, split: str) -> np.ndarray:
        """Customer ids of this rank's rows of ``split``."""
        self.setup()
        held = self._local[1] if self._local is not None and self._local[0] == self.rank_world() else frozenset()
        self._ensure_local(tuple(held) if split in held else SPLITS)
        return self._ids[split]

    def _split_counts(self) -> dict[str, tuple[int, int | None]]:
        """Rows and positives (None without a binary target) of each split this rank holds."""
        binary = self.require_target and self.target_type == "binary"
        return {s: (len(t["row"]), int((t["y"] > 0.5).sum()) if binary and "y" in t else None)
                for s, t in self._tensors.items()}

    def _check_splits(self, per_rank: Sequence[Mapping[str, tuple[int, int | None]]]) -> None:
        """TableDataModule's checks of the splits (both classes of a binary target; a warning when an
        evaluation split is small), on the counts summed over the ranks (``per_rank``: each rank's
        :meth:`_split_counts`): a rank whose share holds one class does not stop the run, and every
        rank reaches the same verdict, so all stop together with one message. Every split held is
        checked at the first loader, so a bad test split stops the run before training."""
        totals: dict[str, list[int]] = {}
        for counts in per_rank:
            for s, (rows, pos) in counts.items():
                total = totals.setdefault(s, [0, 0])
                total[0] += rows
                total[1] += pos or 0
        world = len(per_rank)
        todo = [s for s in SPLITS if s in totals and s not in self._checked]
        if not todo or world < self.rank_world()[1]:  # one rank's share of a world simulated without DDP: not the split
            return
        where = f" on {world} ranks together" if world > 1 else ""
        if self.require_target and self.target_type == "binary" and self.source.target:
            table = (sum(totals[s][1] for s in SPLITS), sum(totals[s][0] for s in SPLITS)) \
                if set(SPLITS) <= set(totals) else None
            for s in todo:
                check_both_classes(s, totals[s][0], totals[s][1], target=self.source.target, source=self.name,
                                   table=table, where=where)
        if world == 1 or self.rank_world()[0] == 0:
            warn_small_splits({s: totals[s][0] for s in todo}, self.name + (f" ({world} ranks together)" if world > 1
                                                                           else ""), logger=log)
        self._checked.update(todo)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        self.setup()
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        t, error = None, None
        try:
            if self._local is not None and self._local[0] == self.rank_world() and split not in self._local[1]:
                self._ensure_local(SPLITS)  # load_local chose other splits (e.g. the test split alone)
            t = self.tensors[split]
        except SchemaError as e:
            if not distributed:
                raise
            error = e
        n = 0 if t is None else len(t["row"])
        mine = (n, None if error is None else str(error), None if t is None else self._split_counts())
        gathered: list[Any] = [mine]
        if distributed:  # every rank's counts, or its error: one bad shard stops every rank with its message
            gathered = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, mine)
            if error is not None:
                raise error
            failed = [(r, m) for r, (_, m, _) in enumerate(gathered) if m is not None]
            if failed:
                raise SchemaError(f"(on rank {failed[0][0]}) {failed[0][1]}")
        counts = [c for c, _, _ in gathered]
        self._check_splits([c for _, _, c in gathered])  # the same totals, so the same verdict, on every rank
        rank = self.rank_world()[0] if len(counts) > 1 else 0
        n_batches = max(1, -(-max(counts) // (self.batch_size if shuffle else self.eval_batch_size)))
        if n < n_batches:
            log.warning("%s: rank %d holds %d %s rows for %d batches per rank; some rows repeat (rebalance the "
                        "shards)", self.name, rank, n, split, n_batches)
        if shuffle:
            self.loss_scale = rank_loss_scale(counts, rank)
        sampler = LocalBatchSampler(n, n_batches, shuffle=shuffle, seed=shuffle_seed(shuffle) + 104729 * rank)
        return DataLoader(TensorTable(t), sampler=sampler, batch_size=None, num_workers=self.num_workers,
                          pin_memory=self.pin_memory, persistent_workers=self.num_workers > 0,
                          generator=loader_generator(sampler.seed))


def sharded_table(path: str, **kwargs: Any) -> ShardedTableDataModule:
    """The ``data=parquet_shards`` config's target."""
    return ShardedTableDataModule(path, **kwargs)
