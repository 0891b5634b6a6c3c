"""Cleaning of a raw customer table: dedupe, spelling, types and outliers, with a report.

The caller's DataFrame is never modified: :func:`clean_table` works on a copy.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from clm_torch.data.schema import (SchemaError, TableSchema, _is_missing_token, distinct_rows, level_keys,
                                   to_numeric_strict)

log = logging.getLogger(__name__)


@dataclasses.dataclass
class CleaningReport:
    """What :func:`clean_table` changed. Every count refers to cells or rows of the input."""

    source: str
    rows_in: int = 0
    rows_out: int = 0
    duplicates_dropped: int = 0
    conflicting_duplicate_ids: int = 0
    case_colliding_ids: int = 0  # distinct ids that are another id in other letter case (kept apart)
    spelling_fixes: dict[str, int] = dataclasses.field(default_factory=dict)
    missing_tokens: dict[str, int] = dataclasses.field(default_factory=dict)
    clipped: dict[str, int] = dataclasses.field(default_factory=dict)
    missing_cells: dict[str, int] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        """A few human-readable lines."""
        lines = [f"cleaning {self.source}: {self.rows_in} rows in, {self.rows_out} rows out"]
        if self.duplicates_dropped:
            lines.append(
                f"  dropped {self.duplicates_dropped} duplicate rows by id (kept the last); "
                f"{self.conflicting_duplicate_ids} ids had conflicting values"
            )
        for name, d in (("normalised spellings", self.spelling_fixes), ("missing tokens → NaN", self.missing_tokens),
                        ("clipped outliers", self.clipped)):
            nonzero = {k: v for k, v in d.items() if v}
            if nonzero:
                lines.append(f"  {name}: " + ", ".join(f"{k}={v}" for k, v in nonzero.items()))
        miss = {k: v for k, v in self.missing_cells.items() if v}
        if miss:
            lines.append("  missing cells: " + ", ".join(f"{k}={v}" for k, v in miss.items()))
        return "\n".join(lines)


def _canonical_spellings(s: pd.Series) -> tuple[pd.Series, int]:
    """Map every case/whitespace variant of a category to its most frequent spelling.

    The strings are normalised and counted once per distinct value (weighted by its rows), not once
    per row; the result is the same as the row-wise count."""
    obj = s.astype(object)
    codes, uniques, rows = distinct_rows(obj)
    is_str = np.fromiter((isinstance(v, str) for v in uniques), dtype=bool, count=len(uniques))
    if not is_str.any():
        return s, 0
    rows = rows[is_str]
    raw = pd.Series(np.asarray(uniques, dtype=object)[is_str], dtype=object).astype(str)
    stripped = raw.str.strip()
    key = level_keys(raw).astype(object)  # the encoder matches levels by the same key
    # the rows of each (key, spelling) pair, most first; ties in order of first appearance (the
    # distinct values come in that order), as value_counts orders them
    counts = pd.DataFrame({"key": key, "val": stripped, "n": rows}).groupby(["key", "val"], sort=False)["n"].sum()
    counts = counts.sort_values(ascending=False, kind="stable")
    canon = {}
    for k, v in counts.index:
        canon.setdefault(k, v)
    fixed = key.map(canon).to_numpy(dtype=object)
    n_changed = int(rows[fixed != raw.to_numpy(dtype=object)].sum())
    value = np.empty(len(uniques), dtype=object)
    value[is_str] = fixed
    at = codes >= 0
    at[at] = is_str[codes[at]]
    out = obj.copy()
    out[at] = value[codes[at]]
    return out, n_changed


def check_ids_present(ids: pd.Series, *, source: str, column: str) -> None:
    """Refuse rows without a customer id, naming the first: deduplicated by id, they would all be one
    customer (every blank id equals every other) and all but the last dropped without a trace."""
    missing = ids.isna().to_numpy()
    if missing.any():
        raise SchemaError(f"missing customer id ({int(missing.sum())} rows); every row needs one (fill the ids, or "
                          "drop those rows)", source=source, column=column, row=int(np.flatnonzero(missing)[0]))


def lowered_ids(ids: pd.Index | pd.Series) -> pd.Series | None:
    """The ids in lower case (NaN for the non-text values of an object column); None when they hold
    no text at all (numbers, dates): they have no letter case.

    Only to find ids that differ in letter case alone (:func:`case_collisions`, events' id checks),
    which are reported and kept apart, never merged: ids are not category levels, so this is
    ``str.lower`` (Arrow's ``utf8_lower`` counts the same collisions), not :func:`level_keys`."""
    if pd.api.types.is_numeric_dtype(ids) or pd.api.types.is_bool_dtype(ids):
        return None
    try:
        return pd.Series(ids, copy=False).str.lower()
    except AttributeError:
        return None


def case_collisions(ids: pd.Index | pd.Series | np.ndarray, *, distinct: bool = False
                    ) -> tuple[int, tuple[Any, Any] | None]:
    """How many distinct text ids are another id in other letter case ('c001' beside 'C001'), and one
    such pair; (0, None) for numbers. An export that changed the case of some ids makes two
    customers of one. Works on the distinct ids, never on the rows: pass uniques (``distinct``:
    they are, skip the check). Arrow-backed text is lowered and counted by Arrow (about 15 ms for
    200k ids, off the GIL); pandas finds the example only when there is one."""
    values = pd.Index(ids)
    if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values) or len(values) < 2:
        return 0, None
    if not distinct and not values.is_unique:
        values = values.unique()
    arrow = getattr(values.array, "_pa_array", None)
    if isinstance(arrow, pa.ChunkedArray) and (pa.types.is_string(arrow.type) or pa.types.is_large_string(arrow.type)):
        if len(pc.unique(pc.utf8_lower(arrow))) == len(arrow):  # no two ids lower to one: the usual answer
            return 0, None
    low = lowered_ids(values)
    if low is None:
        return 0, None
    again = low.duplicated().to_numpy() & low.notna().to_numpy()
    if not again.any():
        return 0, None
    i = int(np.flatnonzero(again)[0])
    j = int(np.flatnonzero((low == low.iloc[i]).to_numpy())[0])
    return int(again.sum()), (values[j], values[i])


def decimal_collisions(ids: pd.Index | pd.Series | np.ndarray) -> tuple[int, tuple[Any, Any] | None]:
    """How many distinct text ids are a whole number written as a decimal ('17.0') beside the same
    number written plainly ('17'), and one such pair; (0, None) for numbers. An export through a
    float column (a pandas column of ids with a gap) writes '17.0', and ids compare as text. Only ids
    ending in '.0' are looked at (Arrow finds none in milliseconds, the usual answer)."""
    values = pd.Index(ids)
    if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values) or len(values) < 2:
        return 0, None
    arrow = getattr(values.array, "_pa_array", None)
    if not (isinstance(arrow, pa.ChunkedArray) and (pa.types.is_string(arrow.type)
                                                    or pa.types.is_large_string(arrow.type))):
        try:
            arrow = pa.chunked_array([pa.array(values.to_numpy(dtype=object), type=pa.string(), from_pandas=True)])
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # not all text
            return 0, None
    decimal = pc.fill_null(pc.ends_with(arrow, ".0"), False)
    if not pc.any(decimal).as_py():
        return 0, None
    decimal = decimal.to_numpy(zero_copy_only=False)
    text = pd.Series(arrow.to_numpy(zero_copy_only=False), dtype=object)
    cand = text[decimal].reset_index(drop=True)
    plain = cand.str.extract(r"^\s*([+-]?\d+)\.0+\s*$", expand=False)
    hit = plain.notna().to_numpy() & plain.isin(pd.Index(text[~decimal])).to_numpy()
    if not hit.any():
        return 0, None
    i = int(np.flatnonzero(hit)[0])
    return int(hit.sum()), (plain.iloc[i], cand.iloc[i])


