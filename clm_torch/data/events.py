"""Event logs: loading with validation, and the customer view at a cutoff.

An *event log* is one row per purchase line: who (``customer_id``), when (``timestamp``) and,
optionally, how much (``amount``), what (``item_id``) and how many (``quantity``).

:func:`load_events` turns a CSV/Parquet file or a DataFrame into the canonical frame and raises
:class:`~clm_torch.data.schema.SchemaError` (naming the source, the column and the first bad row)
for every problem with the data.

:func:`build_customer_view` turns the canonical frame into one row per customer at one global
cutoff: features from events strictly **before** the cutoff, labels from events in
``[cutoff, cutoff + horizon)``, and the last-N purchase sequences. It is vectorised (one sort,
then ``np.bincount`` / ``reduceat`` over the sorted arrays): no Python loop per customer.

Refunds (policy)
----------------
Rows with a **negative amount** are kept as returns/refunds. They are *not* purchases: they do not
count as transactions, do not move recency, tenure, the inter-purchase gaps or the sequences, and
are excluded from ``monetary_mean``; they *are* included in the net totals ``monetary_total``
(before the cutoff) and ``future_spend`` (in the label window). A row with amount 0 is a purchase.
Without an amount column every row is a purchase.

Transactions
------------
Purchase rows of one customer with the same timestamp form one transaction (a basket). Counts,
gaps and the monetary mean are per transaction; ``n_distinct_items`` and the sequences are per row.
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
import logging
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa  # pandas' default string dtype is Arrow-backed; pyarrow reads the Parquet logs
import pyarrow.compute as pc
import torch

from clm_torch.data.cleaning import lowered_ids, warn_id_collisions
from clm_torch.data.schema import (SEQUENCE_COLUMN, SchemaError, check_date_format, check_id_kind, check_time_kind,
                                   date_format_hint, ints_if_whole, missing_cells, read_table, strip_ids,
                                   to_numeric_strict)
from clm_torch.utils.io import is_number, is_whole
from clm_torch.utils.memory import small_pages
from clm_torch.utils.progress import steps

log = logging.getLogger(__name__)

EVENT_COLUMNS = ("customer_id", "timestamp", "amount", "item_id", "quantity")
_NS_PER_DAY = 86_400 * 10**9

FEATURE_COLUMNS = (
    "recency_days",
    "frequency",
    "n_purchase_days",
    "monetary_mean",
    "monetary_total",
    "tenure_days",
    "ipt_mean_days",
    "ipt_std_days",
    "max_gap_days",
    "last_gap_days",
    "trend_log_ratio",
    "n_distinct_items",
    "basket_diversity",
)
LABEL_COLUMNS = ("churn", "future_spend", "future_n_tx")

# wide columns of the last purchases (k = 0 is the most recent): see sources.events.sequence_frame
SEQUENCE_KINDS = ("days", "amount", "item")


def sequence_column(k: int, kind: str) -> str:
    """Name of the wide column of the ``k``-th most recent purchase (k = 0 is the latest):
    ``seq{k}_days`` (days before the cutoff), ``seq{k}_amount`` or ``seq{k}_item`` (raw item id)."""
    if kind not in SEQUENCE_KINDS:
        raise ValueError(f"sequence column kind must be one of {SEQUENCE_KINDS}, not {kind!r}")
    return f"seq{int(k)}_{kind}"


def parse_sequence_column(name: str) -> tuple[int, str] | None:
    """``(k, kind)`` of a sequence column name (``"seq3_amount"`` → ``(3, "amount")``), else None."""
    m = SEQUENCE_COLUMN.match(str(name))
    return (int(m.group(1)), m.group(2)) if m else None


# ----------------------------------------------------------------------------- helpers


def _first_row(mask: pd.Series) -> Any:
    """Index label of the first True in a boolean Series."""
    return mask.index[int(np.flatnonzero(mask.to_numpy())[0])]


def _refuse_missing(missing: pd.Series, message: str, *, source: str, column: str) -> None:
    """Raise ``message`` (``{n}`` in it: the count) naming the first row where the boolean ``missing`` is
    True; nothing when none is."""
    if missing.any():
        raise SchemaError(message.format(n=int(missing.sum())), source=source, column=column, row=_first_row(missing))


def _may_have_missing(s: pd.Series) -> bool:
    """False when ``s`` certainly has no missing value, found without a log-sized mask: Arrow's null
    count, or a chunked scan of a numpy float or datetime column; True otherwise (then ``isna``)."""
    chunked = getattr(s.array, "_pa_array", None)
    if isinstance(chunked, pa.ChunkedArray) and not pa.types.is_floating(chunked.type):
        return chunked.null_count > 0
    values = s.array
    if isinstance(values, np.ndarray) or type(values).__name__ in ("NumpyExtensionArray", "DatetimeArray"):
        arr = np.asarray(values)
        if arr.dtype.kind == "f":
            return any(np.isnan(arr[a:b]).any() for a, b in _chunks(len(arr)))
        if arr.dtype.kind == "M":
            ints = arr.view("int64")
            return any((ints[a:b] == np.iinfo(np.int64).min).any() for a, b in _chunks(len(ints)))
    return True


def _to_utc_naive(ts: Any) -> pd.Timestamp:
    t = pd.Timestamp(ts)
    if t.tzinfo is not None:
        t = t.tz_convert("UTC").tz_localize(None)
    return t


def _in_date_format(text: str, date_format: str) -> pd.Timestamp:
    """``text`` read in ``date_format``, else in its date part alone ('%d/%m/%Y' of '%d/%m/%Y %H:%M');
    NaT when neither reads it."""
    t = pd.NaT
    time_part = re.search(r"[\sT]*%[HI]", date_format)
    for fmt in (date_format, date_format[:time_part.start()] if time_part else None):
        if fmt and t is pd.NaT:
            t = pd.to_datetime(pd.Series([text]), format=fmt, errors="coerce", utc=True).iloc[0]
    return t


def parse_cutoff(value: Any, *, setting: str, source: str = "config", date_format: str | None = None
                 ) -> pd.Timestamp:
    """A date setting (``data.cutoff``, ``data.customers_as_of``, or a function's date argument) as a
    naive UTC timestamp: a Timestamp or datetime, an ISO date or time (``YYYY-MM-DD...``), with or
    without a time zone (converted to UTC), a whole number (or text) YYYYMMDD, or text in
    ``date_format`` (``data.date_format``, e.g. '%d/%m/%Y'), or in its date part ('%d/%m/%Y' of
    '%d/%m/%Y %H:%M'), when it is given. With ``date_format`` a value is read in it first, then as
    YYYYMMDD or ISO: ``01032024`` with '%d%m%Y' is 1 March 2024 (a whole number from the command line
    too, when it has 8 digits). A value that is not
    a date (None, other numbers, other text, including day- or month-first dates such as
    ``01/10/2024`` without ``date_format``) raises a :class:`SchemaError` naming ``source`` and the setting."""
    def neither() -> SchemaError:
        return SchemaError(f"{setting}={value!r} is a date neither in data.date_format={date_format!r} nor in ISO "
                           "form (YYYY-MM-DD, e.g. 2024-10-01)", source=source)

    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        # the command line makes data.cutoff=20240601 a number: a whole YYYYMMDD is a date, other
        # numbers are refused (pd.Timestamp would read them as nanoseconds since 1970)
        text = str(int(value)) if float(value).is_integer() else ""
        if date_format is not None and len(text) == 8:  # 13032024 with '%d%m%Y' (a leading 0 keeps it text)
            t = _in_date_format(text, date_format)
            if t is not pd.NaT:
                return _to_utc_naive(t)
        t = pd.to_datetime(text, format="%Y%m%d", errors="coerce") if len(text) == 8 else pd.NaT
        if t is pd.NaT:
            if date_format is not None and len(text) == 8:
                raise neither()
            raise SchemaError(f"{setting}={value!r} is a number, not a date; use e.g. 2024-10-01 (in a YAML "
                              "file, quote a date written in digits, cutoff: '01032024': unquoted, a leading 0 "
                              "and digits up to 7 read as an octal number)", source=source)
        return t
    if isinstance(value, str):
        text = value.strip()
        if date_format is not None:  # the dates' own way of writing, as the log's, or its date part alone
            t = _in_date_format(text, date_format)
            if t is not pd.NaT:
                return _to_utc_naive(t)
        if re.fullmatch(r"\d{8}", text):  # YYYYMMDD as text, as the number above
            t = pd.to_datetime(text, format="%Y%m%d", errors="coerce")
            if t is pd.NaT:
                raise neither() if date_format is not None else SchemaError(
                    f"{setting}={value!r} is not a date as YYYYMMDD; use e.g. 2024-10-01, or give the way it is "
                    "written in data.date_format (e.g. '%d%m%Y')", source=source)
            return t
        if not re.match(r"\d{4}-\d{2}-\d{2}(?:$|[T ]\d)", text):
            if date_format is not None:
                raise neither()
            # pd.Timestamp reads '01/10/2024' as 10 January but '13/12/2026' day first, and 'today' as now
            hint = date_format_hint(pd.Series([text]))
            raise SchemaError(f"{setting}={value!r} is not a date in ISO form; use YYYY-MM-DD, e.g. 2024-10-01 or "
                              "2024-10-01T00:00:00+02:00 (other orders are ambiguous: is 01/10/2024 the first of "
                              "October or the tenth of January?)" + (f", or {hint}" if hint else ""), source=source)
        value = text
    try:
        t = pd.Timestamp(value)
    except (ValueError, TypeError) as e:
        raise SchemaError(f"{setting}={value!r} is not a date; use e.g. 2024-10-01 or 2024-10-01T00:00:00+02:00 "
                          f"({e})", source=source) from None
    if t is pd.NaT:
        raise SchemaError(f"{setting}={value!r} is not a date", source=source)
    return _to_utc_naive(t)


def _join_dates(table: pd.DataFrame, column: str, source: str, date_format: str | None = None) -> pd.Series:
    """The customer table's join dates (naive UTC; NaT where missing), named errors otherwise."""
    if column not in table.columns:
        raise SchemaError(f"join-date column not found; available columns: {list(table.columns)}", source=source,
                          column=column)
    s = table[column]
    missing = pd.Series(missing_cells(s), index=s.index)
    out = pd.Series(pd.NaT, index=table.index, dtype="datetime64[ns]")
    if (~missing).any():
        try:
            out[~missing] = parse_timestamps(s[~missing], source=source, column=column,
                                             date_format=date_format).to_numpy()
        except SchemaError as e:  # the table is indexed by id here: name the customer, not a "row"
            raise SchemaError(f"customer {e.row!r}: {e.detail}" if e.row is not None else e.detail,
                              source=source, column=column) from None
    return out


# a time of day followed by a UTC offset ('10:00:00+02:00', '10:00Z'); a date's '-03' is not one
_OFFSET = r"\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?\s*(?:Z|[+-]\d{2}(?::?\d{2})?)\s*$"


def _warn_mixed_offsets(s: pd.Series, *, source: str, column: str, sample: int = 20_000) -> None:
    """Warn when some ISO timestamps carry a UTC offset ('…+02:00', '…Z') and others do not: those
    without are read as UTC, which moves them by the offset if they were local times. Looks at up to
    ``sample`` evenly spaced values (a pass over every string would cost seconds on a large log)."""
    step = max(1, len(s) // sample)
    text = s.iloc[::step].astype("string")
    has = text.str.contains(_OFFSET, regex=True).fillna(False).to_numpy(dtype=bool)
    if has.any() and not has.all():
        log.warning("%s: column '%s': some timestamps carry a UTC offset (e.g. %r) and some do not (e.g. %r): those "
                    "without are read as UTC; if they are local times, give every value its offset", source, column,
                    text.iloc[int(np.flatnonzero(has)[0])], text.iloc[int(np.flatnonzero(~has)[0])])


# the strftime directives that _by_fields reads with Arrow's regex, each with the pattern of Python's
# (and pandas') strptime, so that a value matches, and splits into fields, as it does there
_FIELDS = {"%d": ("day", r"3[0-1]|[1-2]\d|0[1-9]|[1-9]| [1-9]"), "%m": ("month", r"1[0-2]|0[1-9]|[1-9]"),
           "%Y": ("year", r"\d\d\d\d"), "%y": ("year2", r"\d\d"), "%H": ("hour", r"2[0-3]|[0-1]\d|\d"),
           "%M": ("minute", r"[0-5]\d|\d"), "%S": ("second", r"6[0-1]|[0-5]\d|\d")}


def _literal(text: str) -> str:
    """Literal text of a format as strptime matches it: escaped, any run of spaces matching one or more."""
    return r"\s+".join(re.escape(part) for part in re.split(r"\s+", text))


def _by_fields(s: pd.Series, date_format: str) -> pd.Series | None:
    """``pd.to_datetime(s, format=date_format, utc=True, errors="coerce")`` for a format made of
    ``%d %m %Y %y %H %M %S`` and literal text (``'%d/%m/%Y %H:%M:%S'``), read with one Arrow regex
    and assembled from the numbers: pandas' strptime for a format other than ISO takes about 6 µs a
    value (a minute for 10M events). None for any other format, or values that are not all text."""
    parts, names, pos = [], [], 0
    for m in re.finditer(r"%.", date_format):
        if m.group() not in _FIELDS or _FIELDS[m.group()][0] in names:
            return None
        name, rx = _FIELDS[m.group()]
        parts.append(f"{_literal(date_format[pos:m.start()])}(?P<{name}>{rx})")
        names.append(name)
        pos = m.end()
    parts.append(_literal(date_format[pos:]))
    if not ({"day", "month"} <= set(names) and {"year", "year2"} & set(names)):
        return None
    try:
        arr = pa.array(s.to_numpy(dtype=object), type=pa.string())
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # not all text
        return None
    got = pc.extract_regex(arr, "^" + "".join(parts) + "$")  # null where a value does not match
    matched = ~pc.is_null(got).to_numpy(zero_copy_only=False)
    fields = {name: np.where(matched, pc.cast(pc.utf8_trim_whitespace(pc.struct_field(got, name)), pa.int64())
                             .fill_null(0).to_numpy(zero_copy_only=False), 0) for name in names}
    if "year2" in fields:  # as strptime: 69-99 are the 1900s, 00-68 the 2000s
        y2 = fields.pop("year2")
        fields["year"] = np.where(y2 < 69, 2000 + y2, 1900 + y2)
    # a value that does not match: a valid placeholder (2000-01-01), made NaT below
    frame = pd.DataFrame({k: np.where(matched, fields.get(k, 0), 2000 if k == "year" else 1 if k in ("month", "day")
                                      else 0) for k in ("year", "month", "day", "hour", "minute", "second")})
    out = pd.to_datetime(frame, errors="coerce", utc=True)  # 31 February is NaT, as strptime refuses it
    out[~matched] = pd.NaT
    return out.set_axis(s.index)


def parse_timestamps(s: pd.Series, *, source: str, column: str, date_format: str | None = None) -> pd.Series:
    """Parse a timestamp column to ``datetime64[ns]`` (naive, UTC).

    Accepted: datetime dtypes (tz-aware ones are converted to UTC), numbers as epoch seconds, whole
    numbers that are all valid ``YYYYMMDD`` dates (``20240301``, as a CSV of compact ISO dates reads),
    and ISO-8601 strings (``2024-03-01``, ``2024-03-01 10:00``, ``2024-03-01T10:00:00+02:00``), or,
    with ``date_format`` (``data.date_format``, a strftime format such as ``'%d/%m/%Y'``), text in
    that format instead (every text value must match it; numbers and datetimes are read as above).
    Numbers that would be epoch seconds before 1980 are refused: all of them (Excel day numbers, say),
    or some among later ones (a 0 placeholder, or YYYYMMDD dates mixed with epoch seconds).

    Raises:
        SchemaError naming the first missing or unparseable value and its row.
    """
    if pd.api.types.is_bool_dtype(s):
        raise SchemaError("expected timestamps but found booleans", source=source, column=column)
    _refuse_missing(pd.Series(missing_cells(s), index=s.index),
                    "missing timestamp ({n} missing values); every event needs a time", source=source, column=column)
    if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_datetime64_any_dtype(s):
        big = np.abs(s.to_numpy(dtype="float64")) > 1e11  # epoch seconds past the year 5000
        if big.any():
            first = _first_row(pd.Series(big, index=s.index))
            raise SchemaError(f"{s.loc[first]} is not a time in epoch seconds (it would be after the year 5000); "
                              "epoch milliseconds? divide the column by 1000", source=source, column=column, row=first)
    compact = None
    if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_datetime64_any_dtype(s):
        x = s.to_numpy(dtype="float64")
        if len(x) and np.all((x >= 1900_01_01) & (x <= 2100_12_31) & (x == np.floor(x))):
            compact = pd.to_datetime(pd.Series(x.astype(np.int64), index=s.index).astype(str), format="%Y%m%d",
                                     errors="coerce", utc=True)
            if compact.isna().any():  # YYYYMMDD-like numbers (as seconds they would be 1970), one not a date
                first = _first_row(compact.isna())
                raise SchemaError(f"{s.loc[first]} is not a date, though the column's numbers look like YYYYMMDD "
                                  "dates (as epoch seconds they would all be in 1970)", source=source, column=column,
                                  row=first)
            log.info("%s: column '%s' holds whole numbers that are all YYYYMMDD dates: read as dates", source, column)
        early = x < 315_532_800  # 1980-01-01 in epoch seconds
        if compact is None and len(x) and early.all():
            raise SchemaError(f"numbers read as epoch seconds would all be dates before 1980 (e.g. {s.iloc[0]} = "
                              f"{pd.Timestamp(float(s.iloc[0]), unit='s')}); Excel day numbers or another unit? "
                              "convert the column to ISO dates ('2024-03-01')", source=source, column=column)
        if compact is None and early.any():  # a few 1970 times among recent ones: read as real purchases
            first = _first_row(pd.Series(early, index=s.index))
            v = s.loc[first]
            kind = ("a YYYYMMDD date among epoch seconds: one kind of time per column"
                    if 1900_01_01 <= v <= 2100_12_31 and v == int(v) else
                    "a placeholder for a missing time? fix or drop such rows")
            raise SchemaError(f"{v} read as epoch seconds is {pd.Timestamp(float(v), unit='s')}, before 1980, while "
                              f"the column's latest time is {pd.Timestamp(float(np.nanmax(x)), unit='s')} "
                              f"({int(early.sum())} such values); {kind}", source=source, column=column, row=first)
    try:
        if compact is not None:
            out = compact
        elif pd.api.types.is_datetime64_any_dtype(s):
            out = pd.to_datetime(s, utc=True)
        elif pd.api.types.is_numeric_dtype(s):
            out = pd.to_datetime(s, unit="s", utc=True, errors="coerce")
        elif date_format is not None:
            # by fields where the format allows, else by pandas' strptime (about 6 µs a value for a format
            # other than ISO); each distinct value once where they repeat (dates without a time of day)
            head = s.iloc[:10_000]
            repeats = head.nunique() < len(head) // 2
            codes, values = pd.factorize(s) if repeats else (None, s)  # (no value is missing here)
            values = pd.Series(values, dtype=object) if repeats else values
            parsed = _by_fields(values, date_format)
            if parsed is None:
                parsed = pd.to_datetime(values, format=date_format, utc=True, errors="coerce")
            out = parsed.iloc[codes].set_axis(s.index) if repeats else parsed
            if out.isna().any():  # again without surrounding spaces (only where needed: a log can be long)
                miss = out.isna().to_numpy()
                out[miss] = pd.to_datetime(s[miss].astype("string").str.strip(), format=date_format, utc=True,
                                           errors="coerce")
        else:
            out = pd.to_datetime(s, format="ISO8601", utc=True, errors="coerce")
            _warn_mixed_offsets(s, source=source, column=column)
    except (ValueError, TypeError, OverflowError) as e:  # e.g. an out-of-range epoch value
        raise SchemaError(f"cannot parse timestamps: {e}", source=source, column=column) from None
    bad = out.isna()
    if bad.any():
        # dates mixed with epoch numbers: named as such
        check_time_kind(s, source=source, column=column, date_format=date_format)
        first = _first_row(bad)
        digits = isinstance(s.loc[first], str) and s.loc[first].strip().isdigit()
        if date_format is not None:
            raise SchemaError(f"cannot parse timestamp {s.loc[first]!r} (first of {int(bad.sum())}) with "
                              f"data.date_format={date_format!r}; fix those values, or the format",
                              source=source, column=column, row=first)
        hint = "" if digits else date_format_hint(s[bad.to_numpy()])
        raise SchemaError(
            f"cannot parse timestamp {s.loc[first]!r} (first of {int(bad.sum())}); use ISO 8601 "
            "('2024-03-01' or '2024-03-01T10:00:00') or epoch seconds"
            + (" as numbers, not text (e.g. pd.to_numeric(df[column]))" if digits else "")
            + (f", or {hint}" if hint else ""),
            source=source,
            column=column,
            row=first,
        )
    out = out.dt.tz_localize(None)
    try:
        return out.astype("datetime64[ns]")
    except (ValueError, OverflowError) as e:
        raise SchemaError(f"timestamp out of range (years 1677-2262): {e}", source=source, column=column) from None


# ----------------------------------------------------------------------------- loading


def load_events(
    path_or_df: str | os.PathLike | pd.DataFrame,
    *,
    customer_col: str,
    time_col: str,
    amount_col: str | None = None,
    item_col: str | None = None,
    quantity_col: str | None = None,
    source: str | None = None,
    future_policy: str = "error",
    now: Any = None,
    csv: Mapping[str, Any] | None = None,
    date_format: str | None = None,
) -> pd.DataFrame:
    """Read and validate an event log into the canonical frame.

    Parameters
    ----------
    path_or_df
        A CSV/TSV/Parquet file (read with :func:`~clm_torch.data.schema.read_table`) or a DataFrame.
    customer_col, time_col
        Names of the customer id and timestamp columns (required).
    amount_col, item_col, quantity_col
        Optional columns; left out of the result when None.
    source
        Name used in error messages; defaults to the file path or ``"<dataframe>"``.
    future_policy
        What to do with events after ``now``: ``"error"`` raises, ``"drop"`` drops them with a
        logged warning.
    now
        Reference time for the future check (anything ``pd.Timestamp`` accepts; tz-aware values are
        converted to UTC). Defaults to the current UTC time.
    csv
        The CSV dialect of a file (``data.csv``: ``sep``, ``decimal``, ``thousands``; see
        :func:`~clm_torch.data.schema.read_table`).
    date_format
        How the log's text timestamps are written when not in ISO 8601 (``data.date_format``, a
        strftime format such as ``'%d/%m/%Y'`` or ``'%m/%d/%Y %H:%M'``); None: ISO 8601. Epoch
        numbers and datetime columns are read as they are either way.

    Returns
    -------
    pd.DataFrame
        One row per event, input order, fresh ``RangeIndex``, columns:

        ========== ====================== ==================================================
        column     dtype                  meaning
        ========== ====================== ==================================================
        customer_id as read               never missing
        timestamp  datetime64[ns]         naive UTC, never in the future of ``now``
        amount     float64                only with ``amount_col``; < 0 = refund (kept)
        item_id    as read                only with ``item_col``; may be missing
        quantity   float64                only with ``quantity_col``; >= 0
        ========== ====================== ==================================================

    Raises
    ------
    SchemaError
        Missing column; missing customer id; missing/unparseable/future timestamp; missing or
        non-numeric amount; missing, non-numeric or negative quantity. The message names the
        source, the column and the first bad row (the DataFrame index; for a CSV file the data row
        counted from 0, i.e. file line ``row + 2``).
    """
    if future_policy not in ("error", "drop"):
        raise ValueError(f"future_policy must be 'error' or 'drop', got {future_policy!r}")
    check_date_format(date_format)
    if isinstance(path_or_df, pd.DataFrame):
        src = source or "<dataframe>"
        raw = path_or_df
        if len(raw) == 0:
            raise SchemaError("event log has no rows", source=src)
    else:
        src = source or str(path_or_df)
        # ids keep their leading zeros ('00048' and '48' are two SKUs)
        raw = read_table(path_or_df, what="event log", text_columns=[customer_col, *([item_col] if item_col else [])],
                         csv=csv)

    wanted = {
        "customer_id": customer_col,
        "timestamp": time_col,
        "amount": amount_col,
        "item_id": item_col,
        "quantity": quantity_col,
    }
    for col in wanted.values():
        if col is not None and col not in raw.columns:
            raise SchemaError(
                f"column not found in event log; available columns: {list(raw.columns)}", source=src, column=col
            )
        if col is not None and int((raw.columns == col).sum()) > 1:  # raw[col] would be a frame of them
            raise SchemaError(f"the log has {int((raw.columns == col).sum())} columns of this name; rename or drop all "
                              "but one", source=src, column=col)

    out: dict[str, pd.Series] = {}
    cid = raw[customer_col]
    _refuse_missing(pd.Series(missing_cells(cid), index=cid.index),
                    "missing customer id ({n} rows); every event needs a customer", source=src, column=customer_col)
    check_id_kind(cid, source=src, column=customer_col, what="customer ids")
    cid, n_stripped = strip_ids(cid)
    if n_stripped:
        log.warning("%s: %d customer ids had surrounding spaces, removed", src, n_stripped)
    out["customer_id"] = cid
    ts = parse_timestamps(raw[time_col], source=src, column=time_col, date_format=date_format)
    out["timestamp"] = ts

    if amount_col is not None:
        if pd.api.types.is_bool_dtype(raw[amount_col]):
            raise SchemaError("expected money amounts but found booleans (True/False)", source=src, column=amount_col)
        amount = to_numeric_strict(raw[amount_col], source=src, column=amount_col)
        huge = (amount.abs() > 1e15).to_numpy()  # sums of such amounts overflow the float32 sequences
        if huge.any():
            raise SchemaError(f"{int(huge.sum())} amounts beyond 1e15 (e.g. {amount[huge].iloc[0]:g}): not money; "
                              "fix or drop those events", source=src, column=amount_col,
                              row=_first_row(pd.Series(huge, index=amount.index)))
        _refuse_missing(amount.isna(), "missing amount ({n} rows); fill or drop those events", source=src,
                        column=amount_col)
        n_neg = int((amount < 0).sum())
        if n_neg == len(amount):
            raise SchemaError(
                f"every amount is negative ({n_neg} rows, e.g. {amount.iloc[0]}): negative amounts are refunds, "
                "so no event would be a purchase; if the log records purchases as negative numbers (debits), "
                "flip the sign",
                source=src,
                column=amount_col,
            )
        if n_neg:
            log.info("%s: %d events with a negative amount kept as refunds", src, n_neg)
        out["amount"] = amount
    if item_col is not None:
        items, n_stripped = strip_ids(raw[item_col])
        if n_stripped:
            log.warning("%s: %d item ids had surrounding spaces, removed", src, n_stripped)
        out["item_id"] = items
    if quantity_col is not None:
        qty = to_numeric_strict(raw[quantity_col], source=src, column=quantity_col)
        _refuse_missing(qty.isna(), "missing quantity ({n} rows)", source=src, column=quantity_col)
        neg = qty < 0
        if neg.any():
            first = _first_row(neg)
            raise SchemaError(
                f"negative quantity {qty.loc[first]} ({int(neg.sum())} rows); record returns as a "
                "negative amount with a positive quantity",
                source=src,
                column=quantity_col,
                row=first,
            )
        out["quantity"] = qty

    df = pd.DataFrame(out)
    now_ts = (_to_utc_naive(pd.Timestamp.now(tz="UTC")) if now is None
              else parse_cutoff(now, setting="now", source=src))
    future = df["timestamp"] > now_ts
    if future.any():
        first = _first_row(future)
        if future_policy == "error":
            raise SchemaError(
                f"timestamp {df['timestamp'].loc[first]} is in the future of {now_ts} "
                f"({int(future.sum())} such events); fix the clock/time zone or pass future_policy='drop' "
                "(data.future_policy=drop on the command line)",
                source=src,
                column=time_col,
                row=first,
            )
        if future.all():
            raise SchemaError(f"every event ({len(df)}) is in the future of {now_ts}, so future_policy='drop' would "
                              "leave none; fix the clock/time zone of the timestamps", source=src, column=time_col)
        log.warning("%s: dropping %d events after %s (first at row %s)", src, int(future.sum()), now_ts, first)
        df = df.loc[~future]
    return df.reset_index(drop=True)


# ----------------------------------------------------------------------------- customer view


@dataclasses.dataclass
class CustomerView:
    """Everything known about each customer at one cutoff.

    Attributes
    ----------
    features : pd.DataFrame
        Index ``customer_id`` (sorted), one row per customer; columns :data:`FEATURE_COLUMNS`
        (+ ``category_entropy`` with an item→category map, + ``share_<category>`` with
        ``category_shares``) followed by the customer-table columns.
    labels : pd.DataFrame
        Same index; ``churn`` (int64, 1 = no purchase in ``[cutoff, cutoff + horizon)``),
        ``future_spend`` (float64, net amount in the window), ``future_n_tx`` (int64). All NaN
        (float64) when the log has no event on or after the cutoff: the outcome is not known yet.
    sequences : dict[str, np.ndarray]
        Last ``n_last`` purchase rows before the cutoff, oldest first, left-aligned and zero-padded
        on the right, rows in the order of ``features.index``: ``item_idx`` (n, n_last) int64
        (index into ``item_vocab``; 0 = padding or unknown/missing item), ``amount`` (n, n_last)
        float32 (0 without an amount column), ``days_before_cutoff`` (n, n_last) float32,
        ``length`` (n,) int64.
    cutoff : pd.Timestamp
    horizon_days : float
    item_vocab : list
        ``item_vocab[0]`` is ``"<unk>"``; ``item_vocab[i]`` is the item with index ``i`` (items seen
        in purchases before the cutoff, sorted).
    customers_source : str
        Where the customer table came from (its file), for the errors about its columns.
    events_source : str
        Where the event log came from (its file), for the errors about the log.
    """

    features: pd.DataFrame
    labels: pd.DataFrame
    sequences: dict[str, np.ndarray]
    cutoff: pd.Timestamp
    horizon_days: float
    item_vocab: list = dataclasses.field(default_factory=lambda: ["<unk>"])
    customers_source: str = "customer table"
    events_source: str = "event log"


def _harmonise_ids(a: pd.Index, b: pd.Index) -> tuple[pd.Index, pd.Index]:
    """Make two id indexes comparable: integer-valued floats become ints; numbers vs strings → strings."""

    a, b = ints_if_whole(a), ints_if_whole(b)
    if pd.api.types.is_numeric_dtype(a) != pd.api.types.is_numeric_dtype(b):
        a, b = a.astype(str), b.astype(str)
    return a, b


def _warn_case_mismatch(ev_index: pd.Index, table_only: pd.Index, src: str, tsrc: str, column: str) -> None:
    """Warn when ids of the customer table that are not in the event log are there in other letter
    case ('c001' in the table, 'C001' in the log): the view would hold two customers, one without
    purchases and one without table columns. Distinct ids only; nothing is merged."""
    if not len(table_only):
        return
    ev_low, low = lowered_ids(ev_index), lowered_ids(table_only)
    if ev_low is None or low is None:  # numbers on either side: no letter case to compare
        return
    hit = low.isin(ev_low.dropna()).to_numpy() & low.notna().to_numpy()
    if hit.any():
        i = int(np.flatnonzero(hit)[0])
        j = int(np.flatnonzero((ev_low == low.iloc[i]).to_numpy())[0])
        log.warning("%s: column '%s': %d ids of the customer table are in the event log (%s) only in other letter case "
                    "(e.g. %r in the table, %r in the log): they count as two customers, one without purchases and "
                    "one without the table's columns; make the case uniform before loading", tsrc, column,
                    int(hit.sum()), src, table_only[i], ev_index[j])


def _warn_zeros_mismatch(ev_index: pd.Index, table_only: pd.Index, src: str, tsrc: str, column: str) -> None:
    """Warn when ids of the customer table that are not in the event log are there with other leading
    zeros ('1' or 1 in the table, '000001' in the log; Excel drops the zeros of ids it takes for
    numbers): the view would hold two customers, one without purchases and one without table
    columns, and the share of table ids found in the log would only say "customers without
    purchases". Distinct ids only; nothing is merged."""
    if not len(table_only) or not len(ev_index):
        return
    ev_text = pd.Series(ev_index, dtype="string").str.strip()
    tab_text = pd.Series(table_only, dtype="string").str.strip()
    if not (ev_text.str.startswith("0").any() or tab_text.str.startswith("0").any()):
        return  # no id has a leading zero: nothing to lose
    ev_key, tab_key = ev_text.str.lstrip("0"), tab_text.str.lstrip("0")
    hit = tab_key.isin(ev_key.dropna()).fillna(False).to_numpy(dtype=bool) & (tab_key != "").fillna(False).to_numpy()
    if hit.any():
        i = int(np.flatnonzero(hit)[0])
        j = int(np.flatnonzero((ev_key == tab_key.iloc[i]).fillna(False).to_numpy())[0])
        log.warning("%s: column '%s': %d ids of the customer table are in the event log (%s) only with other leading "
                    "zeros (e.g. %r in the table, %r in the log): they count as two customers, one without purchases "
                    "and one without the table's columns. Excel drops the leading zeros of ids it reads as numbers: "
                    "export the id column as text, or pad it (e.g. df[col].str.zfill(%d))", tsrc, column,
                    int(hit.sum()), src, table_only[i], ev_index[j], len(str(ev_index[j])))


def _indices(encoded: pa.DictionaryArray) -> np.ndarray:
    """The indices of a dictionary array as numpy, -1 for null (zero-copy without nulls)."""
    idx = encoded.indices
    return (idx if idx.null_count == 0 else idx.fill_null(-1)).to_numpy(zero_copy_only=False)


def _encode_chunks(chunks: Sequence[pa.Array], type_: pa.DataType) -> tuple[pa.Array, list[np.ndarray]]:
    """Arrow's dictionary encoding of a run of chunks: (dictionary in first-seen order, indices per
    chunk, -1 for null). Arrow encodes all chunks with one memo table and gives every chunk the same
    final dictionary, so the indices are used as they are: no copy of the strings into one chunk and
    no unification (which rehashes every chunk's dictionary). Should the chunks come back with
    dictionaries of their own, they are unified."""
    enc = pc.dictionary_encode(pa.chunked_array(chunks, type=type_))
    first = enc.chunk(0).dictionary

    def same(d: pa.Array) -> bool:
        return len(d) == len(first) and d.offset == first.offset and all(
            (x is None and y is None) or (x is not None and y is not None and x.address == y.address)
            for x, y in zip(d.buffers(), first.buffers()))

    if not all(same(c.dictionary) for c in enc.chunks):
        enc = enc.unify_dictionaries()
    return enc.chunk(0).dictionary, [_indices(c) for c in enc.chunks]


# Columns with at least this many rows (and two chunks) are encoded in two halves on two threads.
_PARALLEL_ROWS = 1 << 20


def _factorize(values: pd.Series, pool: ThreadPoolExecutor | None = None) -> tuple[np.ndarray, pd.Index]:
    """``pd.factorize(values, sort=False)`` (codes, -1 for missing; uniques in first-seen order), faster
    for the column types event logs arrive in. The codes are int32 or int64 (Arrow's int32 indices
    are kept, not widened: a log-sized array less).

    * categorical: its codes and categories, no hashing (unused categories are harmless here);
    * Arrow-backed strings (pandas' ``str`` dtype read from Parquet/CSV): Arrow's dictionary
      encoding of the chunked column (:func:`_encode_chunks`). With a ``pool`` (one more thread), a
      long column is encoded in two halves at once (Arrow releases the GIL), then the second half's
      dictionary is looked up in the first's and its new values appended in their first-seen order:
      the same codes and uniques as one pass, in about 0.7 of the time at 20M rows.
    """
    if isinstance(values.dtype, pd.CategoricalDtype):
        codes = values.cat.codes.to_numpy()
        return codes.astype(np.promote_types(codes.dtype, np.int32), copy=False), values.cat.categories
    chunked = getattr(values.array, "_pa_array", None)
    if isinstance(chunked, pa.ChunkedArray) and len(chunked) > 0 \
            and (pa.types.is_string(chunked.type) or pa.types.is_large_string(chunked.type)):
        try:
            chunks = [c for c in chunked.chunks if len(c)]
            h = len(chunks) // 2
            if pool is not None and h and len(chunked) >= _PARALLEL_ROWS:
                second = pool.submit(_encode_chunks, chunks[h:], chunked.type)
                dictionary, indices = _encode_chunks(chunks[:h], chunked.type)
                dict_b, indices_b = second.result()
                pos = pc.index_in(dict_b, value_set=dictionary)
                new = np.asarray(pos.is_null())
                # code of each of the second half's values; the last slot maps a missing value (-1) to -1
                remap = np.empty(len(dict_b) + 1, dtype=np.int64)
                remap[:-1] = pos.fill_null(-1).to_numpy(zero_copy_only=False)
                remap[:-1][new] = len(dictionary) + np.arange(int(new.sum()))
                remap[-1] = -1
                dictionary = pa.concat_arrays([dictionary, dict_b.filter(pa.array(new))])
                remap = remap.astype(np.int32 if len(dictionary) < 2**31 else np.int64)
                indices += [remap[i] for i in indices_b]
            else:
                dictionary, indices = _encode_chunks(chunks, chunked.type)
            codes = np.concatenate(indices) if len(indices) > 1 else indices[0]
            return codes.astype(np.promote_types(codes.dtype, np.int32), copy=False), \
                pd.Index(pd.array(dictionary, dtype=values.dtype))
        except (pa.ArrowException, TypeError, ValueError):  # pragma: no cover - odd extension types
            pass
    codes, uniques = pd.factorize(values, sort=False)
    return codes.astype(np.int64, copy=False), pd.Index(uniques)


# Events per chunk of the passes over the whole log: their temporaries stay a few MB and are reused
# instead of one fresh log-sized array per step.
_CHUNK_EVENTS = 1 << 20
# Events per group of consecutive customers that is sorted and computed on its own: every array of a
# group fits in the cache and the allocator's reused memory, so time per event stays flat as the log
# grows (a log-sized sort and log-sized random gathers cost 1.5-3x more per event at 20M events).
_GROUP_EVENTS = 1 << 21
# The (row, time) pair is sorted as one int64 key below this bound
_KEY_LIMIT = 2**62


def _chunks(n: int) -> list[tuple[int, int]]:
    return [(a, min(a + _CHUNK_EVENTS, n)) for a in range(0, n, _CHUNK_EVENTS)]


def _partition(
    row_of_code: np.ndarray, codes: np.ndarray, ts: np.ndarray, end_ns: int, n_rows: int
) -> tuple[int, list[list[np.ndarray]]]:
    """Positions of the relevant events (customer row >= 0, time < ``end_ns``), split into groups of
    ``rows_per_group`` consecutive rows (a power of two near ``_GROUP_EVENTS`` events), each group's
    positions in log order (as pieces to concatenate).

    One chunked pass; the group number is a small integer, so the stable split per chunk is numpy's
    radix sort.
    """
    shift = max(0, int(np.log2(max(1, (n_rows * _GROUP_EVENTS) // max(len(ts), 1)))))
    rows_per_group = 1 << shift
    n_groups = max(1, -(-n_rows // rows_per_group))
    gtype = np.uint8 if n_groups <= 256 else np.uint16 if n_groups <= 65536 else np.int64
    itype = np.int32 if len(ts) < 2**31 else np.int64
    parts: list[list[np.ndarray]] = [[] for _ in range(n_groups)]
    for a, b in _chunks(len(ts)):
        r = row_of_code[codes[a:b]]
        keep = (ts[a:b] < end_ns) & (r >= 0)
        sel = np.flatnonzero(keep).astype(itype)
        sel += a
        if n_groups == 1:
            parts[0].append(sel)
            continue
        g = (r[keep] >> shift).astype(gtype)
        sel = sel[np.argsort(g, kind="stable")]
        ends = np.cumsum(np.bincount(g, minlength=n_groups))
        for j, piece in enumerate(np.split(sel, ends[:-1])):
            if len(piece):
                parts[j].append(piece)
    return rows_per_group, parts


class _Work:
    """Work arrays of ``cap`` cells for :func:`_sort_order` and :class:`_GroupSorter`, allocated once and
    reused by every group: a fresh array per group and step costs its first touch again each time."""

    def __init__(self, cap: int) -> None:
        self.key, self.scratch, self.row = (np.empty(cap, dtype=np.int64) for _ in range(3))
        self.values, self.order = torch.empty(cap, dtype=torch.int64), torch.empty(cap, dtype=torch.int64)


def _sort_order(code: np.ndarray, ts: np.ndarray, n_codes: int, work: _Work | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stable order by (code, ts), and ``code`` and ``ts`` in that order (views into ``work``, whose
    arrays are reused by the next call, when it is given).

    One int64 key when it fits (much faster than ``np.lexsort``): the timestamps are expressed in
    the coarsest unit (day, s, ms, us, ns) that represents every difference exactly, so the single
    key sorts exactly like the pair, and the sorted keys decode back to (code, ts) with sequential
    arithmetic instead of two random gathers.
    """
    m = len(ts)
    if m == 0:
        return np.zeros(0, dtype=np.int64), code[:0].astype(np.int64), ts[:0]
    work = work if work is not None else _Work(m)
    t0 = int(ts.min())
    rel = np.subtract(ts, t0, out=work.key[:m])
    scratch = work.scratch[:m]
    for unit in (_NS_PER_DAY, 10**9, 10**6, 10**3, 1):
        # a cheap look at the first cells rules most units out without a pass over all of them
        if unit == 1 or (not np.remainder(rel[:4096], unit).any()
                         and not np.remainder(rel, unit, out=scratch).any()):
            break
    span = int(rel.max()) // unit + 1
    if n_codes * span < _KEY_LIMIT:
        key = np.floor_divide(rel, unit, out=rel)
        key += np.multiply(code, span, out=scratch, dtype=np.int64)
        # torch's stable CPU sort of integer keys: 2.8x faster than numpy's argsort at 20M keys (2 threads)
        values, order = work.values[:m], work.order[:m]
        torch.sort(torch.from_numpy(key), stable=True, out=(values, order))
        sorted_key = values.numpy()
        code_sorted = np.floor_divide(sorted_key, span, out=work.row[:m])
        sorted_key -= np.multiply(code_sorted, span, out=scratch)  # ts = (key - code * span) * unit + t0
        sorted_key *= unit
        sorted_key += t0
        return order.numpy(), code_sorted, sorted_key
    order = np.lexsort((ts, code))
    return order, code[order].astype(np.int64), ts[order]


class _GroupSorter:
    """The events of one group of customers at a time, sorted by (row, time), with their amounts and
    item codes, in arrays allocated once for the largest group (see :class:`_Work`)."""

    def __init__(self, cap: int, row_of_code: np.ndarray, codes: np.ndarray, ts: np.ndarray,
                 amount: np.ndarray | None, items: np.ndarray | None) -> None:
        self.row_of_code, self.codes, self.ts_all, self.amount_all, self.items_all = row_of_code, codes, ts, amount, items
        self.work = _Work(cap)
        self.code, self.ts = np.empty(cap, dtype=np.int64), np.empty(cap, dtype=np.int64)
        self.gathered = {name: (np.empty(cap, dtype=col.dtype), np.empty(cap, dtype=col.dtype))
                         for name, col in (("amount", amount), ("items", items)) if col is not None}
        self.codes_at = np.empty(cap, dtype=codes.dtype)
        self.idx = np.empty(cap, dtype=np.int32 if len(ts) < 2**31 else np.int64)

    def __call__(self, pieces: list[np.ndarray], first_row: int, n_rows: int) -> tuple[np.ndarray, ...]:
        """Rows (relative to ``first_row``), times, amounts and item codes (None without the column) of
        the events at the positions of the log in ``pieces`` (ascending), stably sorted by (row, time)."""
        m = sum(len(p) for p in pieces)
        idx = np.concatenate(pieces, out=self.idx[:m]) if pieces else self.idx[:0]
        codes_at = np.take(self.codes, idx, out=self.codes_at[:m], mode="clip")  # clip: no bounds buffer
        code = np.take(self.row_of_code, codes_at, out=self.code[:m], mode="clip")
        code -= first_row
        ts = np.take(self.ts_all, idx, out=self.ts[:m], mode="clip")
        order, row, ts = _sort_order(code, ts, n_rows, self.work)
        out = {}
        for name, (at_idx, sorted_) in self.gathered.items():
            col = self.amount_all if name == "amount" else self.items_all
            np.take(col, idx, out=at_idx[:m], mode="clip")
            out[name] = np.take(at_idx[:m], order, out=sorted_[:m], mode="clip")
        return row, ts, out.get("amount"), out.get("items")


def _group_starts(codes: np.ndarray) -> np.ndarray:
    """Start positions of the runs of equal values in a sorted code array."""
    if len(codes) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])


@small_pages()  # its log-sized temporaries: huge pages cost more than they save (utils/memory.py)
def build_customer_view(
    events: pd.DataFrame,
    cutoff: Any,
    *,
    horizon_days: float = 90,
    customers: pd.DataFrame | None = None,
    customer_id_col: str = "customer_id",
    n_last: int = 10,
    trend_window_days: float = 90,
    item_categories: Mapping | pd.Series | None = None,
    category_shares: bool = False,
    customers_source: str | None = None,
    customers_as_of: Any = None,
    customers_joined_col: str | None = None,
    events_source: str | None = None,
    warn_ids: bool = True,
    date_format: str | None = None,
) -> CustomerView:
    """Features before one global cutoff, labels after it, and last-N purchase sequences.

    Parameters
    ----------
    events
        The canonical frame of :func:`load_events` (``customer_id``, ``timestamp`` and optionally
        ``amount``, ``item_id``).
    cutoff
        The one cutoff for every customer. Features use events with ``timestamp < cutoff`` only.
    horizon_days
        Length of the label window ``[cutoff, cutoff + horizon_days)``.
    customers
        Optional customer table, outer-joined on the id: customers only in the table are kept (with
        the "no history" values below), customers only in the events get NaN table columns.
    customer_id_col
        Id column of ``customers`` (or the name of its index).
    n_last
        Length of the sequences.
    trend_window_days
        Window ``w`` of the trend feature.
    item_categories
        Optional item→category map; adds ``category_entropy``.
    category_shares
        With ``item_categories``: also add ``share_<category>`` for every category of the map
        (sorted by name; the same columns at every cutoff).
    customers_source
        Where ``customers`` came from (e.g. its file), named in the errors about it; default
        ``"customer table"``.
    customers_as_of
        When the customer table was current (e.g. its export date; None: at the cutoff). For a
        cutoff before it, the table also lists customers who joined after the cutoff, and those
        who first bought inside the label window would join the view as customers without history
        who did not churn (a leak from the future). So its customers without an event before the
        cutoff are left out (logged); its columns still join the customers with history.
    customers_joined_col
        A column of ``customers`` with the date each customer joined (signed up), when the table has
        one. Then whether a table customer existed at the cutoff is known: those who joined before it
        are in the view, with or without a purchase (and with their true label), those who joined
        on or after it are not; ``customers_as_of`` decides only for a missing date. The column is
        replaced by ``<column>_days``, the days from joining to the cutoff (a feature).
    events_source
        Where ``events`` came from (e.g. its file), named in the errors and warnings about it;
        default ``"<events>"``.
    warn_ids
        Warn about the id columns: ids that differ only in letter case (in the log, in the table,
        or between the two) and a table whose ids are mostly not in the log. ``False`` for a second
        view of the same events and table (another cutoff), whose warnings would be the same: every
        event's id is read, whatever the cutoff. Errors (a table sharing no id with the log) stay.
    date_format
        How ``customers_joined_col``'s text dates are written when not in ISO 8601
        (``data.date_format``, e.g. ``'%d/%m/%Y'``); None: ISO 8601.

    Returns
    -------
    CustomerView
        The population is every customer with at least one event before the cutoff, plus every
        customer of ``customers`` (unless ``customers_as_of`` is after the cutoff); customers whose
        first event is on/after the cutoff and who are not in the table are left out (they did not
        exist at the cutoff).

        Features (days are fractional, ``(cutoff - t) / 1 day``):

        ================= ==========================================================================
        recency_days      days since the last purchase
        frequency         number of purchase transactions (distinct timestamps)
        n_purchase_days   number of distinct calendar days with a purchase
        monetary_mean     mean non-negative spend per transaction (refunds excluded)
        monetary_total    net sum of all amounts, refunds included
        tenure_days       days since the first purchase (T)
        ipt_mean_days     mean gap between consecutive transactions (>= 2 transactions)
        ipt_std_days      sample std (ddof=1) of those gaps (>= 3 transactions)
        max_gap_days      longest gap (>= 2 transactions)
        last_gap_days     gap between the last two transactions (>= 2 transactions)
        trend_log_ratio   log((n_recent + 1) / (n_previous + 1)): transactions in
                          [cutoff - w, cutoff) vs [cutoff - 2w, cutoff - w)
        n_distinct_items  distinct items among purchase rows (0 without an item column)
        basket_diversity  n_distinct_items / frequency
        category_entropy  Shannon entropy (nats) of the categories of the purchase rows (only with
                          ``item_categories``; unmapped items count as one "<unk>" category)
        share_<category>  share of the purchase rows in that category (only with ``item_categories``
                          and ``category_shares``; unmapped items count in the denominator only, so
                          the shares of a customer sum to 1 minus their unmapped share)
        ================= ==========================================================================

        A customer with no purchase before the cutoff has ``frequency``, ``n_purchase_days`` and
        ``n_distinct_items`` = 0, ``monetary_total`` = net refunds (0 with no events), and NaN for
        every other feature. Without an amount column, ``monetary_*`` and ``future_spend`` are NaN.

    Raises
    ------
    SchemaError
        Events lacking ``customer_id``/``timestamp``, a non-datetime timestamp column, a customer
        table without the id column, with missing or duplicated ids, or with a column named like a
        feature.

    Events that repeat another exactly (same customer, time, item and amount: a bad export or an
    append done twice) and customer ids that differ only in letter case ('C001' and 'c001') are
    logged, not dropped or merged: either can be genuine.
    """
    src = events_source or "<events>"
    for col in ("customer_id", "timestamp"):
        if col not in events.columns:
            raise SchemaError(
                f"column not found; pass the frame returned by load_events (columns {list(EVENT_COLUMNS)})",
                source=src,
                column=col,
            )
    if not pd.api.types.is_datetime64_any_dtype(events["timestamp"]):
        raise SchemaError(
            "timestamp is not a datetime column; read the log with load_events", source=src, column="timestamp"
        )
    for name, v in (("horizon_days", horizon_days), ("trend_window_days", trend_window_days)):
        if not (is_number(v) and 0 < v <= 36_500):  # past 100 years: no datetime holds the window
            raise ValueError(f"{name} must be a number of days in (0, 36500], got {v!r}")
    if not is_whole(n_last, 1):
        raise ValueError(f"n_last must be a whole number >= 1 (purchases per sequence), got {n_last!r}")
    if "amount" in events.columns and not (pd.api.types.is_numeric_dtype(events["amount"])
                                           and not pd.api.types.is_bool_dtype(events["amount"])):
        raise SchemaError(f"expected money amounts (numbers) but found {events['amount'].dtype} values; read the log "
                          "with load_events (which parses text amounts)", source=src, column="amount")
    # 20240601 is that day, not 20 ms after 1970
    cutoff = parse_cutoff(cutoff, setting="cutoff", source=src, date_format=date_format)
    if customers_as_of is not None:
        customers_as_of = parse_cutoff(customers_as_of, setting="customers_as_of", source=src,
                                        date_format=date_format)
    cut_ns = int(np.datetime64(cutoff, "ns").astype("int64"))
    end_ns = cut_ns + int(round(horizon_days * _NS_PER_DAY))
    w_ns = int(round(trend_window_days * _NS_PER_DAY))
    has_amount = "amount" in events.columns
    has_item = "item_id" in events.columns

    with steps(f"features from {len(events):,} events", 5) as step:
        step("sorting events")
        # --- arrays of the relevant rows (ts < cutoff + horizon), sorted by (customer, time) -----
        for col in ("customer_id", "timestamp", *(["amount"] if has_amount else [])):
            if not _may_have_missing(events[col]):
                continue
            bad = events[col].isna()
            if bad.any():
                raise SchemaError(
                    f"{int(bad.sum())} missing values; read the log with load_events",
                    source=src,
                    column=col,
                    row=_first_row(bad),
                )
        ts_all = events["timestamp"]
        if ts_all.dt.tz is not None:
            ts_all = ts_all.dt.tz_convert("UTC").dt.tz_localize(None)
        ts_all = ts_all.to_numpy().astype("datetime64[ns]", copy=False).view("int64")
        # both cores (Arrow's hashing and sorting release the GIL): the customer ids are encoded in two
        # halves at once, then sorted on the second core while the first encodes the item ids
        pool = ThreadPoolExecutor(max_workers=1)
        try:
            ev_codes, ev_uniques = _factorize(events["customer_id"], pool)
            ev_index = pd.Index(ev_uniques)
            id_order = pool.submit(ev_index.argsort) if customers is None else None
            # 'C001' and 'c001' in the log: a look at the distinct ids, on the second core too
            case_check = pool.submit(warn_id_collisions, ev_index, source=src, column="customer_id", logger=log,
                                     distinct=True) if warn_ids else None
            it_codes, it_uniques = _factorize(events["item_id"]) if has_item else (None, None)  # -1 = missing
        finally:
            pool.shutdown(wait=False)  # a submitted job runs to its end; its result is read below

        step("customers")
        # --- population and mapping event-customer code -> row -----------------------------------
        k = len(ev_uniques)
        had_before = np.zeros(k, dtype=bool)
        for a, b in _chunks(len(ts_all)):
            had_before[ev_codes[a:b][ts_all[a:b] < cut_ns]] = True
        table = None
        tsrc = customers_source or "customer table"
        if customers is not None:
            table = customers.copy()
            if customer_id_col in table.columns:
                table = table.set_index(customer_id_col)
            elif table.index.name != customer_id_col:
                raise SchemaError(
                    f"customer table has no id column; available columns: {list(customers.columns)}",
                    source=tsrc,
                    column=customer_id_col,
                )
            table.index = strip_ids(table.index)[0]  # 'C001 ' and 'C001' are one customer
            ids = table.index.to_series()
            if ids.isna().any():
                raise SchemaError(
                    "missing customer id in the customer table",
                    source=tsrc,
                    column=customer_id_col,
                    row=int(np.flatnonzero(ids.isna().to_numpy())[0]),
                )
            dup = table.index.duplicated()
            if dup.any():
                i = int(np.flatnonzero(dup)[0])
                raise SchemaError(
                    f"duplicated customer id {table.index[i]!r} in the customer table",
                    source=tsrc,
                    column=customer_id_col,
                    row=i,
                )
            clash = [c for c in table.columns if c in FEATURE_COLUMNS or c == "category_entropy"]
            if clash:
                raise SchemaError(
                    "customer table column has the name of an event feature; rename it",
                    source=tsrc,
                    column=clash[0],
                )
            if warn_ids:
                case_check.result()  # the log's warning first
                warn_id_collisions(table.index, source=tsrc, column=customer_id_col, logger=log, distinct=True)
            ev_index, tab_index = _harmonise_ids(ev_index, table.index)
            table.index = tab_index
            shared = tab_index.isin(ev_index)
            if len(tab_index) >= 10 and len(ev_index) >= 10 and not shared.any():  # tiny tables may be all new
                raise SchemaError(
                    f"none of the customer table's {len(tab_index):,} ids is a customer of the event log (e.g. "
                    f"{tab_index[0]!r} in the table, {ev_index[0]!r} in the log); check that the id columns hold the "
                    "same ids (type, letter case, leading zeros)", source=tsrc, column=customer_id_col)
            if warn_ids:
                _warn_case_mismatch(ev_index, tab_index[~shared], src, tsrc, customer_id_col)
                _warn_zeros_mismatch(ev_index, tab_index[~shared], src, tsrc, customer_id_col)
            if warn_ids and len(tab_index) and shared.mean() < 0.5:
                log.warning("%s: only %d of %d customer-table ids are in the event log; the others are customers "
                            "without purchases (check the id columns if that is unexpected)", tsrc, int(shared.sum()),
                            len(tab_index))
            # the table's customers in the view: those who existed at the cutoff, by their join date when
            # the table has one, else all of them when the table is of the cutoff (not of a later date)
            table_current = customers_as_of is None or customers_as_of <= cutoff
            exists = np.full(len(tab_index), table_current)
            if customers_joined_col is not None:
                joined = _join_dates(table, customers_joined_col, tsrc, date_format)
                exists = np.where(joined.notna().to_numpy(), (joined < cutoff).to_numpy(), exists)
                table[f"{customers_joined_col}_days"] = ((cutoff - joined) / pd.Timedelta(days=1)).to_numpy()
                table = table.drop(columns=[customers_joined_col])
            population = ev_index[had_before]
            left_out = int((~(exists | tab_index.isin(population))).sum())
            if left_out:
                later = f"the table is of {customers_as_of}" if not table_current else ""
                why = ("they joined on or after it" + (f", or have no join date and {later}" if later else "")
                       if customers_joined_col is not None else f"{later}: some joined later")
                log.info("%s: %d of its %d customers have no event before the cutoff %s; left out of the view (%s)",
                         tsrc, left_out, len(tab_index), cutoff, why)
            existed = tab_index[exists]
            population = population.union(existed) if len(existed) else population.sort_values()
            population = population.rename("customer_id")
            row_of_code = population.get_indexer(ev_index)  # -1: not in the population
        else:  # the sorted ids of customers with history; their rows follow from the sort, no hashing
            by_id = id_order.result()
            by_id = by_id[had_before[by_id]]
            population = ev_index[by_id].rename("customer_id")
            row_of_code = np.full(k, -1, dtype=np.int64)
            row_of_code[by_id] = np.arange(len(population))
        n = len(population)
        if case_check is not None:
            case_check.result()

        # --- the relevant events (population, ts < cutoff + horizon), sorted by (row, time) ----------
        amount_all = events["amount"].to_numpy(dtype="float64") if has_amount else None
        rows_per_group, parts = _partition(row_of_code, ev_codes, ts_all, end_ns, n)
        step("RFM and trend features")
        # --- the category maps, over the whole log (the vocabulary follows from the blocks) ------------
        vocab: list = ["<unk>"]
        cat_of_item: np.ndarray | None = None  # category code per item code (last slot: missing item)
        share_of_item: np.ndarray | None = None
        share_names: list = []
        if has_item:
            if item_categories is not None:
                cat_map = pd.Series(item_categories) if isinstance(item_categories, Mapping) else item_categories
                mapped = pd.Series(list(it_uniques) + [None], dtype=object).map(cat_map)
                cat_of_item = pd.factorize(mapped.astype(object).where(mapped.notna(), "<unk>"))[0]
                if category_shares:  # every category of the map, sorted by name; last slot: unmapped
                    cats = pd.Index(pd.unique(cat_map.dropna()))
                    share_names = list(cats[np.argsort([str(c) for c in cats], kind="stable")])
                    share_of_item = pd.Index(share_names).get_indexer(mapped)
                    share_of_item = np.where(share_of_item >= 0, share_of_item, len(share_names))
                    if table is not None:
                        clash = [f"share_{c}" for c in share_names if f"share_{c}" in table.columns]
                        if clash:
                            raise SchemaError("customer table column has the name of a category-share feature; "
                                              "rename it", source=tsrc, column=clash[0])
        elif item_categories is not None:
            log.warning("item_categories given but the events have no item_id column; no category_entropy")
        if category_shares and (item_categories is None or not has_item):
            log.warning("category_shares needs item_categories and an item_id column; no share_<category> features")

        # --- per-customer outputs, filled block by block -------------------------------------------
        nan_if_no_amount = 0.0 if has_amount else np.nan
        out: dict[str, np.ndarray] = {name: np.full(n, np.nan) for name in _FLOAT_FEATURES}
        out.update({name: np.zeros(n, dtype=np.int64) for name in ("frequency", "n_purchase_days",
                                                                    "n_distinct_items", "future_n_tx")})
        out["monetary_total"] = np.full(n, nan_if_no_amount)
        out["future_spend"] = np.full(n, nan_if_no_amount)
        if cat_of_item is not None:
            out["category_entropy"] = np.full(n, np.nan)
        out["shares"] = np.full((n, len(share_names)), np.nan)
        seq = {"item_idx": np.zeros((n, n_last), dtype=np.int64), "amount": np.zeros((n, n_last), dtype=np.float32),
               "days_before_cutoff": np.zeros((n, n_last), dtype=np.float32), "length": np.zeros(n, dtype=np.int64)}

        # Groups of consecutive customers, each sorted by (customer, time) on its own; within a group,
        # blocks of whole customers keep every temporary small (cache-sized and reused), so the time
        # per event does not grow with the log, and each block's results are one slice of the outputs.
        bought = np.zeros(len(it_uniques) if has_item else 0, dtype=bool)  # items purchased before the cutoff
        n_before = n_read = n_repeated = 0
        sort_group = _GroupSorter(max([sum(len(p) for p in pieces) for pieces in parts], default=0), row_of_code,
                                  ev_codes, ts_all, amount_all, it_codes if has_item else None)
        for g, pieces in enumerate(parts):
            g0 = g * rows_per_group
            row, ts, amount, it = sort_group(pieces, g0, min(n, g0 + rows_per_group) - g0)
            parts[g] = []
            n_read += len(row)
            n_repeated += _count_repeated(row, ts, amount, it)
            bounds = np.unique(np.r_[0, np.searchsorted(row, row[np.arange(_BLOCK_EVENTS, len(row), _BLOCK_EVENTS)]),
                                     len(row)])
            for a, b in zip(bounds[:-1], bounds[1:]):
                r0, r1 = int(row[a]), int(row[b - 1]) + 1
                n_before += int(np.count_nonzero(ts[a:b] < cut_ns))
                local = _view_block(
                    row[a:b] - r0, r1 - r0, ts[a:b], None if amount is None else amount[a:b],
                    None if it is None else it[a:b], None if cat_of_item is None else cat_of_item[it[a:b]],
                    None if share_of_item is None else share_of_item[it[a:b]], len(share_names),
                    cut_ns=cut_ns, w_ns=w_ns, n_last=n_last, has_amount=has_amount,
                )
                if has_item:
                    bought[local.pop("items_bought")] = True
                for name, values in local.items():
                    (seq[name[4:]] if name.startswith("seq_") else out[name])[g0 + r0:g0 + r1] = values
        del ev_codes, sort_group
        if n_repeated:
            _log_repeated(src, n_repeated, n_read, has_amount=has_amount, has_item=has_item)
        if has_item:  # the vocabulary: items purchased before the cutoff, sorted; 0 = <unk> (unseen or missing)
            used = np.flatnonzero(bought)
            known = pd.Index(it_uniques[used])
            try:
                perm = known.argsort()
            except TypeError:  # mixed types: keep first-seen order
                perm = np.arange(len(known))
            vocab = ["<unk>", *known[perm].tolist()]
            idx_of_code = np.zeros(len(it_uniques) + 1, dtype=np.int64)  # sequences hold item code + 1
            idx_of_code[used[perm] + 1] = np.arange(1, len(used) + 1)
            items = seq["item_idx"].reshape(-1)
            for a, b in _chunks(len(items)):
                items[a:b] = idx_of_code[items[a:b]]
        for j, cat in enumerate(share_names):
            out[f"share_{cat}"] = out["shares"][:, j]

        feature_names = [*FEATURE_COLUMNS, *(["category_entropy"] if cat_of_item is not None else []),
                         *(f"share_{cat}" for cat in share_names)]
        features = pd.DataFrame({name: out[name] for name in feature_names}, index=population, copy=False)
        if table is not None:
            features = features.join(table, how="left")

        step("labels")
        labels = pd.DataFrame({name: out[name] for name in ("future_spend", "future_n_tx")}, index=population,
                              copy=False)
        labels.insert(0, "churn", (labels["future_n_tx"] == 0).astype(np.int64))
        no_future = len(ts_all) == 0 or ts_all.max() < cut_ns
        if no_future:  # the usual view to score: nothing is known after the cutoff yet
            log.info("customer view at %s: no events on or after the cutoff, so its labels are unknown (a view to "
                     "score, not to train on)", cutoff)
            # NaN, not "no purchase": every customer read as a churner with no spend
            labels = pd.DataFrame(np.nan, index=population, columns=list(labels.columns))
        elif ts_all.max() < end_ns - _NS_PER_DAY:
            log.warning(
                "label window [%s, %s) ends after the last event (%s): churn labels near the end are censored",
                cutoff,
                pd.Timestamp(end_ns),
                pd.Timestamp(int(ts_all.max())),
            )

        step("sequences")
        log.info(
            "customer view at %s: %d customers (%d with history), %d events before the cutoff, churn rate %s",
            cutoff,
            n,
            int((out["frequency"] > 0).sum()),
            n_before,
            "unknown" if no_future else f"{float(labels['churn'].mean()):.3f}" if n else "nan",
        )
        return CustomerView(
            features=features,
            labels=labels,
            sequences=seq,
            cutoff=cutoff,
            horizon_days=float(horizon_days),
            item_vocab=vocab,
            customers_source=tsrc,
            events_source=src,
        )


# Exact repeats of events (same customer, time, item and amount) are a WARNING from this share of the
# events on, an INFO below it: one day appended twice to a two-year log is 0.14 %, while a few
# genuine repeats (one item scanned as two lines in the same second) in a large log are not worth
# alarming anyone about; either way the rows are kept.
REPEATED_EVENTS_WARN_SHARE = 0.001
# Baskets up to this many lines are searched for repeats by comparing each line with the ones before it
# (one pass per line); longer ones by a sort.
_REPEAT_LAGS = 8


def _count_repeated(row: np.ndarray, ts: np.ndarray, amount: np.ndarray | None, item: np.ndarray | None) -> int:
    """How many events repeat an earlier event of the same customer exactly (same time, item code and
    amount), given events sorted by (row, time): the count of ``DataFrame.duplicated()``.

    Only an event in a run of equal (row, time), a basket, can repeat one, so one comparison of
    neighbours settles a log without baskets. A repeat need not be next to its original (a basket
    appended twice sorts as x y x y), so each event is compared with the event 1, 2, ... places
    before it while that one is in its basket: one pass of whole-array comparisons per line of the
    longest basket; baskets of more than :data:`_REPEAT_LAGS` lines are sorted by item instead."""
    if len(ts) < 2:
        return 0
    cont = ts[1:] == ts[:-1]  # event i + 1 is in the basket of event i
    if not cont.any():  # no two neighbours at one time: no basket (a log of whole seconds, without baskets)
        return 0
    cont &= row[1:] == row[:-1]
    if not cont.any():
        return 0
    repeat = np.zeros(len(ts), dtype=bool)
    same = cont  # same[i]: event i + lag is in the basket of event i
    for lag in range(1, _REPEAT_LAGS + 1):
        eq = same.copy()
        if item is not None:
            eq &= item[lag:] == item[:-lag]
        if amount is not None:
            eq &= amount[lag:] == amount[:-lag]
        repeat[lag:] |= eq
        same = same[:-1] & cont[lag:]
        if not same.any():
            return int(np.count_nonzero(repeat))
    return _count_repeated_sorted(cont, amount, item)


def _count_repeated_sorted(cont: np.ndarray, amount: np.ndarray | None, item: np.ndarray | None) -> int:
    """:func:`_count_repeated` for logs with long baskets (``cont[i]``: event i + 1 is in the basket of
    event i): the basket lines are sorted by (basket, item), then the lines of one item by amount."""
    in_basket = np.zeros(len(cont) + 1, dtype=bool)
    in_basket[:-1] |= cont
    in_basket[1:] |= cont
    sel = np.flatnonzero(in_basket)
    key = np.cumsum(~np.r_[False, cont][sel], dtype=np.int64)  # the basket's number
    if item is not None:  # (basket, item code) as one int64 key; -1 (missing item) is code 0
        key *= int(item.max(initial=0)) + 2
        key += item[sel] + 1
    order = np.argsort(key, kind="stable")  # the baskets are in order already: a cheap sort
    key = key[order]
    eq = key[1:] == key[:-1]
    if amount is None or not eq.any():
        return int(np.count_nonzero(eq))
    # lines of one basket with one item: equal when their amounts are, in any order
    pos = np.flatnonzero(eq)
    same_item = np.zeros(len(key), dtype=bool)
    same_item[pos] = True
    same_item[pos + 1] = True
    k, a = key[same_item], amount[sel[order[same_item]]]
    by = np.argsort(a, kind="stable")
    by = by[np.argsort(k[by], kind="stable")]
    k, a = k[by], a[by]
    return int(np.count_nonzero((k[1:] == k[:-1]) & (a[1:] == a[:-1])))


def _log_repeated(src: str, n_repeated: int, n_read: int, *, has_amount: bool, has_item: bool) -> None:
    """One message about exact repeats of events (:func:`_count_repeated`), a warning from
    :data:`REPEATED_EVENTS_WARN_SHARE` of the events on. They are kept: two identical purchases in
    the same second can be real, and only the data's owner knows."""
    share = n_repeated / max(n_read, 1)
    cols = ["customer_id", "timestamp", *(["item_id"] if has_item else []), *(["amount"] if has_amount else [])]
    log.log(logging.WARNING if share >= REPEATED_EVENTS_WARN_SHARE else logging.INFO,
            "%s: %d of the %d events the view reads (%.2f%%) repeat another event exactly (same %s): "
            "each counts as one more purchase line%s. A bad export or an append done twice makes such rows; if they "
            "are not genuine repeated purchases, drop them before building the view, e.g. "
            "events.drop_duplicates(%s)", src, n_repeated, n_read, 100 * share, ", ".join(cols),
            " (in monetary_total, monetary_mean, future_spend and the sequences)" if has_amount else
            " (in the sequences)", cols)


# Events per block of _view_block: a few MB per temporary, so they stay in cache and are reused.
_BLOCK_EVENTS = 1 << 18
_FLOAT_FEATURES = ("recency_days", "monetary_mean", "tenure_days", "ipt_mean_days", "ipt_std_days",
                   "max_gap_days", "last_gap_days", "trend_log_ratio", "basket_diversity")


def _view_block(
    row: np.ndarray,
    n: int,
    ts: np.ndarray,
    amount: np.ndarray | None,
    item: np.ndarray | None,
    cat_code: np.ndarray | None,
    share_code: np.ndarray | None,
    n_shares: int,
    *,
    cut_ns: int,
    w_ns: int,
    n_last: int,
    has_amount: bool,
) -> dict[str, np.ndarray]:
    """Features, labels and sequences of ``n`` customers whose events (sorted by customer, then time)
    are given with their local customer index ``row`` (0..n-1) and item codes ``item`` (-1: missing;
    None: no item column). See :func:`build_customer_view` for the definitions. Returns arrays of
    length ``n`` (``seq_*``: the sequence arrays, ``seq_item_idx`` holding item code + 1 with 0 for a
    missing item; ``shares``: (n, n_shares) category shares) and ``items_bought``, the codes of the
    items purchased before the cutoff."""
    before = ts < cut_ns
    purchase = amount >= 0 if has_amount else np.ones(len(ts), dtype=bool)

    def per_customer(mask: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        return np.bincount(row[mask], weights=None if weights is None else weights[mask], minlength=n)

    res: dict[str, np.ndarray] = {}
    # --- transactions: first purchase row of each (customer, timestamp) ---------------------------
    pb = before & purchase
    p_row, p_ts = row[pb], ts[pb]
    new_tx = np.r_[True, (p_row[1:] != p_row[:-1]) | (p_ts[1:] != p_ts[:-1])] if len(p_row) else np.zeros(0, bool)
    t_row, t_ts = p_row[new_tx], p_ts[new_tx]
    freq = np.bincount(t_row, minlength=n)
    has = freq > 0
    starts = _group_starts(t_row)
    recency = np.full(n, np.nan)
    tenure = np.full(n, np.nan)
    if len(starts):  # differences in int64 ns first: float64 cannot hold epoch nanoseconds exactly
        ends = np.r_[starts[1:], len(t_row)] - 1
        tenure[t_row[starts]] = (cut_ns - t_ts[starts]) / _NS_PER_DAY
        recency[t_row[ends]] = (cut_ns - t_ts[ends]) / _NS_PER_DAY
    day = p_ts // _NS_PER_DAY
    new_day = np.r_[True, (p_row[1:] != p_row[:-1]) | (day[1:] != day[:-1])] if len(p_row) else np.zeros(0, bool)
    res.update(recency_days=recency, frequency=freq, n_purchase_days=np.bincount(p_row[new_day], minlength=n),
               tenure_days=tenure)

    # gaps between consecutive transactions of the same customer
    same = np.r_[False, t_row[1:] == t_row[:-1]] if len(t_row) else np.zeros(0, bool)
    g_row = t_row[same]
    gaps = (t_ts[same] - t_ts[np.flatnonzero(same) - 1]) / _NS_PER_DAY
    n_gaps = np.bincount(g_row, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        ipt_mean = np.bincount(g_row, weights=gaps, minlength=n) / n_gaps
        dev2 = np.bincount(g_row, weights=(gaps - ipt_mean[g_row]) ** 2, minlength=n)
        ipt_std = np.where(n_gaps >= 2, np.sqrt(dev2 / np.maximum(n_gaps - 1, 1)), np.nan)
    ipt_mean[n_gaps == 0] = np.nan
    max_gap = np.full(n, np.nan)
    last_gap = np.full(n, np.nan)
    gstarts = _group_starts(g_row)
    if len(gstarts):
        gends = np.r_[gstarts[1:], len(g_row)] - 1
        max_gap[g_row[gstarts]] = np.maximum.reduceat(gaps, gstarts)
        last_gap[g_row[gends]] = gaps[gends]
    res.update(ipt_mean_days=ipt_mean, ipt_std_days=ipt_std, max_gap_days=max_gap, last_gap_days=last_gap)

    # trend: transactions in the last window vs the one before
    recent = np.bincount(t_row[t_ts >= cut_ns - w_ns], minlength=n)
    previous = np.bincount(t_row[(t_ts >= cut_ns - 2 * w_ns) & (t_ts < cut_ns - w_ns)], minlength=n)
    res["trend_log_ratio"] = np.where(has, np.log((recent + 1.0) / (previous + 1.0)), np.nan)

    # money
    if has_amount:
        res["monetary_total"] = per_customer(before, amount)
        with np.errstate(invalid="ignore", divide="ignore"):
            res["monetary_mean"] = np.where(has, per_customer(before & purchase, amount) / freq, np.nan)

    # items
    if item is not None:
        pi = item[pb]
        ok = pi >= 0
        res["items_bought"] = pi[ok]
        base = int(item.max(initial=0)) + 1
        pair = np.sort(p_row[ok].astype(np.int64) * base + pi[ok])
        pair = pair[np.r_[True, pair[1:] != pair[:-1]]] if len(pair) else pair
        res["n_distinct_items"] = np.bincount(pair // base, minlength=n)
        with np.errstate(invalid="ignore", divide="ignore"):
            res["basket_diversity"] = np.where(has, res["n_distinct_items"] / np.maximum(freq, 1), np.nan)
        if cat_code is not None:
            n_cat = int(cat_code.max(initial=0)) + 1
            key = np.sort(p_row.astype(np.int64) * n_cat + cat_code[pb])
            k_starts = _group_starts(key)
            counts = np.diff(np.r_[k_starts, len(key)])
            k_row = key[k_starts] // n_cat
            p = counts / np.bincount(p_row, minlength=n)[k_row]
            res["category_entropy"] = np.where(has, np.bincount(k_row, weights=-p * np.log(p), minlength=n), np.nan)
        if share_code is not None:
            nc = n_shares + 1
            per_cat = np.bincount(p_row.astype(np.int64) * nc + share_code[pb], minlength=n * nc).reshape(n, nc)
            total = np.maximum(per_cat.sum(1), 1)
            res["shares"] = np.where(has[:, None], per_cat[:, :n_shares] / total[:, None], np.nan)

    # --- labels: transactions and spend in the window ------------------------------------------
    pw = ~before & purchase
    w_row, w_ts = row[pw], ts[pw]
    w_new = np.r_[True, (w_row[1:] != w_row[:-1]) | (w_ts[1:] != w_ts[:-1])] if len(w_row) else np.zeros(0, bool)
    res["future_n_tx"] = np.bincount(w_row[w_new], minlength=n)
    if has_amount:
        res["future_spend"] = per_customer(~before, amount)

    # --- sequences: the last n_last purchase rows before the cutoff -----------------------------
    s_starts = _group_starts(p_row)
    size = np.diff(np.r_[s_starts, len(p_row)])
    grp = np.repeat(np.arange(len(s_starts)), size)
    pos_in = np.arange(len(p_row)) - s_starts[grp] if len(p_row) else np.zeros(0, np.int64)
    n_kept = np.minimum(size, n_last)[grp] if len(p_row) else np.zeros(0, np.int64)
    slot = pos_in - (size[grp] - n_kept) if len(p_row) else np.zeros(0, np.int64)
    sel = slot >= 0
    seq_item = np.zeros((n, n_last), dtype=np.int64)
    seq_amount = np.zeros((n, n_last), dtype=np.float32)
    seq_days = np.zeros((n, n_last), dtype=np.float32)
    r, c = p_row[sel], slot[sel]
    if item is not None:
        seq_item[r, c] = item[pb][sel] + 1
    if has_amount:
        seq_amount[r, c] = amount[pb][sel]
    seq_days[r, c] = (cut_ns - p_ts[sel]) / _NS_PER_DAY
    res.update(seq_item_idx=seq_item, seq_amount=seq_amount, seq_days_before_cutoff=seq_days,
               seq_length=np.minimum(np.bincount(p_row, minlength=n), n_last).astype(np.int64))
    return res


# ----------------------------------------------------------------------------- time stated relative to age

# ``data.time_features``: how the view states time. Every feature in days or counts grows with the
# customer's age, so a model learned at one cutoff and applied at a later one (the pipeline's
# train view at cutoff − horizon, or a single acquisition cohort) is scored on values it never saw.
TIME_FEATURES = ("absolute", "relative", "both")
# features whose range grows with the customer's age (all of them in days, counts or money)
AGE_DEPENDENT_COLUMNS = ("recency_days", "frequency", "n_purchase_days", "monetary_total", "tenure_days",
                         "max_gap_days")
RELATIVE_TIME_COLUMNS = ("recency_share", "purchase_days_per_30d", "spend_per_30d", "recency_over_ipt",
                         "max_gap_share")
_RELATIVE_INPUTS = ("recency_days", "tenure_days", "n_purchase_days", "monetary_total", "ipt_mean_days",
                    "max_gap_days")


def relative_time_features(features: pd.DataFrame, source: str = "<dataframe>") -> pd.DataFrame:
    """Age-free versions of the age-dependent view features (one row per row of ``features``).

    =========================== ============================================== ==================
    column                      definition                                     range
    =========================== ============================================== ==================
    ``recency_share``           recency_days / tenure_days: share of the       (0, 1]; 1 = one-time
                                customer's observed life since the last        buyer
                                purchase
    ``purchase_days_per_30d``   n_purchase_days / tenure_days · 30              > 0
    ``spend_per_30d``           monetary_total / tenure_days · 30 (NaN          any sign
                                without amounts)
    ``recency_over_ipt``        recency_days / ipt_mean_days: how overdue the   ≥ 0; NaN without a
                                next purchase is                               repeat purchase
    ``max_gap_share``           max(max_gap_days, recency_days) / tenure_days:  (0, 1]
                                the longest silence as a share of the life
    =========================== ============================================== ==================

    ``tenure_days`` is floored at 1 day (a purchase minutes before the cutoff). Customers without
    a purchase before the cutoff (customer-table only) get NaN. The inputs are read as the encoder
    reads numbers: ``'n/a'`` or ``''`` is missing, other text a :class:`SchemaError` naming
    ``source``, the column and the row.
    """
    x = {c: to_numeric_strict(features[c], source=source, column=c).to_numpy() for c in _RELATIVE_INPUTS}
    tenure = x["tenure_days"]
    life = np.maximum(tenure, 1.0)
    rec = x["recency_days"]
    with np.errstate(invalid="ignore", divide="ignore"):
        ipt = x["ipt_mean_days"]
        gap = np.fmax(x["max_gap_days"], rec)
        out = {
            "recency_share": np.clip(rec / life, 0.0, 1.0),
            "purchase_days_per_30d": x["n_purchase_days"] / life * 30.0,
            "spend_per_30d": x["monetary_total"] / life * 30.0,
            "recency_over_ipt": np.where(ipt > 0, rec / np.where(ipt > 0, ipt, 1.0), np.nan),
            "max_gap_share": np.clip(gap / life, 0.0, 1.0),
        }
    out = {k: np.where(np.isnan(tenure), np.nan, v) for k, v in out.items()}
    return pd.DataFrame(out, index=features.index)


def apply_time_features(features: pd.DataFrame, time_features: str = "absolute",
                        source: str = "customer table") -> pd.DataFrame:
    """``features`` with time stated as ``time_features`` says (see :data:`TIME_FEATURES`).

    ``absolute``: unchanged (days, counts and totals). ``relative``: the
    :func:`relative_time_features` replace the age-dependent columns (:data:`AGE_DEPENDENT_COLUMNS`)
    except ``recency_days`` (the days since the last purchase are what a fixed label window is
    about; pair it with ``data.encoder.clip_to_range`` so that a model extrapolates it flat).
    ``both``: the relative columns are added to the absolute ones. ``source`` names the customer
    table in the error about a column that clashes with a relative feature.
    """
    if time_features not in TIME_FEATURES:
        raise ValueError(f"data.time_features must be one of {TIME_FEATURES}, not {time_features!r}")
    if time_features == "absolute":
        return features
    rel = relative_time_features(features, source)
    clash = [c for c in rel.columns if c in features.columns]
    if clash:
        raise SchemaError("customer table column has the name of a relative time feature; rename it",
                          source=source, column=clash[0])
    if time_features == "relative":
        features = features.drop(columns=[c for c in AGE_DEPENDENT_COLUMNS if c != "recency_days"])
    return features.join(rel)


def add_time_features(df: pd.DataFrame, needed: Sequence[str], source: str = "<dataframe>") -> pd.DataFrame:
    """``df`` plus the :data:`RELATIVE_TIME_COLUMNS` among ``needed`` that it lacks, derived from its
    absolute columns, so that a model trained with ``data.time_features=relative|both`` scores a
    plain view frame (``predict_proba`` / ``predict_spend`` call this). Unchanged when nothing is
    missing.

    Raises:
        SchemaError: an absolute column they are derived from is missing (named, with ``source``),
            or holds text that is not a number.
    """
    missing = [c for c in RELATIVE_TIME_COLUMNS if c in needed and c not in df.columns]
    if not missing:
        return df
    absent = [c for c in _RELATIVE_INPUTS if c not in df.columns]
    if absent:
        raise SchemaError(f"required columns missing: {absent} (the model's {missing} are derived from "
                          f"{list(_RELATIVE_INPUTS)})", source=source, column=absent[0])
    rel = relative_time_features(df, source)
    return df.assign(**{c: rel[c].to_numpy() for c in missing})
