"""FeatureEncoder: fitted preprocessing from a raw customer table to tensors, and back.

The encoder is fitted on the training split only. Its state (:meth:`FeatureEncoder.state_dict`)
is tensors plus lists/dicts of str, int and float, so it is stored inside Lightning checkpoints
and loads under ``torch.load(..., weights_only=True)``.

Encoded batch layout (a dict of tensors, ``n`` rows):

====================  ==============================  ==============================================
key                   shape / dtype                   meaning
====================  ==============================  ==============================================
``num``               (n, n_num) float32              standardised numerics (after log1p where chosen), 0 where missing
``num_mask``          (n, n_num) bool                 True where the numeric value was observed
``cat``               (n, n_cat) int64                vocabulary index; 0 = ``<unk>/<missing>``
``cat_mask``          (n, n_cat) bool                 True where the category was observed and known
``y``                 (n,) float32                    0/1 target, only when the target column is present
====================  ==============================  ==============================================

Categorical columns come first, then binary columns (``cat_columns``). Binary columns are
categoricals with exactly two known values; models may give them a Bernoulli head.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from clm_torch.data.cleaning import clip_bounds
from clm_torch.data.schema import (NO_WORDS, YES_WORDS, SchemaError, TableSchema, _is_missing_token, distinct_rows,
                                   is_yes_no_label, level_keys, spaced_names_hint, to_numeric_strict, validate_target,
                                   yes_no_side)
from clm_torch.utils.io import SettingError
from clm_torch.utils.tally import MAX_EXAMPLES, WarningTally

log = logging.getLogger(__name__)

UNK = "<unk>"


def _category_keys(s: pd.Series) -> pd.Series:
    """Normalised string keys so that 1, 1.0, '1', ' Yes ' vs 'yes' and 'Straße' vs 'STRASSE' map to the
    same category (:func:`~clm_torch.data.schema.level_keys`, as cleaning matches spellings)."""
    if pd.api.types.is_bool_dtype(s):
        s = s.astype("Int64")
    if pd.api.types.is_float_dtype(s):
        vals = s.to_numpy(dtype="float64", na_value=np.nan)
        integral = np.isfinite(vals) & (np.floor(vals) == vals)
        keys = pd.Series(np.where(integral, np.nan_to_num(vals).astype(np.int64).astype(str), vals.astype(str)),
                         index=s.index, dtype=object)
        keys[np.isnan(vals)] = np.nan
        return level_keys(keys)
    return level_keys(s)


_BOOL_ALIASES = {"true": "1", "false": "0", "1": "true", "0": "false"}


def _is_yes_no(keys: Sequence[str]) -> bool:
    """Whether a column's category keys (``<unk>`` left out) are both sides of yes/no in some spelling
    (:func:`~clm_torch.data.schema.yes_no_side`)."""
    return len(keys) == 2 and {yes_no_side(k) for k in keys} == {True, False}


def _alias_keys(key: str, yes_no: bool = False) -> list[str]:
    """Other spellings of a category key (:func:`_category_keys`) for the same value: a boolean as
    ``true``/``false`` or ``1``/``0`` (whichever the column was fitted with), in a yes/no column
    (``yes_no``) also ``yes``/``no``, ``y``/``n`` and ``t``/``f``; an integral number written with a
    decimal point (``10.0`` → ``10``)."""
    side = yes_no_side(key) if yes_no else None
    if side is not None:
        return [k for k in (YES_WORDS if side else NO_WORDS) if k != key]
    if key in _BOOL_ALIASES:
        return [_BOOL_ALIASES[key]]
    try:
        x = float(key)
    except ValueError:
        return []
    return [str(int(x))] if np.isfinite(x) and x == int(x) and str(int(x)) != key else []


def _category_counts(s: pd.Series) -> tuple[pd.Series, dict[str, Any]]:
    """The rows of each category key of ``s`` (:func:`_category_keys`), most first (ties: first seen),
    and each key's original value at its first row; missing values are not counted.

    The keys are computed once per distinct value and weighted by its rows: the same counts and
    order as ``_category_keys(s).value_counts()`` without normalising every row's string."""
    t = s.astype("string") if s.dtype == object else s  # 1, 1.0 and True hash alike but have different keys
    codes, uniques, rows = distinct_rows(t)
    dtype = t.dtype.categories.dtype if isinstance(t.dtype, pd.CategoricalDtype) else t.dtype
    keys = _category_keys(pd.Series(list(uniques), dtype=dtype))
    seen = codes >= 0
    first_row = np.full(len(uniques), len(s), dtype=np.int64)
    np.minimum.at(first_row, codes[seen], np.flatnonzero(seen))
    # the distinct values come in order of first appearance, so the groups do too
    per_key = pd.DataFrame({"k": keys.astype(object), "n": rows, "first": first_row}).dropna(subset=["k"])
    grouped = per_key.groupby("k", sort=False)
    counts = grouped["n"].sum().sort_values(ascending=False, kind="stable")
    at = grouped["first"].min()
    first = dict(zip(at.index, s.iloc[at.to_numpy()].tolist() if len(at) else []))
    return counts, first