def warn_id_collisions(ids: pd.Index | pd.Series | np.ndarray, *, source: str, column: str,
                         logger: logging.Logger = log, distinct: bool = False) -> int:
    """Log one warning when distinct ids differ only in letter case (:func:`case_collisions`), and one
    when whole numbers appear both plainly and as decimals ('17' and '17.0', :func:`decimal_collisions`);
    they are kept apart (not merged): only the data's owner knows whether they are one customer.
    Returns the number of ids that differ only in case (the cleaning report's ``case_colliding_ids``)."""
    n, pair = case_collisions(ids, distinct=distinct)
    if n:
        logger.warning("%s: column '%s': %d distinct ids equal another id but for letter case (e.g. %r and %r): "
                       "they count as different customers; if they are one, make the case uniform before loading "
                       "(e.g. .str.upper())", source, column, n, *pair)
    n_dec, pair = decimal_collisions(ids)
    if n_dec:
        logger.warning("%s: column '%s': %d ids are a whole number written as a decimal beside the same number "
                       "written plainly (e.g. %r and %r): they count as different customers; an export through a "
                       "number column writes '17.0' for 17: write the ids as text", source, column, n_dec, *pair)
    return n


def clip_bounds(obs: np.ndarray, k: float) -> tuple[float, float]:
    """``median ± k`` robust standard deviations of the observed values ``obs``: 1.4826 · MAD (the
    standard deviation for normal data, but not moved by the outliers it is meant to clip), else
    IQR / 1.349 when more than half the values are equal, else the standard deviation."""
    med = float(np.median(obs))
    scale = 1.4826 * float(np.median(np.abs(obs - med)))
    if scale <= 0:
        q1, q3 = np.quantile(obs, [0.25, 0.75])
        scale = float(q3 - q1) / 1.349
    if scale <= 0:
        scale = float(obs.std(ddof=1)) if obs.size > 1 else 0.0
    return med - k * scale, med + k * scale


