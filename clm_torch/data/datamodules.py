"""DataModules: encoded tensors stay in memory and whole batches are sliced with ``index_select``.

There is no per-row ``__getitem__``: :class:`IndexBatchSampler` yields a LongTensor of row indices
per batch and :class:`TensorTable` slices every tensor at once. The sampler shards by rank itself,
so trainers run with ``use_distributed_sampler=False``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Sampler

from clm_torch.data.cleaning import CleaningReport, clean_table
from clm_torch.data.encoding import FeatureEncoder
from clm_torch.data.schema import (SchemaError, TableSchema, check_date_format, check_drop, infer_schema,
                                   missing_cells, validate_target)
from clm_torch.data.sources.tables import TableData
from clm_torch.utils.memory import small_pages

log = logging.getLogger(__name__)


def _dist_info() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def shared_seed(seed: int) -> int:
    """``seed`` of rank 0 on every rank (a broadcast under DDP; ``seed`` itself otherwise).

    Every rank must shuffle with the same permutation, or the interleaved shards overlap and
    miss rows. Spawned workers (``ddp_spawn``) do not always start from the same global seed.
    """
    _, world = _dist_info()
    if world == 1:
        return int(seed)
    box = [int(seed)]
    torch.distributed.broadcast_object_list(box, src=0)
    return int(box[0])


def shuffle_seed(shuffle: bool) -> int:
    """The sampler seed of a DataModule's loader: this process's torch seed, rank 0's under DDP
    (:func:`shared_seed`), when ``shuffle``; 0 otherwise."""
    return shared_seed(torch.initial_seed() % 2**31) if shuffle else 0


class IndexBatchSampler(Sampler[torch.Tensor]):
    """Yields ``(batch,)`` LongTensors of row indices; shuffles per epoch with a fixed seed.

    Distributed (``torch.distributed`` initialised, world size ``W``), every rank yields the same
    number of batches, which DDP needs (collectives run once per step and per epoch):

    * training (``shuffle=True``): the shuffled order is padded by wrapping to a multiple of ``W``
      and rank ``r`` takes every ``W``-th row from ``r``. ``seed`` must be equal on every rank
      (:func:`shared_seed`).
    * evaluation (``shuffle=False``): the rows are cut into ``W × B`` contiguous chunks of nearly
      equal size (``B`` batches per rank, each at most ``batch_size`` rows) and rank ``r`` takes
      chunks ``r·B … r·B + B − 1``: every row is seen exactly once, so metrics gathered across
      ranks (``CatMetric``) equal the single-process ones. Only when the split has fewer rows
      than ``W × B`` are a few rows repeated to fill the empty chunks. ``drop_last`` is ignored.
    """

    def __init__(self, n: int, batch_size: int, *, shuffle: bool, seed: int = 0, drop_last: bool = False) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.n, self.batch_size, self.shuffle, self.seed, self.drop_last = n, int(batch_size), shuffle, seed, drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _order(self) -> torch.Tensor:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + 7919 * self.epoch)
            return torch.randperm(self.n, generator=g)
        return torch.arange(self.n)

    def _eval_batches_per_rank(self, world: int) -> int:
        rows = -(-self.n // world)  # the most rows any rank holds
        return max(1, -(-rows // self.batch_size))

    def _batches(self) -> list[torch.Tensor]:
        order = self._order()
        rank, world = _dist_info()
        if world > 1 and not self.shuffle:
            b = self._eval_batches_per_rank(world)
            chunks = list(torch.tensor_split(order, world * b))
            for j, c in enumerate(chunks):  # fewer rows than chunks: repeat rows rather than yield nothing
                if len(c) == 0:
                    chunks[j] = order[j % max(self.n, 1): j % max(self.n, 1) + 1]
            return chunks[rank * b: (rank + 1) * b]
        if world > 1:  # training: pad so every rank has the same number of rows
            per = -(-self.n // world)
            order = torch.cat([order, order[torch.arange(per * world - self.n) % max(self.n, 1)]])  # n < W: wrap again
            order = order[rank::world]
        m = len(order)
        stop = m - m % self.batch_size if self.drop_last else m
        return [order[i: i + self.batch_size] for i in range(0, stop, self.batch_size)]

    def __iter__(self) -> Iterator[torch.Tensor]:
        yield from self._batches()
        if self.shuffle:
            self.epoch += 1

    def __len__(self) -> int:
        _, world = _dist_info()
        if world > 1 and not self.shuffle:
            return self._eval_batches_per_rank(world)
        m = -(-self.n // world)
        return m // self.batch_size if self.drop_last else -(-m // self.batch_size)


class TensorTable(torch.utils.data.Dataset):
    """A dict of equally long tensors, indexed by a whole batch of row indices at once."""

    def __init__(self, tensors: Mapping[str, torch.Tensor]) -> None:
        lengths = {len(t) for t in tensors.values()}
        if len(lengths) != 1:
            raise ValueError(f"tensors differ in length: { {k: len(v) for k, v in tensors.items()} }")
        self.tensors = dict(tensors)
        self.n = lengths.pop()

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: t.index_select(0, idx) for k, t in self.tensors.items()}


def check_batch_sizes(batch_size: int, eval_batch_size: int | None) -> None:
    """``data.batch_size`` and ``data.eval_batch_size`` (None: 4 × batch_size) must be >= 1."""
    if int(batch_size) < 1 or (eval_batch_size is not None and int(eval_batch_size) < 1):
        raise ValueError(f"data.batch_size and data.eval_batch_size must be >= 1, got {batch_size} and "
                         f"{eval_batch_size}")


def check_split_sizes(val_size: float, test_size: float | None) -> None:
    """ValueError unless the validation and test shares are in (0, 1) and leave rows to train on
    (``test_size`` None: an explicit test frame, only a validation split is carved)."""
    shares = (val_size,) if test_size is None else (val_size, test_size)
    ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1 for v in shares)
    if not ok or sum(shares) >= 1:
        raise ValueError(f"data.val_size and data.test_size must each be a share in (0, 1), together below 1; got "
                         f"{val_size!r} and {test_size!r}")


# Evaluation splits with fewer rows than this get a warning: their metrics are noisy.
SMALL_SPLIT_ROWS = 50


def check_both_classes(split: str, n_rows: int, n_pos: int, *, target: str, source: str,
                       table: tuple[int, int] | None = None, where: str = "") -> None:
    """SchemaError when a split of ``n_rows`` rows of a binary target holds ``n_pos`` positives, so one
    class only: AUROC, early stopping and the calibration need both. ``table``: (positives, rows) of
    the whole table, named in the message when known; ``where``: how the counts were made (e.g.
    summed over the ranks)."""
    if n_pos not in (0, n_rows):
        return
    whole = f"{table[0]} positives in {table[1]} rows" if table is not None else f"{n_pos} positives"
    raise SchemaError(f"the {split} split ({n_rows} rows{where}) holds one class of {target!r} only ({whole}): its "
                      "metrics and the calibration need both; give more rows (or more positives) or a larger "
                      f"data.{'test' if split == 'test' else 'val'}_size", source=source, column=target)


def warn_small_splits(sizes: Mapping[str, int], source: str, logger: logging.Logger = log) -> None:
    """One warning naming the evaluation splits of fewer than :data:`SMALL_SPLIT_ROWS` rows."""
    small = {k: n for k, n in sizes.items() if k != "train" and n < SMALL_SPLIT_ROWS}
    if small:
        logger.warning("%s: small evaluation splits %s: their metrics are noisy (a handful of rows can move AUROC "
                       "by 0.1 or more)", source, small)


def drop_unlabelled_rows(frame: pd.DataFrame, target: str, *, drop: bool, source: str, what: str = "rows",
                         logger: logging.Logger = log, level: int = logging.WARNING, whole: bool = True
                         ) -> pd.DataFrame:
    """``frame`` less its rows whose ``target`` is missing (NaN, or a missing token such as ``''``,
    ``'n/a'``, ``'?'``), before anything is inferred, cleaned, split or fitted on it: the result is the
    table those rows were never in. With ``drop`` False such rows are refused, naming the count, the
    first row and ``data.drop_unlabelled``; a target missing in every row is refused either way.
    ``what`` names the rows in the messages; ``level`` is the log level of the message about the
    dropped rows. ``whole`` False: ``frame`` is a part of the table (a shard), which may be unlabelled
    in every row. A frame without the column is returned as it is (the schema names the missing column).

    Raises:
        SchemaError: unlabelled rows and ``drop`` False, or no labelled row at all.
    """
    if target not in frame.columns or len(frame) == 0:
        return frame
    miss = missing_cells(frame[target])
    n = int(miss.sum())
    if n == 0:
        return frame
    share = n / len(frame)
    if n == len(frame) and whole:
        raise SchemaError(f"target column is entirely empty ({n} {what}): no row has a label to learn from",
                          source=source, column=target)
    if not drop:
        first = frame.index[int(np.flatnonzero(miss)[0])]
        raise SchemaError(f"target has {n} missing values ({share:.1%} of {len(frame)} {what}); drop those rows or "
                          "fill them, or set data.drop_unlabelled=true to leave them out (e.g. customers still inside "
                          "their label window)", source=source, column=target, row=first)
    logger.log(level, "%s, column '%s': dropped %d of %d %s (%.1f %%) without a label (data.drop_unlabelled=true); "
               "they are in no split and nothing is fitted on them", source, target, n, len(frame), what, 100 * share)
    return frame.loc[~miss]


def loader_generator(seed: int) -> torch.Generator:
    """The generator a DataLoader of ours draws its workers' base seed from at every ``iter()``.

    Without one, that draw comes from the global torch generator, the one dropout and negative
    sampling use, once per epoch (and once per validation): a resumed run, whose first iterator was
    made before its random-number state was restored, would then draw one number fewer than the
    uninterrupted run and drift from it. Our datasets draw nothing in the workers."""
    return torch.Generator().manual_seed(int(seed))


def batch_loader(tensors: Mapping[str, torch.Tensor], batch_size: int, *, shuffle: bool, seed: int = 0,
                 num_workers: int = 0, pin_memory: bool = False, drop_last: bool = False) -> DataLoader:
    """A DataLoader that yields dicts of whole-batch tensor slices."""
    ds = TensorTable(tensors)
    sampler = IndexBatchSampler(len(ds), batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last)
    return DataLoader(ds, sampler=sampler, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
                      persistent_workers=num_workers > 0, generator=loader_generator(seed))


def stratified_split(y: np.ndarray | None, n: int, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Split ``range(n)`` into len(fractions)+1 parts (the last takes the rest), stratified on ``y``."""
    rng = np.random.default_rng(seed)
    groups = [np.arange(n)] if y is None else [np.flatnonzero(y == c) for c in np.unique(y)]
    parts: list[list[np.ndarray]] = [[] for _ in range(len(fractions) + 1)]
    for g in groups:
        g = rng.permutation(g)
        start = 0
        for i, f in enumerate(fractions):
            k = int(round(f * len(g)))
            parts[i].append(g[start: start + k])
            start += k
        parts[-1].append(g[start:])
    return [np.sort(np.concatenate(p)) for p in parts]