def _plain(v: Any) -> Any:
    """numpy scalars → Python scalars (checkpoint state must be primitives)."""
    if isinstance(v, np.generic):
        return v.item()
    return v


UNSEEN_WARN_SHARE = 0.1  # the share of a column's values unseen at fit time from which scoring warns


class FeatureEncoder:
    """Fit/transform a mixed-type table into the tensors models consume.

    Args:
        numeric: numeric column names.
        categorical: categorical column names.
        binary: binary column names (encoded like categoricals, listed after them).
        target: optional binary target column.
        id_col: optional id column (carried, never encoded).
        log_transform: ``"auto"`` (log1p for non-negative columns with skew > 2), ``"none"``,
            or a list of columns to log-transform.
        max_categories: most frequent categories kept per column; the rest map to ``<unk>``.
        positive_label: positive class of the target (inferred when None).
        target_type: ``"binary"`` (0/1 classification target) or ``"continuous"`` (regression,
            e.g. future spend; ``y`` is the raw float value).
        clip_to_range: clip numerics at transform time to the [min, max] seen by ``fit``, so that
            a model extrapolates flat (as trees do) beyond the training range instead of
            following its last slope or its periodic embeddings (e.g. customer ages at a later
            cutoff than the training one).
        clip_outliers: clip numerics at transform time to ``mean ± clip_outliers · std`` of the
            training split (raw scale; ``data.clean.clip_outliers``). The bounds are fitted on the
            training rows only and stored with the encoder, so scoring clips exactly as training did.
    """

    def __init__(
        self,
        numeric: Sequence[str] = (),
        categorical: Sequence[str] = (),
        binary: Sequence[str] = (),
        target: str | None = None,
        id_col: str | None = None,
        log_transform: str | Sequence[str] = "auto",
        max_categories: int = 1000,
        positive_label: Any = None,
        target_type: str = "binary",
        clip_to_range: bool = False,
        clip_outliers: float | None = None,
    ) -> None:
        if target_type not in ("binary", "continuous"):
            raise ValueError(f"target_type must be binary or continuous, not {target_type!r}")
        self.target_type = target_type
        self.clip_to_range = bool(clip_to_range)
        if clip_outliers is not None and not float(clip_outliers) > 0:
            raise ValueError(f"data.clean.clip_outliers must be > 0 (standard deviations), got {clip_outliers}")
        self.clip_outliers = None if clip_outliers is None else float(clip_outliers)
        self.num_columns = list(numeric)
        self.cat_columns = list(categorical) + list(binary)
        self.n_binary = len(binary)
        self.target = target
        self.id_col = id_col
        self.log_transform = log_transform if isinstance(log_transform, str) else list(log_transform)
        self.max_categories = int(max_categories)
        self.positive_label = positive_label
        self.fitted = False
        # (column, dtype) → {(type, raw value): vocabulary index}; a transform-time cache, not state
        self._index_cache: dict[tuple[str, str], dict[tuple[type, Any], int]] = {}
        self._key_cache: dict[str, tuple[pd.Index, np.ndarray]] = {}  # column → :meth:`_key_index`
        self._tally: WarningTally | None = None  # inside :meth:`one_warning_each`: the problems counted
        # fitted state
        self.num_mean = torch.zeros(len(self.num_columns))
        self.num_std = torch.ones(len(self.num_columns))
        self.num_log = [False] * len(self.num_columns)
        self.num_integer = [False] * len(self.num_columns)
        self.num_min: list[float] = [0.0] * len(self.num_columns)
        self.num_max: list[float] = [0.0] * len(self.num_columns)
        self.num_clip_lo: list[float] = [-math.inf] * len(self.num_columns)  # clip_outliers bounds (raw scale)
        self.num_clip_hi: list[float] = [math.inf] * len(self.num_columns)
        self.vocab: dict[str, list[Any]] = {}
        self.keys: dict[str, list[str]] = {}
        self.dtypes: dict[str, str] = {}
        self.unk_share: dict[str, float] = {}  # per categorical column: its fitted rows read as <unk>

    @classmethod
    def from_schema(cls, schema: TableSchema, **kwargs: Any) -> FeatureEncoder:
        return cls(schema.numeric, schema.categorical, schema.binary, schema.target, schema.id_col, **kwargs)

    # ------------------------------------------------------------------ properties
    @property
    def n_num(self) -> int:
        return len(self.num_columns)

    @property
    def n_cat(self) -> int:
        return len(self.cat_columns)

    @property
    def cardinalities(self) -> list[int]:
        """Vocabulary size per categorical column, index 0 (``<unk>``) included."""
        return [len(self.vocab[c]) for c in self.cat_columns]

    @property
    def feature_columns(self) -> list[str]:
        return [*self.num_columns, *self.cat_columns]

    def dims(self) -> dict[str, Any]:
        """Primitive sizes a model needs to build itself."""
        return {"n_num": self.n_num, "cat_cardinalities": self.cardinalities, "n_binary": self.n_binary}

    # ------------------------------------------------------------------ fit / transform
    def fit(self, df: pd.DataFrame, *, source: str = "<train split>") -> FeatureEncoder:
        """Fit statistics and vocabularies on (the training split of) ``df``."""
        self._check_columns(df, source=source, require_target=False)
        if isinstance(self.log_transform, str) and self.log_transform not in ("auto", "none"):
            raise SettingError(f"data.encoder.log_transform must be auto, none or a list of numeric columns, "
                               f"not {self.log_transform!r}")
        if isinstance(self.log_transform, list):
            unknown = [c for c in self.log_transform if c not in self.num_columns]
            if unknown:
                raise SchemaError(f"data.encoder.log_transform names {unknown}, which are not numeric feature "
                                  f"columns ({self.num_columns})", source=source, column=unknown[0])
        for j, col in enumerate(self.num_columns):
            x = to_numeric_strict(df[col], source=source, column=col).to_numpy(dtype=np.float64)
            obs = x[~np.isnan(x)]
            if obs.size == 0:
                raise SchemaError("numeric column has no observed values in the training split",
                                  source=source, column=col)
            if self.clip_outliers is not None and obs.size > 1:
                self.num_clip_lo[j], self.num_clip_hi[j] = clip_bounds(obs, self.clip_outliers)
                clipped = int(((obs < self.num_clip_lo[j]) | (obs > self.num_clip_hi[j])).sum())
                if clipped:
                    log.info("%s: %d values of '%s' clipped to [%.4g, %.4g] (clip_outliers=%g)", source, clipped, col,
                             self.num_clip_lo[j], self.num_clip_hi[j], self.clip_outliers)
                obs = np.clip(obs, self.num_clip_lo[j], self.num_clip_hi[j])
            use_log = False
            if self.log_transform == "auto":
                if obs.min() >= 0 and obs.size > 2:
                    sd = obs.std()
                    skew = float(((obs - obs.mean()) ** 3).mean() / (sd**3)) if sd > 0 else 0.0
                    use_log = skew > 2.0
            elif isinstance(self.log_transform, list):
                use_log = col in self.log_transform
                if use_log and obs.min() < 0:
                    raise SchemaError("log transform requested but the column has negative values",
                                      source=source, column=col)
            t = np.log1p(obs) if use_log else obs
            self.num_log[j] = bool(use_log)
            self.num_integer[j] = bool(np.all(np.floor(obs) == obs))
            self.num_min[j], self.num_max[j] = float(obs.min()), float(obs.max())
            self.num_mean[j] = float(t.mean())
            sd = float(t.std())
            self.num_std[j] = sd if sd > 1e-12 else 1.0
            bulk = float(np.subtract(*np.quantile(t, [0.95, 0.05]))) if t.size > 2 else 0.0
            if sd > 1e-12 and 0 < bulk < 1e-3 * sd:  # a few huge values: the rest standardise to almost one value
                log.warning("%s: column %r: a few extreme values (max %.4g, median %.4g) make its standard deviation "
                            "%.3g times the spread of the middle 90 %% of its values, which the model then barely "
                            "tells apart; set data.clean.clip_outliers=5 (median ± 5 robust sd) or fix the values",
                            source, col, float(obs.max()), float(np.median(obs)), sd / bulk)
            self.dtypes[col] = str(df[col].dtype)
        for col in self.cat_columns:
            s = df[col]
            keys, first = _category_counts(s)
            total = float(keys.sum())
            keys = keys.iloc[: self.max_categories]
            # the share of the fitted rows beyond max_categories (read as <unk>): the usual unseen share
            self.unk_share[col] = 1.0 - float(keys.sum()) / total if total > 0 else 0.0
            self.keys[col] = [UNK, *[str(k) for k in keys.index]]
            self._index_cache, self._key_cache = {}, {}
            # each kept key's spelling at its first row
            self.vocab[col] = [UNK, *[_plain(first[k]) for k in keys.index]]
            self.dtypes[col] = str(s.dtype)
        if self.target and self.target in df.columns and self.target_type == "binary":
            chosen = self.positive_label is not None
            _, pos = validate_target(df[self.target], source=source, column=self.target, positive=self.positive_label)
            self.positive_label = pos
            if not chosen and not is_yes_no_label(pos):
                log.warning("%s, column %r: the positive class (churn = 1) is %r, the minority label (neither label "
                            "reads as yes/no or churned/stayed); set data.encoder.positive_label=<label> to choose",
                            source, self.target, pos)
        self.fitted = True
        return self

    def _check_columns(self, df: pd.DataFrame, *, source: str, require_target: bool) -> None:
        needed = list(self.feature_columns) + ([self.target] if require_target and self.target else [])
        missing = [c for c in needed if c not in df.columns]
        if missing:
            raise SchemaError(f"required column{'s' if len(missing) > 1 else ''} missing: {missing}"
                              f"{spaced_names_hint(missing, list(df.columns))}", source=source, column=missing[0])
        dup = [c for c in dict.fromkeys(df.columns[df.columns.duplicated()]) if c in needed or c == self.target]
        if dup:
            raise SchemaError(f"{int((df.columns == dup[0]).sum())} columns share this name; keep one",
                              source=source, column=dup[0])

    def _category_index(self, col: str, s: pd.Series, source: str | None = None) -> np.ndarray:
        """Vocabulary indices (n,) int64 of the values of ``s`` (0 = missing or unseen; with a
        ``source``, a warning when a tenth or more of the values are unseen: :meth:`_warn_unseen`).

        The values are factorised first, so the string normalisation of :func:`_category_keys`
        and the vocabulary lookup run once per distinct value, not once per row; the index of a
        distinct value is cached per column and dtype, so scoring in chunks pays it once.
        """
        if s.dtype == object:  # mixed Python objects: 1, 1.0 and True hash alike but have different keys
            s = s.astype("string")
        codes, uniques = pd.factorize(s, use_na_sentinel=True)
        if len(uniques) == 0:
            return np.zeros(len(s), dtype=np.int64)
        cache = self._index_cache.setdefault((col, str(s.dtype)), {})
        values = list(uniques)
        tokens = [(type(v), v) for v in values]  # the type keeps 1, 1.0 and True apart
        new = [i for i, t in enumerate(tokens) if t not in cache]
        if new:
            if len(cache) + len(new) > 100_000:  # a high-cardinality column: keep the cache bounded
                cache.clear()
            dtype = s.dtype.categories.dtype if isinstance(s.dtype, pd.CategoricalDtype) else s.dtype
            keys = _category_keys(pd.Series([values[i] for i in new], dtype=dtype))
            vocab, position = self._key_index(col)
            found = vocab.get_indexer(keys.astype(object).where(keys.notna(), None))
            found = np.where(found >= 0, position[found], -1)
            if (found < 0).any():  # the same value in another spelling: True vs 1 or 'Yes', "10.0" vs 10
                yes_no = _is_yes_no(self.keys[col][1:])
                at = {k: i for i, k in enumerate(self.keys[col])}
                found = np.array([f if f >= 0 or not isinstance(k, str)
                                  else next((at[a] for a in _alias_keys(k, yes_no) if a in at), -1)
                                  for k, f in zip(keys, found)], dtype=np.int64)
            cache.update({tokens[i]: max(int(f), 0) for i, f in zip(new, found)})
        lookup = np.fromiter((cache[t] for t in tokens), dtype=np.int64, count=len(tokens))
        if source is not None and ((lookup == 0).any() or self._tally is not None):
            self._warn_unseen(col, codes, lookup, values, source)
        return np.append(lookup, 0)[codes]  # code −1 (NaN) → the last slot: 0

    def _key_index(self, col: str) -> tuple[pd.Index, np.ndarray]:
        """The fitted keys of ``col`` as matched at scoring time (:func:`_category_keys`: case-folded)
        and each one's vocabulary index. Encoders fitted before keys were case-folded (lower-cased:
        'straße') match too; two old keys that fold alike ('straße', 'strasse') go to the first."""
        got = self._key_cache.get(col)
        if got is None:
            folded = level_keys(pd.Series(self.keys[col], dtype=object)).to_numpy(dtype=object)
            codes, uniques = pd.factorize(folded)
            position = np.full(len(uniques), -1, dtype=np.int64)
            position[codes[::-1]] = np.arange(len(codes) - 1, -1, -1)  # the first index of each key
            got = self._key_cache[col] = (pd.Index(uniques, dtype=object), position)
        return got

    @contextlib.contextmanager
    def one_warning_each(self, *others: FeatureEncoder) -> Iterator[WarningTally]:
        """Within: each problem of the data read (an empty column, a column of unseen categories,
        values below 0 in a log1p column) is counted over every frame and chunk encoded and said once,
        with its totals, when the block ends (nested: the outermost block counts). ``others``: more
        encoders that read the same rows (a churn model's frozen InfoGapVAE's) and share the tally,
        so a column is named once, with its rows counted once, whichever of them reads it. Yields
        the tally, for other warnings about the same data (the InfoGapVAE's completeness)."""
        encoders = [self, *(o for o in others if o is not None and o is not self)]
        before = [e._tally for e in encoders]
        outermost = self._tally is None
        tally = self._tally if self._tally is not None else WarningTally()
        for e in encoders:
            e._tally = tally
        try:
            yield tally
        finally:
            for e, prev in zip(encoders, before):
                e._tally = prev
        if outermost:
            tally.flush()

    def note(self, key: tuple[str, ...], source: str, say: Callable[..., None], **counts: Any) -> None:
        """Count a problem in the open tally (:meth:`one_warning_each`); outside one, say it now."""
        if self._tally is not None:
            self._tally.add(key, source, say, owner=id(self), **counts)
            return
        once = WarningTally()
        once.add(key, source, say, **counts)
        once.flush()

    def check_frame(self, df: pd.DataFrame, *, source: str) -> None:
        """Warn about a whole frame to score (not a chunk of it): feature columns missing in every row,
        which the model then reads as unknown for every customer. Inside :meth:`one_warning_each` the
        first call checks the frame and later ones (its chunks) are skipped."""
        if len(df) < 20 or (self._tally is not None and (source, "frame") in self._tally.seen):
            return
        if self._tally is not None:
            self._tally.seen.add((source, "frame"))
        empty = [c for c in self.feature_columns if c in df.columns and df[c].first_valid_index() is None]
        if empty:
            def say(src: str, rows: float) -> None:
                log.warning("%s: %s missing in every one of its %d rows: the model reads %s as unknown for every "
                            "customer", src, f"column {empty[0]!r} is" if len(empty) == 1 else f"columns {empty} are",
                            rows, "it" if len(empty) == 1 else "them")

            self.note(("empty", *empty), source, say, rows=len(df))

    def _warn_negative(self, col: str, n: int, lowest: float, source: str) -> None:
        """Warn that values below 0 of a log1p column (fitted on values >= 0: counts, money) are read as 0:
        the model cannot tell a corrupt -1000 from a 0 (the InfoGapVAE scores its surprise as that of 0)."""
        def say(src: str, n: float, lowest: float) -> None:
            n = int(n)
            log.warning("%s: column '%s': %d value%s below 0 (lowest %.4g) in a column the model reads on a log1p "
                        "scale (it was fitted on values >= 0): %s read as 0. Fix or blank %s", src, col, n,
                        "s" if n > 1 else "", lowest, "they are" if n > 1 else "it is", "them" if n > 1 else "it")

        self.note(("negative", col), source, say, n=n, lowest=lowest)

    def _warn_unseen(self, col: str, codes: np.ndarray, lookup: np.ndarray, values: list, source: str) -> None:
        """Warn when a tenth or more of a column's values (5 at least) are categories the encoder was not
        fitted with (True/False where it learnt 'Yes'/'No', a new 'Platinum' tier for a fifth of the
        customers): each is read as missing, so the model sees less of the column than it was trained
        on. Rarer unseen values (a new region here and there) are normal and not warned about, nor are
        columns whose fitted data already had that share beyond ``max_categories``. Inside
        :meth:`one_warning_each` the counts of every chunk are added up and the column is judged, and
        named, once, by its totals (with the first few unseen values)."""
        n_obs, n_unseen, examples = int(np.count_nonzero(codes >= 0)), 0, []
        zero = np.flatnonzero(lookup == 0)
        if len(zero):  # the values read as unknown (usually few), checked alone: the chunk's rows counted once
            # 'n/a', '?', '' ... are missing, as documented, not categories the model lacks
            token = _is_missing_token(pd.Series([values[int(i)] for i in zero], dtype=object)).to_numpy(
                dtype=bool, na_value=False)
            rows = np.bincount(codes[codes >= 0], minlength=len(values))  # the rows of each distinct value
            n_obs -= int(rows[zero[token]].sum())
            unseen = zero[~token]
            n_unseen = int(rows[unseen].sum())
            examples = [values[int(i)] for i in unseen[:MAX_EXAMPLES]]
        if self._tally is None and (n_unseen < 5 or n_unseen < UNSEEN_WARN_SHARE * n_obs):
            return  # below the threshold on its own (the usual answer): skip the wording
        known = [v for v in self.vocab[col][1:6]]
        more = ", ..." if len(self.vocab[col]) > 6 else ""
        unk = self.unk_share.get(col, 0.0)

        def say(src: str, n_unseen: float, n_obs: float, examples: list) -> None:
            if n_unseen < 5 or n_unseen < UNSEEN_WARN_SHARE * n_obs or n_unseen <= 2 * unk * n_obs:
                return
            log.warning("%s: column '%s': %d of %d values are not among the categories the model was trained with "
                        "(e.g. %s; it knows %s%s): they are read as missing. Write the column as in the training data",
                        src, col, n_unseen, n_obs, ", ".join(repr(v) for v in examples),
                        ", ".join(repr(v) for v in known), more)

        self.note(("unseen", col), source, say, n_unseen=n_unseen, n_obs=n_obs, examples=examples)

    def transform(self, df: pd.DataFrame, *, source: str = "<dataframe>", require_target: bool = False,
                  with_target: bool = True) -> dict[str, torch.Tensor]:
        """Encode ``df`` (extra columns ignored; target optional unless ``require_target``;
        ``with_target=False`` ignores it, for scoring frames whose target is not known yet).

        Missing numerics and NaN / unseen categories become unobserved entries.
        """
        if not self.fitted:
            raise RuntimeError("FeatureEncoder.transform called before fit")
        self._check_columns(df, source=source, require_target=require_target)
        n = len(df)
        num = np.zeros((n, self.n_num), dtype=np.float32)
        num_mask = np.zeros((n, self.n_num), dtype=bool)
        for j, col in enumerate(self.num_columns):
            x = to_numeric_strict(df[col], source=source, column=col).to_numpy(dtype=np.float64)
            obs = ~np.isnan(x)
            if self.clip_outliers is not None:
                x = np.clip(x, self.num_clip_lo[j], self.num_clip_hi[j])
            if self.clip_to_range:
                x = np.clip(x, self.num_min[j], self.num_max[j])
            if self.num_log[j]:
                below = obs & (x < 0)
                if below.any():
                    self._warn_negative(col, int(below.sum()), float(x[below].min()), source)
                x = np.log1p(np.clip(x, 0, None))
            z = (x - float(self.num_mean[j])) / float(self.num_std[j])
            num[:, j] = np.where(obs, z, 0.0)
            if not np.isfinite(num[:, j]).all():  # finite in float64, too large for the float32 tensors
                row = int(np.flatnonzero(~np.isfinite(num[:, j]))[0])
                raise SchemaError(f"value {df[col].iloc[row]!r} is too large to encode", source=source,
                                  column=col, row=df.index[row])
            num_mask[:, j] = obs
        cat = np.zeros((n, self.n_cat), dtype=np.int64)
        for j, col in enumerate(self.cat_columns):
            cat[:, j] = self._category_index(col, df[col], source)
        out = {
            "num": torch.from_numpy(num),
            "num_mask": torch.from_numpy(num_mask),
            "cat": torch.from_numpy(cat),
            "cat_mask": torch.from_numpy(cat > 0),
        }
        if with_target and self.target and self.target in df.columns:
            if self.target_type == "continuous":
                y = to_numeric_strict(df[self.target], source=source, column=self.target).to_numpy(np.float32)
                if np.isnan(y).any():
                    raise SchemaError("continuous target has missing values", source=source, column=self.target,
                                      row=df.index[int(np.isnan(y).nonzero()[0][0])])
            else:
                y, _ = validate_target(df[self.target], source=source, column=self.target,
                                       positive=self.positive_label, require_both=False)
            out["y"] = torch.from_numpy(y)
        return out

    # ------------------------------------------------------------------ inverse
    def inverse_numeric(self, num: torch.Tensor | np.ndarray) -> np.ndarray:
        """Standardised values (n, n_num) → raw scale (n, n_num) float64."""
        z = np.asarray(num.detach().cpu() if isinstance(num, torch.Tensor) else num, dtype=np.float64)
        x = z * self.num_std.numpy().astype(np.float64) + self.num_mean.numpy().astype(np.float64)
        for j in range(self.n_num):
            if self.num_log[j]:
                x[:, j] = np.expm1(np.clip(x[:, j], None, 50.0))
        return x

    def decode_categories(self, idx: torch.Tensor | np.ndarray) -> dict[str, np.ndarray]:
        """Vocabulary indices (n, n_cat) → raw category values per column (object arrays).

        Index 0 decodes to NaN.
        """
        a = np.asarray(idx.detach().cpu() if isinstance(idx, torch.Tensor) else idx)
        out = {}
        for j, col in enumerate(self.cat_columns):
            vocab = np.array([np.nan, *self.vocab[col][1:]], dtype=object)
            out[col] = vocab[a[:, j]]
        return out

    def restore_dtype(self, col: str, values: pd.Series) -> pd.Series:
        """Cast imputed values back to the column's training dtype where possible."""
        dt = self.dtypes.get(col)
        if dt is None:
            return values
        try:
            if col in self.num_columns and self.num_integer[self.num_columns.index(col)] and values.notna().all():
                values = values.round()
            return values.astype(dt)
        except (TypeError, ValueError):
            return values

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Tensors plus lists/dicts of str, int, float, bool (safe for weights_only loading)."""
        return {
            "version": 1,
            "num_columns": list(self.num_columns),
            "cat_columns": list(self.cat_columns),
            "n_binary": int(self.n_binary),
            "target": self.target,
            "id_col": self.id_col,
            "log_transform": self.log_transform if isinstance(self.log_transform, str) else list(self.log_transform),
            "max_categories": self.max_categories,
            "positive_label": _plain(self.positive_label),
            "target_type": self.target_type,
            "clip_to_range": self.clip_to_range,
            "clip_outliers": self.clip_outliers,
            "num_clip_lo": [float(v) for v in self.num_clip_lo],
            "num_clip_hi": [float(v) for v in self.num_clip_hi],
            "num_mean": self.num_mean.clone(),
            "num_std": self.num_std.clone(),
            "num_log": [bool(v) for v in self.num_log],
            "num_integer": [bool(v) for v in self.num_integer],
            "num_min": [float(v) for v in self.num_min],
            "num_max": [float(v) for v in self.num_max],
            "vocab": {k: [_plain(x) for x in v] for k, v in self.vocab.items()},
            "keys": {k: list(v) for k, v in self.keys.items()},
            "dtypes": dict(self.dtypes),
            "unk_share": {k: float(v) for k, v in self.unk_share.items()},
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> FeatureEncoder:
        nb = state["n_binary"]
        cats = state["cat_columns"]
        enc = cls(
            state["num_columns"], cats[: len(cats) - nb], cats[len(cats) - nb:], state["target"], state["id_col"],
            log_transform=state["log_transform"], max_categories=state["max_categories"],
            positive_label=state["positive_label"], target_type=state.get("target_type", "binary"),
            clip_to_range=state.get("clip_to_range", False), clip_outliers=state.get("clip_outliers"),
        )
        n = len(state["num_columns"])
        enc.num_clip_lo = list(state.get("num_clip_lo", [-math.inf] * n))
        enc.num_clip_hi = list(state.get("num_clip_hi", [math.inf] * n))
        enc.num_mean = state["num_mean"].clone().float()
        enc.num_std = state["num_std"].clone().float()
        enc.num_log = list(state["num_log"])
        enc.num_integer = list(state["num_integer"])
        enc.num_min = list(state["num_min"])
        enc.num_max = list(state["num_max"])
        enc.vocab = {k: list(v) for k, v in state["vocab"].items()}
        enc.keys = {k: list(v) for k, v in state["keys"].items()}
        enc.dtypes = dict(state["dtypes"])
        enc.unk_share = dict(state.get("unk_share", {}))  # checkpoints before it: 0 (warn at half unseen)
        enc.fitted = True
        return enc

    def __repr__(self) -> str:
        return (f"FeatureEncoder(n_num={self.n_num}, n_cat={self.n_cat}, n_binary={self.n_binary}, "
                f"target={self.target!r}, fitted={self.fitted})")