def clean_table(
    df: pd.DataFrame,
    schema: TableSchema,
    *,
    source: str = "<dataframe>",
    dedupe: bool = True,
    normalise_spelling: bool = True,
    clip_outliers: float | None = None,
    check_id_case: bool = True,
) -> tuple[pd.DataFrame, CleaningReport]:
    """Clean a customer table.

    Steps: drop duplicate ids keeping the last occurrence (and count ids whose duplicates
    disagree); turn missing-value tokens (``""``, ``"NA"``, ``"?"`` …) into NaN; normalise
    category spellings (case and surrounding whitespace) to the most frequent variant; coerce
    numeric columns to float (text raises :class:`SchemaError` naming the first bad row);
    optionally clip numerics to ``median ± clip_outliers`` robust standard deviations (:func:`clip_bounds`).
    Ids that differ only in letter case get a warning (``check_id_case=False``: the caller's source
    has warned about them already, e.g. the customer view of an event log).

    Returns:
        (cleaned copy, report). The input is left untouched.
    """
    report = CleaningReport(source=source, rows_in=len(df))
    if schema.id_col and schema.id_col in df.columns:
        check_ids_present(df[schema.id_col], source=source, column=schema.id_col)
    out = df.copy(deep=True)
    if dedupe and schema.id_col and schema.id_col in out.columns:
        dup_mask = out.duplicated(subset=[schema.id_col], keep="last")
        if dup_mask.any():
            dup_ids = out.loc[dup_mask, schema.id_col].unique()
            involved = out[out[schema.id_col].isin(dup_ids)]
            n_variants = involved.astype(str).drop_duplicates().groupby(schema.id_col).size()
            report.conflicting_duplicate_ids = int((n_variants > 1).sum())
            report.duplicates_dropped = int(dup_mask.sum())
            out = out.loc[~dup_mask]
    if check_id_case and schema.id_col and schema.id_col in out.columns:  # 'C001', 'c001': distinct after the dedupe
        report.case_colliding_ids = warn_id_collisions(out[schema.id_col], source=source, column=schema.id_col,
                                                         distinct=dedupe)
    for col in [*schema.categorical, *schema.binary]:
        if col not in out.columns:
            continue
        s = out[col]
        if not (pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s)):
            tok = _is_missing_token(s) & s.notna()
            report.missing_tokens[col] = int(tok.sum())
            if tok.any():
                s = s.astype(object).where(~tok, np.nan)
            if normalise_spelling:
                s, n = _canonical_spellings(s)
                report.spelling_fixes[col] = n
            out[col] = s
    for col in schema.numeric:
        if col not in out.columns:
            continue
        before_na = int(out[col].isna().sum())
        num = to_numeric_strict(out[col], source=source, column=col)
        report.missing_tokens[col] = int(num.isna().sum()) - before_na
        if clip_outliers is not None and num.notna().sum() > 1:
            lo, hi = clip_bounds(num.dropna().to_numpy(dtype=np.float64), clip_outliers)
            report.clipped[col] = int(((num < lo) | (num > hi)).sum())
            num = num.clip(lo, hi)
        out[col] = num
    report.missing_cells = {c: int(out[c].isna().sum()) for c in schema.features if c in out.columns}
    report.rows_out = len(out)
    log.info(report.summary())
    return out, report