def split_by_customer(y: np.ndarray | None, n: int, ids: pd.Series | None, fractions: Sequence[float],
                      seed: int) -> list[np.ndarray]:
    """:func:`stratified_split` of the rows, keeping every row of a customer in one part: where an id
    repeats (``data.clean.dedupe=false``) the customers are split (stratified on the label of each
    customer's first row) and each takes all its rows, so no customer is in two splits. Without a
    repeated id (or without ids) it is :func:`stratified_split` itself, row for row."""
    if ids is None or not ids.duplicated().any():
        return stratified_split(y, n, fractions, seed)
    codes, uniques = pd.factorize(ids, sort=False)  # customer of each row, numbered by first appearance
    first = np.unique(codes, return_index=True)[1]
    parts = stratified_split(None if y is None else y[first], len(uniques), fractions, seed)
    part_of = np.empty(len(uniques), dtype=np.int64)
    for j, p in enumerate(parts):
        part_of[p] = j
    row_part = part_of[codes]
    return [np.flatnonzero(row_part == j) for j in range(len(parts))]


class SplitLoaders(L.LightningDataModule):
    """Lightning's four loaders from one ``_loader(split, shuffle)``: train (shuffled), val, test, and
    predict (the test split)."""

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        raise NotImplementedError

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)


class TableDataModule(SplitLoaders):
    """A customer table → cleaned → split (stratified, seeded) → encoded tensors in memory.

    Args:
        source: an object with ``load() -> TableData`` (see :mod:`clm_torch.data.sources`).
        batch_size: rows per training batch.
        eval_batch_size: rows per validation/test batch (defaults to 4 × batch_size).
        num_workers: DataLoader workers (0 is fastest for in-memory tensors).
        val_size, test_size: fractions of the rows.
        split_seed: seed of the split (independent of the training seed).
        require_target: False for unsupervised models (the VAE).
        target_type: ``binary`` (classification, stratified split) or ``continuous`` (regression).
        clean: keyword arguments of :func:`clean_table` (e.g. ``clip_outliers``).
        encoder: keyword arguments of :class:`FeatureEncoder` (e.g. ``log_transform``).
        test_frame: optional explicit test table (benchmarks: CV folds); then only a validation
            split is carved from the source.
        frame_transform: optional row-wise ``(frame, source=...) -> frame`` applied to each cleaned
            split before the encoder is fitted; columns it adds become numeric features (set by
            ``train()`` for ``model.infogap_ckpt``: the InfoGapVAE's signals and imputations).
        drop_unlabelled: leave out the rows whose target is missing (customers still inside their
            label window), with one warning giving their count and share, before the schema is
            inferred and the table cleaned and split: no split holds them and no fitted
            preprocessing sees them (the run is that of the table without them). False (the
            default): such rows are refused. Ignored without a target (``require_target=False``).
        date_format: how the table's text dates are written when not in ISO 8601 (``data.date_format``,
            a strftime format such as ``'%d/%m/%Y'``): columns of such dates are dates (not features,
            as ISO dates are) instead of categories. None: ISO 8601 only.
    """

    data_kind = "table"  # what a model's ``data_kind`` must be to train on it

    def __init__(
        self,
        source: Any,
        batch_size: int = 256,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        val_size: float = 0.15,
        test_size: float = 0.15,
        split_seed: int = 0,
        require_target: bool = True,
        target_type: str = "binary",
        clean: Mapping[str, Any] | None = None,
        encoder: Mapping[str, Any] | None = None,
        test_frame: pd.DataFrame | None = None,
        frame_transform: Callable[..., pd.DataFrame] | None = None,
        drop_unlabelled: bool = False,
        date_format: str | None = None,
    ) -> None:
        super().__init__()
        self.source = source
        self.date_format = check_date_format(date_format)
        if not isinstance(drop_unlabelled, bool):
            raise ValueError(f"data.drop_unlabelled must be true or false, not {drop_unlabelled!r}")
        self.drop_unlabelled = drop_unlabelled
        self.frame_transform = frame_transform
        check_batch_sizes(batch_size, eval_batch_size)
        check_split_sizes(val_size, test_size if test_frame is None else None)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or 4 * batch_size)
        self.num_workers, self.pin_memory = int(num_workers), bool(pin_memory)
        self.val_size, self.test_size, self.split_seed = float(val_size), float(test_size), int(split_seed)
        self.require_target = require_target
        self.target_type = target_type
        self.encoder_kwargs_target = {"target_type": target_type}
        self.clean_kwargs = dict(clean or {})
        self.encoder_kwargs = dict(encoder or {})
        # outlier bounds are fitted on the training split and stored with the encoder (scoring clips
        # exactly as training did), not computed on the whole table before the split
        if self.clean_kwargs.get("clip_outliers") is not None:
            self.encoder_kwargs["clip_outliers"] = self.clean_kwargs["clip_outliers"]
        self.test_frame = test_frame
        self.data: TableData | None = None
        self.schema: TableSchema | None = None
        self.encoder: FeatureEncoder | None = None
        self.report: CleaningReport | None = None
        self.frames: dict[str, pd.DataFrame] = {}
        self.tensors: dict[str, dict[str, torch.Tensor]] = {}
        self._ready = False

    @property
    def _before_split(self) -> dict[str, Any]:
        """The cleaning done on the whole table (clip_outliers is the encoder's, fitted on the train split)."""
        return {k: v for k, v in self.clean_kwargs.items() if k != "clip_outliers"}

    # ------------------------------------------------------------------ setup
    @small_pages()  # cleaning and encoding allocate column-sized temporaries (utils/memory.py)
    def setup(self, stage: str | None = None) -> None:
        if self._ready:
            return
        data = self.source.load()
        self.data = data
        target = data.target if self.require_target else None
        frame = data.frame
        check_drop(data.drop, frame.columns, source=data.name)
        if not self.require_target and data.target and data.target in frame.columns:
            frame = frame.drop(columns=[data.target])
        if target:  # rows without a label: refused, or gone before anything is inferred or fitted
            frame = drop_unlabelled_rows(frame, target, drop=self.drop_unlabelled, source=data.name)
        schema = infer_schema(frame, target=target, id_col=data.id_col, overrides=data.roles, drop=data.drop,
                              source=data.name, date_format=self.date_format)
        if not schema.features:
            raise SchemaError("no feature columns left after removing id, target and dropped columns",
                              source=data.name)
        before = self._before_split  # ids the source has checked (a customer view's) are not checked again
        before["check_id_case"] = bool(before.get("check_id_case", True)) and not data.ids_checked
        clean, self.report = clean_table(frame, schema, source=data.name, **before)
        y = None
        if target:
            if self.target_type == "binary":
                y, _ = validate_target(clean[target], source=data.name, column=target)
        ids = clean[schema.id_col] if schema.id_col else None  # a customer's rows stay in one split
        if self.test_frame is not None:
            tr, va = split_by_customer(y, len(clean), ids, [1 - self.val_size], self.split_seed)
            test = (drop_unlabelled_rows(self.test_frame, target, drop=self.drop_unlabelled,
                                         source=f"{data.name} [test frame]") if target else self.test_frame)
            test, _ = clean_table(test, schema, source=f"{data.name} [test frame]", **self._before_split)
            self.frames = {"train": clean.iloc[tr], "val": clean.iloc[va], "test": test}
        else:
            tr, va, te = split_by_customer(y, len(clean), ids,
                                           [1 - self.val_size - self.test_size, self.val_size], self.split_seed)
            self.frames = {"train": clean.iloc[tr], "val": clean.iloc[va], "test": clean.iloc[te]}
        for name, f in self.frames.items():
            if len(f) == 0:
                raise SchemaError(f"the {name} split is empty: the table has too few rows ({len(clean)}) for "
                                  f"data.val_size={self.val_size:g} and data.test_size={self.test_size:g}",
                                  source=data.name)
        if y is not None:  # AUROC, early stopping and the calibration need both classes in every split
            parts = {"train": tr, "val": va} if self.test_frame is not None else {"train": tr, "val": va, "test": te}
            for name, idx in parts.items():
                check_both_classes(name, len(idx), int(y[idx].sum()), target=target, source=data.name,
                                   table=(int(y.sum()), len(y)))
        warn_small_splits({k: len(f) for k, f in self.frames.items()}, data.name)
        if self.frame_transform is not None:  # row-wise extra features (e.g. InfoGapVAE signals), per split
            # a transform with a one_warning_each() (InfoGapTransform) says each problem once for all splits
            with getattr(self.frame_transform, "one_warning_each", contextlib.nullcontext)():
                self.frames = {k: self.frame_transform(f, source=f"{data.name} [{k} split]")
                               for k, f in self.frames.items()}
            added = [c for c in self.frames["train"].columns if c not in clean.columns]
            schema = dataclasses.replace(schema, numeric=[*schema.numeric, *added])
        self.schema = schema
        self.encoder = FeatureEncoder.from_schema(schema, **self.encoder_kwargs_target, **self.encoder_kwargs).fit(
            self.frames["train"], source=f"{data.name} [train split]")
        self.tensors = {
            k: self.encoder.transform(f, source=f"{data.name} [{k} split]", require_target=bool(target))
            for k, f in self.frames.items()
        }
        for k, t in self.tensors.items():
            t["row"] = torch.arange(len(self.frames[k]))
        self._ready = True
        log.info("data %s: %s", data.name, {k: len(f) for k, f in self.frames.items()})

    # ------------------------------------------------------------------ what models need
    def model_kwargs(self) -> dict[str, Any]:
        """Primitive sizes the model is built from (``n_num``, ``cat_cardinalities``, …)."""
        self.setup()
        d = self.encoder.dims()
        if self.require_target and self.target_type == "binary" and "y" in self.tensors["train"]:
            y = self.tensors["train"]["y"]
            d["pos_rate"] = float(y.mean())
        return d

    def preprocessing_state(self) -> dict[str, Any]:
        """Everything a checkpoint needs to score raw data: encoder state and schema."""
        self.setup()
        state = {"encoder": self.encoder.state_dict(), "schema": self.schema.to_dict(),
                 "cleaning": {k: v for k, v in self.clean_kwargs.items()}}
        if self.target_type == "continuous" and "y" in self.tensors["train"]:
            # the spend model's starting scale: its loss reads a net refund (y < 0) as 0, so the mean does too
            state["target_mean"] = float(self.tensors["train"]["y"].double().clamp_min(0).mean())
        return state

    def ids(self, split: str) -> np.ndarray:
        """Customer ids of a split (row positions when the table has no id column)."""
        f = self.frames[split]
        if self.schema.id_col:
            return f[self.schema.id_col].to_numpy()
        return f.index.to_numpy()

    # ------------------------------------------------------------------ loaders
    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        # every rank shuffles with rank 0's seed (see IndexBatchSampler); the broadcast is a no-op without DDP
        return batch_loader(self.tensors[split], self.batch_size if shuffle else self.eval_batch_size,
                            shuffle=shuffle, seed=shuffle_seed(shuffle), num_workers=self.num_workers,
                            pin_memory=self.pin_memory)



def table_from_file(path: str, target: str | None = None, id_col: str | None = None,
                    roles: Mapping[str, Sequence[str]] | None = None, drop: Sequence[str] = (),
                    csv: Mapping[str, Any] | None = None, **kwargs: Any) -> TableDataModule:
    """A :class:`TableDataModule` over a CSV/Parquet file (the ``data=csv`` config).

    ``require_target`` defaults to whether a target is given; ``csv`` is the CSV dialect
    (``data.csv.sep``, ``decimal``, ``thousands``); ``date_format`` (``data.date_format``) and
    ``drop_unlabelled`` go to :class:`TableDataModule`.
    """
    from clm_torch.data.sources.tables import CSVSource

    kwargs.setdefault("require_target", target is not None)
    return TableDataModule(CSVSource(path, target=target, id_col=id_col, roles=roles, drop=drop, csv=csv), **kwargs)
