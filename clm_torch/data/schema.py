"""Column roles, their inference from a DataFrame, validation, and safe table reading.

Every problem with user data raises :class:`SchemaError`, whose message names the source
(file or DataFrame), the column and, where it applies, the first offending row.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

log = logging.getLogger(__name__)

# the wide purchase-sequence columns of a customer view (data/events.py): seq{k}_days|amount|item
SEQUENCE_COLUMN = re.compile(r"^seq(\d+)_(days|amount|item)$")

ROLES = ("id", "numeric", "categorical", "binary", "datetime", "target")
_MISSING_TOKENS = {"", "na", "n/a", "nan", "none", "null", "?", "-"}


class SchemaError(ValueError):
    """Bad input data: the message says which source, which column and what is wrong."""

    def __init__(self, message: str, *, source: str | None = None, column: str | None = None, row: Any = None):
        self.source = source
        self.column = column
        self.row = row
        self.detail = message  # the message without the source, column and row
        parts = []
        if source is not None:
            parts.append(f"{source}")
        if column is not None:
            parts.append(f"column '{column}'")
        if row is not None:
            parts.append(f"row {row}")
        prefix = ": ".join([", ".join(parts)]) if parts else ""
        super().__init__(f"{prefix}: {message}" if prefix else message)


@dataclasses.dataclass
class TableSchema:
    """The role of every column of a customer table.

    Attributes:
        id_col: customer identifier column, or None.
        target: binary target column, or None (unsupervised use).
        numeric: continuous / count / money columns.
        categorical: nominal columns (strings or low-cardinality codes).
        binary: two-valued columns (yes/no, 0/1, True/False).
        datetime: timestamp columns (not used as model inputs; kept for event features).
    """

    id_col: str | None = None
    target: str | None = None
    numeric: list[str] = dataclasses.field(default_factory=list)
    categorical: list[str] = dataclasses.field(default_factory=list)
    binary: list[str] = dataclasses.field(default_factory=list)
    datetime: list[str] = dataclasses.field(default_factory=list)

    @property
    def features(self) -> list[str]:
        """Model input columns in a fixed order: numeric, categorical, binary."""
        return [*self.numeric, *self.categorical, *self.binary]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TableSchema:
        return cls(**{k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in d.items()})

    def role_of(self, column: str) -> str | None:
        if column == self.id_col:
            return "id"
        if column == self.target:
            return "target"
        for role in ("numeric", "categorical", "binary", "datetime"):
            if column in getattr(self, role):
                return role
        return None


def role_columns(v: Any) -> list:
    """The columns of one role override: a list, or one column name given alone (``+data.roles.numeric=age``
    on the command line gives a string, which must not be read as its characters)."""
    if v is None:
        return []
    return [v] if isinstance(v, str) else list(v)


def ints_if_whole(ids: pd.Series | pd.Index) -> pd.Series | pd.Index:
    """Ids as int64 when they are whole-number floats (a column that a missing value made float), so
    that 5.0 is never a second spelling of 5; anything else unchanged."""
    if pd.api.types.is_float_dtype(ids) and len(ids):
        v = np.asarray(ids, dtype=np.float64)
        if np.isfinite(v).all() and (np.mod(v, 1) == 0).all():
            return ids.astype(np.int64)
    return ids


def strip_ids(ids: pd.Series | pd.Index) -> tuple[pd.Series | pd.Index, int]:
    """Text ids without surrounding spaces ('C001 ' and 'C001' are one customer), in their own dtype,
    and how many changed; numbers unchanged."""
    if pd.api.types.is_numeric_dtype(ids):
        return ids, 0
    text = ids.astype("string")
    stripped = text.str.strip()
    changed = int((stripped != text).fillna(False).sum())
    if not changed:
        return ids, 0
    out = stripped.astype(object) if ids.dtype == object else stripped
    return (pd.Index(out, name=ids.name) if isinstance(ids, pd.Index) else out), changed


def check_id_kind(ids: pd.Series, *, source: str, column: str, what: str = "ids") -> None:
    """Refuse ids that mix numbers and text (two exports concatenated): 7 and '7' would be two ids."""
    if ids.dtype == object and pd.api.types.infer_dtype(ids, skipna=True).startswith("mixed"):
        is_text = ids.map(lambda v: isinstance(v, str)).to_numpy(dtype=bool)
        if is_text.any() and not is_text.all():
            first = int(np.flatnonzero(is_text != is_text[0])[0])
            raise SchemaError(f"{what} mix numbers and text (e.g. {ids.iloc[0]!r} and {ids.iloc[first]!r}), so one id "
                              "could count as two (7 and '7'); convert the column to one type first, e.g. .astype(str)",
                              source=source, column=column, row=ids.index[first])


def check_time_kind(times: pd.Series, *, source: str, column: str, date_format: str | None = None) -> None:
    """Refuse a time column that mixes dates and numbers ('2024-01-05' in some rows, epoch seconds
    such as 1704412800 in others: two exports joined). Neither reading fits every row, so the time
    parser would blame a valid number as unparseable. Parses the column twice: meant for the error
    path of a time parser, to name the cause instead. ``date_format``: how the dates are written
    (``data.date_format``; None: ISO 8601)."""
    if pd.api.types.is_numeric_dtype(times) or pd.api.types.is_datetime64_any_dtype(times) or not len(times):
        return
    present = ~missing_cells(times)
    is_bool = times.map(lambda v: isinstance(v, (bool, np.bool_))).to_numpy(dtype=bool)
    number = present & ~is_bool & pd.to_numeric(times, errors="coerce").notna().to_numpy()
    date = present & ~number & ~is_bool
    if not number.any() or not date.any():
        return
    try:
        date[date] = pd.to_datetime(times[date], format=date_format or "ISO8601", utc=True,
                                    errors="coerce").notna().to_numpy()
    except (TypeError, ValueError):  # cells that are neither text nor dates: the parser's own error says so
        return
    if date.any():
        d, n = int(np.flatnonzero(date)[0]), int(np.flatnonzero(number)[0])
        raise SchemaError(f"the column mixes dates and numbers (e.g. the date {_shown(times.iloc[d])} in row "
                          f"{times.index[d]} and the number {_shown(times.iloc[n])} in row {times.index[n]}): two "
                          "exports joined? Write every time one way: ISO 8601 dates ('2024-03-01') or epoch seconds",
                          source=source, column=column, row=times.index[max(d, n)])


# ----------------------------------------------------------------------------- dates written another way

DATE_FORMAT_EXPECTED = ("a strftime format such as '%d/%m/%Y' (day/month/year), '%m/%d/%Y' or '%d.%m.%Y %H:%M', or "
                        "null (ISO 8601 dates and epoch seconds)")


def date_format_problem(fmt: Any) -> str | None:
    """None when ``fmt`` can be ``data.date_format``: None, or a strftime format with a directive
    that reads back what it writes (``%d/%m/%Y``); otherwise what is expected (``DD/MM/YYYY``, a
    format without ``%``, is the usual slip)."""
    if fmt is None:
        return None
    if not isinstance(fmt, str) or "%" not in fmt:
        return DATE_FORMAT_EXPECTED
    probe = pd.Timestamp(2024, 3, 15, 10, 20, 30, tz="UTC" if "%z" in fmt or "%Z" in fmt else None)
    try:
        back = pd.to_datetime(pd.Series([probe.strftime(fmt)]), format=fmt, utc=True)
    except (ValueError, TypeError):
        return DATE_FORMAT_EXPECTED
    return DATE_FORMAT_EXPECTED if back.isna().any() else None


def check_date_format(fmt: Any, *, setting: str = "data.date_format") -> str | None:
    """``fmt`` when :func:`date_format_problem` finds nothing wrong with it; ValueError naming
    ``setting`` otherwise."""
    problem = date_format_problem(fmt)
    if problem:
        raise ValueError(f"{setting}={fmt!r}: expected {problem}")
    return fmt


# day.month.year or month/day/year (one separator of / . -), 2- or 4-digit year, an optional time
_DAY_MONTH = re.compile(r"^(\d{1,2})([./-])(\d{1,2})\2(\d{4}|\d{2})(?:([ T])(\d{1,2}):(\d{2})(?::(\d{2}))?)?$")
_YEAR_FIRST = re.compile(r"^(\d{4})([./])(\d{1,2})\2(\d{1,2})(?:([ T])(\d{1,2}):(\d{2})(?::(\d{2}))?)?$")


def date_format_hint(values: pd.Series, *, max_values: int = 10_000, max_rows: int = 200_000) -> str:
    """The ``data.date_format`` that text dates such as ``13/01/2024`` or ``1.3.2024 10:00`` are
    most likely written in, as advice for a message (``''`` when no one format fits all of them).
    Day first when some value's first number is above 12, month first when some value's second
    number is; with neither, both are offered. Looks at up to ``max_values`` distinct values of the
    first ``max_rows`` (it is called on an error path, and a log can hold millions)."""
    text = values.dropna().iloc[:max_rows].astype("string").str.strip()
    text = pd.Series(pd.unique(text), dtype="string")[:max_values]
    text = text[text != ""]
    if text.empty:
        return ""
    for rx, year_first in ((_DAY_MONTH, False), (_YEAR_FIRST, True)):
        m = text.str.extract(rx)
        if m[0].isna().any():
            continue
        if m[1].nunique() != 1 or m[4].isna().any() != m[4].isna().all() or m[7].isna().any() != m[7].isna().all():
            return ""  # separators, or values with and without a time (or seconds), differ: no one format
        sep = m[1].iloc[0]
        time = "" if m[4].isna().all() else f"{m[4].iloc[0]}%H:%M" + ("" if m[7].isna().all() else ":%S")
        if year_first:
            fmt = f"%Y{sep}%m{sep}%d{time}"
            return f"set data.date_format='{fmt}' (year, month, day)"
        lengths = m[3].str.len()
        if lengths.nunique() != 1:
            return ""
        year = "%Y" if lengths.iloc[0] == 4 else "%y"
        day_first, month_first = (m[0].astype(int) > 12).to_numpy(), (m[2].astype(int) > 12).to_numpy()
        dmy, mdy = f"%d{sep}%m{sep}{year}{time}", f"%m{sep}%d{sep}{year}{time}"
        if day_first.any() and month_first.any():
            return ""  # some day first, some month first: not one format
        if day_first.any():
            return (f"set data.date_format='{dmy}' (day first: {text.iloc[int(np.flatnonzero(day_first)[0])]!r} has "
                    "a first number above 12)")
        if month_first.any():
            return (f"set data.date_format='{mdy}' (month first: {text.iloc[int(np.flatnonzero(month_first)[0])]!r} "
                    "has a second number above 12)")
        return (f"set data.date_format='{dmy}' (day first) or '{mdy}' (month first): no value has a number above 12 "
                "that tells which")
    return ""


def _shown(v: Any) -> str:
    """A cell for a message: text quoted (so that '1704412800' reads as text), anything else as printed
    (1704412800.0, not np.float64(1704412800.0))."""
    return repr(v) if isinstance(v, str) else str(v)


# ----------------------------------------------------------------------------- reading


CSV_OPTIONS = ("sep", "decimal", "thousands")


def csv_options(csv: Mapping[str, Any] | None, *, setting: str = "data.csv", path: Any = None
                ) -> dict[str, str | None]:
    """The CSV dialect of ``data.csv`` (``sep``, ``decimal``, ``thousands``), checked: one character
    each (``\\t`` for a tab), ``decimal`` one of ``.`` and ``,``, and no two of them the same (pandas
    would read ``1,5`` in a comma-separated file as two fields without a word). None or a missing
    key keeps the default: the separator from the file name (``.tsv``: tab, else comma), ``.``
    decimals, no thousands separator. With ``path`` (a file the dialect reads) the defaults are resolved
    for that file (``sep`` and ``decimal`` never None) and a dialect that makes two of separator, decimal
    mark and thousands separator one character is refused too: the settings check of ``clm-train`` and
    ``clm-pipeline`` (before the run writes anything, the file need not exist yet) and :func:`read_table`
    (once per read) call it so."""
    given = dict(csv or {})
    unknown = sorted(set(given) - set(CSV_OPTIONS))
    if unknown:
        raise SchemaError(f"{setting} has no key {unknown[0]!r}; its keys are {', '.join(CSV_OPTIONS)}", source=setting)
    out: dict[str, str | None] = {}
    for key in CSV_OPTIONS:
        v = given.get(key)
        if v is None or v == "":
            out[key] = None
            continue
        v = {"\\t": "\t", "tab": "\t", "TAB": "\t"}.get(str(v), str(v))
        if len(v) != 1 or v in "\"\r\n" or v.isalnum():
            raise SchemaError(f"{setting}.{key}={given[key]!r}: expected one character such as ';' or ',' (\\t for a tab)",
                              source=setting)
        out[key] = v
    if out["decimal"] not in (None, ".", ","):
        raise SchemaError(f"{setting}.decimal={out['decimal']!r}: expected '.' or ','", source=setting)
    if path is not None:
        out["sep"] = out["sep"] or ("\t" if ".tsv" in "".join(Path(str(path)).suffixes).lower() else ",")
        out["decimal"] = out["decimal"] or "."
        _check_dialect(out["sep"], out["decimal"], out["thousands"], setting=setting)
    return out


def _check_dialect(sep: str, decimal: str, thousands: str | None, *, setting: str = "data.csv") -> None:
    """Refuse a dialect in which two of separator, decimal mark and thousands separator are one
    character: ``1,5`` in a comma-separated file would be two fields."""
    for a, b, va, vb in (("sep", "decimal", sep, decimal), ("sep", "thousands", sep, thousands),
                         ("decimal", "thousands", decimal, thousands)):
        if va == vb:
            raise SchemaError(f"{setting}.{a} and {setting}.{b} are both {va!r}: a number such as 1{va}5 could not be "
                              f"told from two fields or a thousands group; a file with decimal commas is usually "
                              f"separated by ';' ({setting}.sep=';' {setting}.decimal=',')", source=setting)


def _numbers_in_dialect(df: pd.DataFrame, decimal: str, thousands: str | None, skip: Sequence[str]) -> pd.DataFrame:
    """The text columns of a CSV read as text, as numbers where every value (missing tokens aside, which
    become NaN) is a number written in the dialect: digits with an optional sign, ``thousands``
    between groups of exactly three digits, ``decimal`` before the fraction (``1.234,50`` with ``,``
    and ``.``). Anything else stays text, so a date such as ``06.09.2023`` is never the number
    6092023 (pandas' own ``thousands='.'`` reads it so). ``skip``: columns kept as text (ids)."""
    d = re.escape(decimal)
    whole = rf"\d{{1,3}}(?:{re.escape(thousands)}\d{{3}})+|\d+" if thousands else r"\d+"
    pattern = rf"^[-+]?(?:{whole})(?:{d}\d+)?$"
    out = {}
    for col in df.columns:
        s = df[col]
        if col in skip or not (s.dtype == object or pd.api.types.is_string_dtype(s)):
            continue
        text = s.astype("string").str.strip()
        token = _is_missing_token(text).fillna(False).to_numpy(dtype=bool) | text.isna().to_numpy()
        values = pd.Series(pd.unique(text[~token]), dtype="string")
        if values.empty or not values.str.fullmatch(pattern).all():
            continue
        plain = text.where(~token)
        if thousands:
            plain = plain.str.replace(thousands, "", regex=False)
        plain = plain.str.replace(decimal, ".", regex=False).astype(object)
        out[col] = pd.to_numeric(plain.where(plain.notna(), np.nan))  # int64 or float64, as pandas reads numbers
    return df.assign(**out) if out else df


def read_table(path: str | os.PathLike, *, what: str = "table", text_columns: Sequence[str] = (),
               csv: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Read a CSV or Parquet file, turning every I/O or parse failure into a SchemaError.

    Args:
        path: a ``.csv``, ``.csv.gz``, ``.tsv`` or ``.parquet`` file.
        what: a word for the messages (``"table"``, ``"event log"``).
        text_columns: columns of a CSV read as text, e.g. ids: ``000235`` keeps its zeros.
        csv: the CSV dialect (``data.csv``: ``sep``, ``decimal``, ``thousands``; :func:`csv_options`),
            e.g. ``{"sep": ";", "decimal": ",", "thousands": "."}`` for a German Excel export
            (``1.234,50``); ignored for Parquet.
    """
    p = Path(path)
    opts = csv_options(csv, path=p)  # the dialect checked, its defaults resolved for this file
    src = str(p)
    if not p.exists():
        raise SchemaError(f"{what} file not found", source=src)
    if p.is_dir():
        raise SchemaError(f"expected a {what} file but found a directory", source=src)
    if p.stat().st_size == 0:
        raise SchemaError(f"{what} file is empty (0 bytes)", source=src)
    suffixes = "".join(p.suffixes).lower()
    is_parquet = suffixes.endswith(".parquet") or suffixes.endswith(".pq")
    kind = p.suffix.lower() if p.suffix.lower() not in _COMPRESSIONS else Path(p.stem).suffix.lower()
    if kind in _NOT_TEXT_TABLES:
        raise SchemaError(f"cannot read a {kind} file: clm_torch reads CSV (.csv, .csv.gz, .tsv) and Parquet "
                          "(.parquet) files; convert it, e.g. pd.read_json(path).to_parquet('table.parquet')"
                          if kind in (".json", ".jsonl") else
                          f"cannot read a {kind} file: clm_torch reads CSV (.csv, .csv.gz, .tsv) and Parquet "
                          "(.parquet) files; save it as one of those", source=src)
    encoding = "utf-8"
    try:
        with p.open("rb") as f:
            head = f.read(4)
    except OSError as e:
        raise SchemaError(f"cannot read {what} file: {type(e).__name__}: {e}", source=src) from None
    if not is_parquet:
        kind = _binary_kind(head, suffixes)
        if kind:
            raise SchemaError(f"{what} file is {kind}, not a CSV text file", source=src)
        if head[:2] in (b"\xff\xfe", b"\xfe\xff"):  # a byte-order mark: Excel's "Unicode text" export
            encoding = "utf-16"
    sep, decimal, thousands = opts["sep"], opts["decimal"], opts["thousands"]
    dialect = decimal != "." or thousands is not None  # numbers converted by _numbers_in_dialect, not by pandas
    try:
        if is_parquet:
            df = index_as_columns(pd.read_parquet(p))
        else:
            # the text columns by their names in the header, which may carry spaces ('customer_id ')
            named = (set(text_columns) and [c for c in pd.read_csv(p, sep=sep, encoding=encoding, nrows=0).columns
                                            if str(c).strip() in set(text_columns)])
            dtype = str if dialect else {c: str for c in named} if named else None
            df = pd.read_csv(p, sep=sep, encoding=encoding, low_memory=False, dtype=dtype)
    except UnicodeDecodeError:
        where, column = _first_bad_utf8(p, sep)
        raise SchemaError(
            f"file is not valid UTF-8 ({where}); re-save it as UTF-8, e.g. "
            f"`iconv -f latin1 -t utf-8 {p.name} > fixed.csv`",
            source=src, column=column,
        ) from None
    except pd.errors.EmptyDataError:
        raise SchemaError(f"{what} file has no columns (empty file)", source=src) from None
    except pd.errors.ParserError as e:
        # a ';'-separated file read with ',' (a German Excel export: "1.234,50" splits at its comma)
        _check_delimiter(p, sep, encoding, _first_line(p, encoding))
        raise SchemaError(f"cannot parse {what} file: {str(e).strip()}", source=src) from None
    except (OSError, ValueError, ImportError) as e:
        raise SchemaError(f"cannot read {what} file: {type(e).__name__}: {e}", source=src) from None
    if not is_parquet:
        _check_header(p, sep, encoding, list(df.columns))
        if not df.index.equals(pd.RangeIndex(len(df))):  # rows with more fields than the header: pandas made
            df = _without_trailing_field(p, sep, encoding, df, dtype, what)  # the first column(s) the index
    df = _stripped_names(df, src)
    if not is_parquet:
        if dialect:
            df = _numbers_in_dialect(df, decimal, thousands, skip=text_columns)
        elif sep == ";":  # the separator of locales that write 1.500 for fifteen hundred
            _warn_thousands_dots(p, sep, encoding, df)
    if len(df) == 0:
        raise SchemaError(f"{what} file has a header but no rows", source=src)
    return df


_DOTTED = r"[-+]?\d{1,3}(\.\d{3})+"  # 45.000, 1.250, 12.345.678: a thousands dot in the ';' locales
_HEAD_ROWS = 1000  # the first rows whose text is checked before a whole column is


def _warn_thousands_dots(p: Path, sep: str, encoding: str, df: pd.DataFrame) -> None:
    """Warn about the number columns of a ';'-separated CSV read with '.' decimals whose every value has
    exactly three digits after its dot ('45.000', '1.250'): in the locales that separate fields by ';'
    that is a thousands separator, and pandas read 45.000 as 45.0 without a word (a text column of such
    values, with a '?' among them, is read as numbers by cleaning just the same).

    The text of a float column is read again only where nothing read already rules it out: its values
    (each below 1000 with at most three decimals, as 'ddd.ddd' reads) and then its first rows' text
    (``_HEAD_ROWS``, a few milliseconds): '79.91' or '61' there clears the column. A usual export is
    read once; the file is read whole again (those columns only) when a column still looks dotted."""
    floats = [c for c in df.columns if pd.api.types.is_float_dtype(df[c]) and _may_be_dotted(df[c])]
    texts = [c for c in df.columns if df[c].dtype == object or pd.api.types.is_string_dtype(df[c])]
    text = pd.DataFrame()
    if floats:
        def read(cols: list[Any], **kw: Any) -> pd.DataFrame:  # by position: the header's names may carry spaces
            return pd.read_csv(p, sep=sep, encoding=encoding, usecols=[df.columns.get_loc(c) for c in cols],
                               dtype=str, index_col=False, low_memory=False, **kw).set_axis(cols, axis=1)

        head = read(floats, nrows=_HEAD_ROWS)
        floats = [c for c in floats if _distinct_text(head[c]).str.fullmatch(_DOTTED).all()]
        text = read(floats) if floats else text
    for col in [*floats, *texts]:
        raw = text[col] if col in floats else df[col]
        if not _distinct_text(raw.iloc[:_HEAD_ROWS]).str.fullmatch(_DOTTED).all():
            continue  # a first value written otherwise: not every value is dotted
        values = _distinct_text(raw)
        if len(values) and values.str.fullmatch(_DOTTED).all():
            first = values.iloc[0]
            read_as = float(first) if first.count(".") == 1 else "text"  # 12.345.678 is no float
            log.warning("%s: column '%s': every value has three digits after its dot (e.g. %r, read as %s): in a "
                        "';'-separated export that is a thousands separator; if so, read the file with "
                        "data.csv.thousands='.' (and data.csv.decimal=',')", p, col, first, read_as)


def _may_be_dotted(s: pd.Series) -> bool:
    """Whether the float column ``s`` may have been read from text written 'ddd.ddd' (one dot, as pandas
    reads a float): every value below 1000 with at most three decimals; all missing: no."""
    v = s.dropna().to_numpy(dtype=np.float64)
    k = v * 1000.0
    return bool(len(v)) and bool((np.abs(v) < 1000).all()) and bool((np.abs(k - np.round(k)) < 1e-6).all())


def _distinct_text(raw: pd.Series) -> pd.Series:
    """The distinct values of a column of text (first seen first), stripped, missing ones and missing
    tokens left out."""
    values = pd.Series(pd.unique(raw.dropna().astype("string").str.strip()), dtype="string")
    return values[~_is_missing_token(values).to_numpy(dtype=bool)]


def _stripped_names(df: pd.DataFrame, src: str) -> pd.DataFrame:
    """``df`` with its column names stripped of surrounding spaces ('customer_id ' as an Excel header
    often ends), with a warning naming them; two names that become one are refused."""
    names = [c.strip() if isinstance(c, str) and c.strip() else c for c in df.columns]
    changed = [c for c, n in zip(df.columns, names) if c != n]
    if not changed:
        return df
    seen: dict[Any, Any] = {}
    for c, n in zip(df.columns, names):
        if n in seen:
            raise SchemaError(f"the header names {seen[n]!r} and {c!r}, one name once their surrounding spaces are "
                              "removed; rename one", source=src, column=n)
        seen[n] = c
    log.warning("%s: column names with surrounding spaces are read without them: %s", src,
                ", ".join(repr(c) for c in changed))
    return df.set_axis(names, axis=1)


def spaced_names_hint(missing: Sequence[Any], columns: Sequence[Any]) -> str:
    """' (the frame has 'age ' with surrounding spaces: ...)' when a missing column is a column of the
    frame but for surrounding spaces, else ''."""
    have = {c.strip(): c for c in columns if isinstance(c, str) and c != c.strip()}
    hit = next((have[m] for m in missing if isinstance(m, str) and m in have), None)
    return ("" if hit is None else f" (the frame has {hit!r}, with surrounding spaces: strip the names, e.g. "
            "df.columns = df.columns.str.strip())")


def index_as_columns(df: pd.DataFrame) -> pd.DataFrame:
    """A frame read from Parquet with its rows numbered from 0: a named index that pandas wrote
    (``df.set_index("customer_id").to_parquet(...)``) and restores on reading is a column again (the
    id column would be "not found"); an unnamed one is dropped, so that rows are counted from 0."""
    named = [n for n in df.index.names if n is not None and n not in df.columns]
    if named:
        df = df.reset_index(level=named)
    if not df.index.equals(pd.RangeIndex(len(df))):
        df = df.reset_index(drop=True)
    return df


def _without_trailing_field(p: Path, sep: str, encoding: str, df: pd.DataFrame, dtype: Any, what: str
                            ) -> pd.DataFrame:
    """The CSV read again with no index column, when its rows hold more fields than its header. pandas
    then takes the first column(s) as the index, so every column moved one place: the ids went to
    the index and each column held its left neighbour's values. Empty extra fields (a separator at
    the end of each line, as some exports write) are dropped; a value in one is refused by line."""
    n_extra = df.index.nlevels
    n_cols = len(df.columns)
    raw = pd.read_csv(p, sep=sep, encoding=encoding, header=None, skiprows=1, dtype=str, keep_default_na=False,
                      names=range(n_cols + n_extra), low_memory=False)
    extra = raw.iloc[:, n_cols:].ne("").any(axis=1).to_numpy()
    if extra.any():
        line = int(np.flatnonzero(extra)[0]) + 2  # 1-based, after the header line
        raise SchemaError(f"line {line} has {n_cols + n_extra} fields but the header names {n_cols} columns: a value "
                          "without a column name; name the column in the header or remove the extra field",
                          source=str(p))
    log.warning("%s: every line ends with an extra separator (one more field than the header names); the empty "
                "field is ignored", p)
    return pd.read_csv(p, sep=sep, encoding=encoding, low_memory=False, dtype=dtype, index_col=False)


# file kinds that are no CSV text, by their (last, uncompressed) suffix: refused by name
_NOT_TEXT_TABLES = frozenset({".json", ".jsonl", ".xlsx", ".xlsm", ".xls", ".ods", ".feather", ".arrow", ".ipc",
                              ".pkl", ".pickle", ".h5", ".hdf5", ".orc", ".avro", ".sav", ".dta", ".sas7bdat",
                              ".db", ".sqlite", ".npy", ".npz"})
_COMPRESSIONS = frozenset({".gz", ".bz2", ".xz", ".zst", ".zip"})


def _first_bad_utf8(p: Path, sep: str) -> tuple[str, str | None]:
    """Where a file's first byte that is not UTF-8 is ('line 2, byte 0xe9 at offset 222') and the
    header column it falls in (None when the header itself is the line)."""
    import bz2
    import codecs
    import gzip
    import lzma

    opener = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}.get(p.suffix.lower(), open)
    if p.suffix.lower() in _COMPRESSIONS and opener is open:
        return "an invalid byte", None
    with opener(p, "rb") as f:
        first = f.readline()
    header = first.decode("utf-8", errors="replace").rstrip("\r\n").split(sep)
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, lines, last_line = 0, 1, b""
    with opener(p, "rb") as f:
        while chunk := f.read(1 << 22):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as e:
                before = chunk[: e.start]
                line_start = before.rfind(b"\n")
                line = (last_line + before) if line_start < 0 else before[line_start + 1:]
                lines += before.count(b"\n")
                col = line.count(sep.encode())
                column = header[col] if lines > 1 and col < len(header) else None
                return f"line {lines}, byte 0x{chunk[e.start]:02x} at offset {offset + e.start}", column
            lines += chunk.count(b"\n")
            tail = chunk.rfind(b"\n")
            last_line = (last_line + chunk) if tail < 0 else chunk[tail + 1:]
            offset += len(chunk)
    return "an invalid byte", None


def _binary_kind(head: bytes, suffixes: str) -> str | None:
    """What a file that pandas would read as CSV text really is, from its first bytes (None: text,
    or a compression that its name announces, which pandas reads)."""
    if head.startswith(b"PK\x03\x04") and not suffixes.endswith(".zip"):
        return "a ZIP archive (an Excel .xlsx workbook is one): save the sheet as CSV, or unzip it"
    if head.startswith(b"\xd0\xcf\x11\xe0"):
        return "an Excel .xls workbook: save the sheet as CSV"
    if head.startswith(b"PAR1"):
        return "a Parquet file: give it a .parquet name"
    if head.startswith(b"\x1f\x8b") and not suffixes.endswith(".gz"):
        return "gzip-compressed: give it a .csv.gz name"
    return None


def _check_header(p: Path, sep: str, encoding: str, columns: list) -> None:
    """Raise on a CSV header that pandas read without complaint but wrongly: a repeated column name
    (pandas renames the second ``x`` to ``x.1``), or one column whose name holds another delimiter."""
    header = pd.read_csv(p, sep=sep, encoding=encoding, header=None, nrows=1, dtype=str,
                         keep_default_na=False).iloc[0].tolist()
    seen: dict[str, int] = {}
    for i, name in enumerate(header):
        if name in seen:
            raise SchemaError(f"the header names this column twice (columns {seen[name] + 1} and {i + 1}); "
                              f"rename or drop one", source=str(p), column=name)
        if name.strip():  # empty names (trailing separators) become "Unnamed: k" columns
            seen[name] = i
    if len(columns) == 1:
        _check_delimiter(p, sep, encoding, str(columns[0]))


def _first_line(p: Path, encoding: str) -> str:
    """The file's first line (its header), '' when it cannot be read."""
    try:
        with (__import__("gzip").open if p.suffix.lower() == ".gz" else open)(p, "rt", encoding=encoding,
                                                                              errors="replace") as f:
            return f.readline().lstrip("\ufeff").rstrip("\r\n")
    except OSError:
        return ""


def _check_delimiter(p: Path, sep: str, encoding: str, header: str) -> None:
    """Raise when a header without the separator ``sep`` holds another one: the file is separated by
    that one (a German Excel export separates by ';' and writes decimal commas)."""
    if sep in header:
        return
    other = next((d for d in (";", "|", "\t", ",") if d != sep and d in header), None)
    if other is None:
        return
    shown = {"\t": "\\t"}.get(other, other)
    fix = {";": f"read it with data.csv.sep=';' (with decimal commas such as 1.234,50 also data.csv.decimal=',' "
                f"data.csv.thousands='.'; in Python csv={{'sep': ';', ...}}), or save it comma-separated",
           "|": "read it with data.csv.sep='|', or save it comma-separated (.csv) or tab-separated (.tsv)",
           "\t": "give it a .tsv name, or read it with data.csv.sep='\\t'",
           ",": "give it a .csv name, or read it with data.csv.sep=','"}
    raise SchemaError(f"the header is one column, {header[:80]!r}: the file looks separated by {shown!r}; "
                      f"{fix[other]}", source=str(p))


# ----------------------------------------------------------------------------- inference


def distinct_rows(values: Any) -> tuple[np.ndarray, Any, np.ndarray]:
    """``pd.factorize(values)`` (codes, −1 for missing; the distinct values in order of first
    appearance) and the rows of each distinct value: what string work done once per distinct value
    weighs its results by."""
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    return codes, uniques, np.bincount(codes[codes >= 0], minlength=len(uniques))


def level_keys(s: pd.Series) -> pd.Series:
    """The matching key of each value of ``s`` (a "string" Series, NA kept): the text trimmed and
    case-folded (``str.casefold``: 'Straße', 'STRASSE' and ' strasse ' are all 'strasse', which
    ``str.lower`` keeps apart). Every place that matches category levels, yes/no labels or missing
    tokens uses it (cleaning's spellings, the encoder's vocabulary at fit and at scoring time, the
    InfoGapVAE's levels, the evaluation), so training and scoring cannot disagree. Customer ids are
    not levels: they keep their case (``cleaning.lowered_ids`` only reports case collisions).

    Arrow lowers every value (fast); only the values still outside ASCII after that are case-folded
    in Python (casefold of lowered text is casefold of the text; ASCII text is its own casefold)."""
    low = s.astype("string").str.strip().str.lower()
    other = ~low.str.isascii().fillna(True).to_numpy(dtype=bool)
    if other.any():
        low = low.copy()
        low[other] = low[other].str.casefold()
    return low


def level_key(v: Any) -> str:
    """:func:`level_keys` of one value: ``str(v)`` trimmed and case-folded."""
    return str(v).strip().casefold()


def _label_key(v: Any) -> str:
    """A label's comparison key: trimmed case-folded text (:func:`level_key`), whole numbers without '.0' (1, 1.0, '1.0' → '1')."""
    key = level_key(v)
    try:
        f = float(key)
    except ValueError:
        return key
    return str(int(f)) if np.isfinite(f) and f.is_integer() else key


# The one list of the words of yes and no (most usual first), as :func:`yes_no_side` compares them:
# the encoder matches a yes/no feature column's spellings by it, the InfoGapVAE writes a yes/no level
# into a boolean column by it, and churn labels read as yes/no by it (with the churn-outcome words).
YES_WORDS = ("yes", "true", "1", "y", "t")
NO_WORDS = ("no", "false", "0", "n", "f")
_YES_SET, _NO_SET = frozenset(YES_WORDS), frozenset(NO_WORDS)


def yes_no_side(v: Any) -> bool | None:
    """True where ``v`` reads as yes (:data:`YES_WORDS`), False where as no (:data:`NO_WORDS`), None
    otherwise; compared as :func:`_label_key` (trimmed, case-folded, '1.0' and 1.0 as '1')."""
    key = _label_key(v)
    return True if key in _YES_SET else False if key in _NO_SET else None


def _is_missing_token(s: pd.Series) -> pd.Series:
    return level_keys(s).isin(_MISSING_TOKENS)


def missing_cells(s: pd.Series) -> np.ndarray:
    """(n,) bool: the cells of ``s`` that are missing: NaN/NaT and, in a column that can hold text (not
    numbers, booleans, dates or durations), the tokens that cleaning reads as missing (``''``,
    ``'n/a'``, ``'NA'``, ``'?'``, ``'null'``, ``'-'``, ...). A date column is not written out as text to
    look for them: that took 2.2 s for 2M naive dates and 24 s for 2M time-zone-aware ones."""
    miss = s.isna().to_numpy(dtype=bool)
    if len(s) and not (pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s)
                       or pd.api.types.is_datetime64_any_dtype(s) or pd.api.types.is_timedelta64_dtype(s)):
        miss = miss | _is_missing_token(s).fillna(False).to_numpy(dtype=bool)
    return miss


def to_numeric_strict(s: pd.Series, *, source: str, column: str) -> pd.Series:
    """Convert to float64; NaN-like tokens become NaN, anything else that is not a number raises.

    Raises:
        SchemaError naming the first offending row and its value.
    """
    if pd.api.types.is_bool_dtype(s):
        return s.astype("float64")
    if pd.api.types.is_datetime64_any_dtype(s) or pd.api.types.is_timedelta64_dtype(s):
        raise SchemaError(f"expected a number but found {s.dtype} values (convert them to a number first, "
                          "e.g. days)", source=source, column=column)
    if pd.api.types.is_numeric_dtype(s):
        out = s.astype("float64")
    else:
        out = pd.to_numeric(s, errors="coerce")
        bad = out.isna() & s.notna() & ~_is_missing_token(s)
        if bad.any():  # '$1,234.50', '€ 12', '12%' (as 0.12): numbers written as a spreadsheet shows them
            out = out.astype("float64")
            out[bad] = formatted_numbers(s[bad]).to_numpy()
            bad = bad & out.isna()
        if bad.any():
            first = bad.to_numpy().nonzero()[0][0]
            v = s.iloc[first]
            hint = ("; decimal commas? read the file with data.csv.decimal=',' (and data.csv.sep=';', "
                    "data.csv.thousands='.'), or in Python read_table(path, csv={'sep': ';', 'decimal': ',', "
                    "'thousands': '.'})" if isinstance(v, str) and re.fullmatch(_DECIMAL_COMMA, v.strip()) else "")
            raise SchemaError(
                f"expected a number but found {v!r} (first of {int(bad.sum())} non-numeric values){hint}",
                source=source,
                column=column,
                row=s.index[first],
            )
        out = out.astype("float64")
    if np.isinf(out.to_numpy()).any():
        first = np.isinf(out.to_numpy()).nonzero()[0][0]
        raise SchemaError(
            f"contains infinite values (first: {out.iloc[first]})", source=source, column=column, row=out.index[first]
        )
    return out


_DECIMAL_COMMA = r"[-+]?(\d{1,3}(\.\d{3})+(,\d+)?|\d+,\d+)"


def formatted_numbers(s: pd.Series) -> pd.Series:
    """float64 values of numbers written as a spreadsheet shows them: thousands commas between groups of
    three digits ('69,400', '$1,234.50'), a currency sign before or after ('€ 12', '12 €', '-$5'), a
    percent sign (a share: '12%' is 0.12); NaN for anything else. Worked out once per distinct value."""
    codes, uniques, _ = distinct_rows(s.astype("string"))
    text = pd.Series(uniques, dtype="string").str.strip()
    ok = text.str.match(_FORMATTED_NUMBER).fillna(False).to_numpy(dtype=bool)
    core = text.str.replace(r"[\s$€£¥,]", "", regex=True)
    percent = core.str.endswith("%").fillna(False).to_numpy(dtype=bool)
    value = pd.to_numeric(core.str.rstrip("%").where(ok), errors="coerce").to_numpy(dtype=np.float64)
    value = np.where(percent, value / 100, value)
    out = np.full(len(codes), np.nan)
    out[codes >= 0] = value[codes[codes >= 0]]
    return pd.Series(out, index=s.index, name=s.name)


def _looks_numeric(s: pd.Series) -> bool:
    if pd.api.types.is_bool_dtype(s):
        return False
    if pd.api.types.is_numeric_dtype(s):
        return True
    # once per distinct value (weighted by its rows): the share of the non-missing rows that parse
    _, uniques, rows = distinct_rows(s.dropna().astype("string"))
    values = pd.Series(uniques, dtype="string")
    keep = ~_is_missing_token(values).to_numpy(dtype=bool)
    if rows[keep].sum() == 0:
        return False
    kept = values[keep].str.strip()
    parses = pd.to_numeric(kept, errors="coerce").notna().to_numpy(dtype=bool)
    if rows[keep][parses].sum() / rows[keep].sum() > 0.98:
        return True
    parses = parses | formatted_numbers(kept).notna().to_numpy(dtype=bool)  # '$1,234.50', '€ 12', '12%'
    return bool(rows[keep][parses].sum() / rows[keep].sum() > 0.98)


_DATE_TEXT = r"^\s*\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}:?\d{2})?\s*$"


def _looks_like_dates(s: pd.Series, date_format: str | None = None) -> bool:
    """Text whose distinct non-missing values are all ISO dates or times ('2024-03-01', '2024-03-01
    10:00', '2024-03-01T10:00:00+02:00') that parse, or all dates in ``date_format``
    (``data.date_format``, e.g. '%d/%m/%Y') when it is given."""
    values = pd.Series(pd.unique(s.dropna().astype("string")), dtype="string")
    values = values[~_is_missing_token(values).to_numpy(dtype=bool)]
    if date_format is not None and not values.empty:
        def parses(v: pd.Series) -> bool:
            return bool(pd.to_datetime(v.str.strip(), format=date_format, errors="coerce", utc=True).notna().all())

        if parses(values.iloc[:100]) and parses(values):  # (the first 100 first, as below)
            return True
    if values.empty or not values.iloc[:100].str.match(_DATE_TEXT).all() or not values.str.match(_DATE_TEXT).all():
        return False  # (the first 100 first: a text column of another kind is told apart at once)
    return bool(pd.to_datetime(values, format="ISO8601", errors="coerce", utc=True).notna().all())


def check_drop(drop: Iterable[str], columns: Iterable[str], *, source: str, setting: str = "data.drop") -> None:
    """Refuse ``data.drop`` names that are not columns of the table: a misspelt name would leave the
    column meant to go (often a leak of the label) among the features."""
    have = list(columns)
    unknown = [c for c in drop if c not in have]
    if unknown:
        raise SchemaError(f"{setting} names {'a column' if len(unknown) == 1 else 'columns'} the table does not have "
                          f"({', '.join(map(repr, unknown))}); available columns: {have}", source=source,
                          column=unknown[0])


def _unsupported(s: pd.Series, nonnull: pd.Series) -> str | None:
    """What a column holds that no model reads, when it does: durations, or lists/arrays/dicts in cells."""
    if pd.api.types.is_timedelta64_dtype(s):
        return "durations (timedelta); convert them to a number (e.g. .dt.days)"
    if isinstance(s.dtype, pd.ArrowDtype) and not (pa.types.is_primitive(s.dtype.pyarrow_dtype)
                                                   or pa.types.is_string(s.dtype.pyarrow_dtype)
                                                   or pa.types.is_large_string(s.dtype.pyarrow_dtype)
                                                   or pa.types.is_dictionary(s.dtype.pyarrow_dtype)):
        return f"values of type {s.dtype.pyarrow_dtype}, not one number or text per cell"
    if s.dtype == object and len(nonnull):
        first = nonnull.iloc[0]
        if isinstance(first, (list, tuple, set, dict, np.ndarray)):
            return f"a {type(first).__name__} in each cell, not one number or text per cell"
        if isinstance(first, pd.Timedelta):
            return "durations (timedelta); convert them to a number (e.g. .dt.days)"
    return None


def _is_saved_index(col: Any, s: pd.Series) -> bool:
    """A column pandas wrote from a frame's index ('Unnamed: 0' holding 0 … n−1, or 1 … n)."""
    if not (isinstance(col, str) and re.fullmatch(r"Unnamed: \d+", col)) or not pd.api.types.is_integer_dtype(s):
        return False
    v = s.to_numpy()
    return len(v) > 1 and bool((np.diff(v) == 1).all()) and int(v[0]) in (0, 1)


_FORMATTED_NUMBER = r"^\s*[-+]?[$€£¥]?\s*\d{1,3}(,\d{3})+(\.\d+)?\s*%?\s*$|^\s*[-+]?[$€£¥]\s*\d+(\.\d+)?\s*$|^\s*[-+]?\d+(\.\d+)?\s*(%|[$€£¥])\s*$"


def _formatted_example(s: pd.Series) -> str | None:
    """A value of ``s`` that is a number only as :func:`formatted_numbers` reads it ('$1,234.50'), if any."""
    values = pd.Series(pd.unique(s.dropna().astype("string")), dtype="string")
    plain = pd.to_numeric(values.str.strip(), errors="coerce").notna().to_numpy(dtype=bool)
    hit = ~plain & formatted_numbers(values).notna().to_numpy(dtype=bool)
    return str(values[hit].iloc[0]) if hit.any() else None


def _number_like_text(s: pd.Series, nonnull: pd.Series) -> str | None:
    """Why a column read as categories looks like it was meant as numbers, if it does: most of its
    rows are numbers written with thousands separators or currency/percent signs ('69,400', '$38.49'),
    or most of them are plain numbers but some are not (a few 'unknown' in an age column)."""
    if pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s):
        return None
    _, uniques, rows = distinct_rows(nonnull.astype("string"))
    values = pd.Series(uniques, dtype="string")
    keep = ~_is_missing_token(values).to_numpy(dtype=bool)
    total = rows[keep].sum()
    if total == 0:
        return None
    values, rows = values[keep].reset_index(drop=True), rows[keep]
    plain = pd.to_numeric(values.str.strip(), errors="coerce").notna().to_numpy(dtype=bool)
    comma = values.str.strip().str.fullmatch(_DECIMAL_COMMA).fillna(False).to_numpy(dtype=bool) & ~plain
    if rows[comma].sum() >= 0.5 * total and rows[plain | comma].sum() >= 0.9 * total:
        return (f"{int(rows[comma].sum())} of {int(total)} values are numbers with a decimal comma (e.g. "
                f"{values[comma].iloc[0]!r}); read the file with data.csv.decimal=',' (and data.csv.sep=';', "
                "data.csv.thousands='.') to use the column as a number")
    formatted = values.str.match(_FORMATTED_NUMBER).to_numpy(dtype=bool) & ~plain
    if rows[formatted].sum() >= 0.5 * total and rows[plain | formatted].sum() >= 0.9 * total:
        return (f"{int(rows[formatted].sum())} of {int(total)} values are numbers written with separators or "
                f"currency/percent signs (e.g. {values[formatted].iloc[0]!r}); write them as plain numbers to use the "
                "column as a number")
    if rows[plain].sum() >= 0.5 * total and (~plain).any():
        others = values[~plain]
        return (f"{int(rows[plain].sum())} of {int(total)} values are numbers, but {int(rows[~plain].sum())} are not "
                f"(e.g. {others.iloc[0]!r}); if it is a number, make those missing or numeric (with "
                "+data.roles.numeric=[...] they are an error naming the row)")
    return None


def _dates_hint(nonnull: pd.Series, date_format: str | None) -> str:
    """:func:`date_format_hint` for a text column whose first value looks like a date written
    day/month/year or so (``''`` at once otherwise, or where ``date_format`` already reads dates)."""
    if date_format is not None or not (nonnull.dtype == object or pd.api.types.is_string_dtype(nonnull)):
        return ""
    first = str(nonnull.iloc[0]).strip()
    if not (_DAY_MONTH.match(first) or _YEAR_FIRST.match(first)):
        return ""
    return date_format_hint(nonnull)


def infer_schema(
    df: pd.DataFrame,
    *,
    target: str | None = None,
    id_col: str | None = None,
    overrides: Mapping[str, Sequence[str]] | None = None,
    drop: Iterable[str] = (),
    max_categorical_int: int = 10,
    source: str = "<dataframe>",
    date_format: str | None = None,
    roles_setting: str | None = "data.roles",
) -> TableSchema:
    """Infer the role of every column.

    Rules: two distinct non-missing values → binary; datetime dtype → datetime; numbers (or
    strings that parse as numbers) → numeric unless an integer column has at most
    ``max_categorical_int`` distinct values; everything else → categorical.
    ``overrides`` maps a role (``numeric``, ``categorical``, ``binary``, ``datetime``) to
    columns that take that role whatever inference says. Text dates are ISO 8601, or written in
    ``date_format`` (``data.date_format``, e.g. '%d/%m/%Y') when it is given; a text column of
    dates written another way is named in a warning that suggests the format. ``roles_setting`` is
    the setting that holds ``overrides``, as the messages name it (``data.item_roles`` for an item table;
    None where no setting can give a column a role, as for clm-pipeline's customer table).
    """
    overrides = {k: role_columns(v) for k, v in (overrides or {}).items()}
    for role in overrides:
        if role not in ROLES or role in ("id", "target"):
            raise SchemaError(
                f"unknown role '{role}' in overrides; use one of numeric, categorical, binary, datetime",
                source=source,
            )
    forced = {c: role for role, cols in overrides.items() for c in cols}
    for col, what in ((target, "the target"), (id_col, "the id column")):
        if col is not None and col in forced:
            raise SchemaError(f"{roles_setting}.{forced[col]} names {what}, which is never a feature; leave it out of the "
                              "roles", source=source, column=col)
    drop = set(drop)
    for col in [*forced, *(c for c in (target, id_col) if c)]:
        if col not in df.columns:
            raise SchemaError(f"column not found; available columns: {list(df.columns)}", source=source, column=col)
    schema = TableSchema(id_col=id_col, target=target)
    for col in df.columns:
        if col in (target, id_col) or col in drop:
            continue
        s = df[col]
        nonnull = s.dropna()
        what = _unsupported(s, nonnull)
        if what:
            raise SchemaError(f"the column holds {what}; or drop it (data.drop=[{col}])", source=source, column=col)
        if col in forced:
            getattr(schema, forced[col]).append(col)
            continue
        if _is_saved_index(col, s):
            log.warning("%s: column '%s' is a saved row index (0, 1, 2, ... in every row: pandas' to_csv without "
                        "index=False): left out of the features", source, col)
            continue
        if len(nonnull) == 0:
            raise SchemaError(f"column is entirely empty; drop it (data.drop=[{col}]) or give it values", source=source,
                              column=col)
        if pd.api.types.is_datetime64_any_dtype(s) or (s.dtype == object or pd.api.types.is_string_dtype(s)) \
                and _looks_like_dates(s, date_format):
            schema.datetime.append(col)  # as a category each date would be a level of its own
            keep = (f", or use it as a category with +{roles_setting}.categorical=[{col}]" if roles_setting else
                    " (the join date's: data.customers_joined_col)")
            log.warning("%s: column '%s' holds dates: not a feature. Derive a number from it (e.g. days since "
                        "signup)%s", source, col, keep)
            continue
        n_unique = nonnull.nunique()
        if n_unique <= 2:
            schema.binary.append(col)
        elif _looks_numeric(s):
            is_int = pd.api.types.is_integer_dtype(s)
            (schema.categorical if is_int and n_unique <= max_categorical_int else schema.numeric).append(col)
            if not pd.api.types.is_numeric_dtype(s) and (example := _formatted_example(s)) is not None:
                log.info("%s: column '%s' holds numbers written with separators or currency/percent signs (e.g. "
                         "%r): read as numbers (a percentage as a share, 12%% as 0.12)", source, col, example)
        else:
            schema.categorical.append(col)
            why = _number_like_text(s, nonnull)
            hint = _dates_hint(nonnull, date_format) if not why else ""
            if why:
                log.warning("%s: column '%s' is read as categories: %s", source, col, why)
            elif hint:
                log.warning("%s: column '%s' holds dates not written as ISO 8601 (e.g. %r): read as categories; to "
                            "read them as dates (not a feature, as ISO dates are), %s", source, col,
                            str(nonnull.iloc[0]), hint)
            elif len(nonnull) >= 50 and n_unique > 0.9 * len(nonnull):
                log.warning("%s: column '%s' has a different value in nearly every row (%d of %d): free text, a date "
                            "or another id? As a category it carries no pattern; drop it (data.drop) or convert it",
                            source, col, n_unique, len(nonnull))
        if n_unique == 1 and len(nonnull) >= 50:
            log.warning("%s: column '%s' has one value (%r) in every row: it carries no information", source, col,
                        nonnull.iloc[0])
    log.info("%s: column roles: %s", source, "; ".join(
        f"{role} {cols}" for role in ("numeric", "categorical", "binary", "datetime")
        if (cols := getattr(schema, role))))
    return schema


# ----------------------------------------------------------------------------- validation


# labels read as the positive (churned) and the negative class: the yes/no words (YES_WORDS, NO_WORDS)
# and the words of a churn outcome, which are labels only (in a feature column 'active' or 'left' is a
# state, not a truth value); with neither, the minority class is positive
_TRUE_LABELS = frozenset(YES_WORDS) | {"churn", "churned", "left", "lost", "cancelled", "canceled", "exited",
                                       "attrited", "lapsed"}
_FALSE_LABELS = frozenset(NO_WORDS) | {"stayed", "retained", "active", "renewed", "existing"}


def is_yes_no_label(v: Any) -> bool:
    """Whether a target label reads as one side of yes/no (1/0, true/false, churned/stayed, ...)."""
    return _label_key(v) in _TRUE_LABELS | _FALSE_LABELS


def validate_target(y: pd.Series, *, source: str, column: str, positive: Any = None,
                    require_both: bool = True) -> tuple[np.ndarray, Any]:
    """Check that a target is binary (with both classes present, for training); return it as 0/1 float32.

    The positive class is ``positive`` when given, else the one of {1, True, 'yes', 'y', 'true',
    'churn', 'churned', 'left', 'lost', 'cancelled', 'exited', ...} present, else the one that is not
    among {0, 'no', 'stayed', 'retained', 'active', ...}, else the minority class. Labels compare as trimmed lower-case text
    with whole numbers written without '.0' (a label column that a blank cell made float still
    matches 0/1). When ``positive`` is not among the labels but both are yes/no-like (1/0,
    true/false, yes/no), they are read by their truth value: a model trained on Yes/No is scored on
    1/0 labels; otherwise two labels of which neither is ``positive`` are refused.
    """
    if y.isna().all():
        raise SchemaError("target column is entirely empty", source=source, column=column)
    if y.isna().any():
        first = y.isna().to_numpy().nonzero()[0][0]
        raise SchemaError(
            f"target has {int(y.isna().sum())} missing values; drop those rows or fill them",
            source=source,
            column=column,
            row=y.index[first],
        )
    codes, uniques = pd.factorize(y.astype("string"))  # one key per distinct label, not per row
    keys = np.array([_label_key(u) for u in uniques], dtype=object)
    vals = keys[codes]
    classes = sorted(set(keys.tolist()))
    if len(classes) > 2:
        raise SchemaError(
            f"target must be binary but has {len(classes)} classes: {classes[:10]}", source=source, column=column
        )
    if len(classes) < 2 and (require_both or positive is None):
        raise SchemaError(
            f"target has only one class ({classes[0]!r}); a classifier needs both", source=source, column=column
        )
    yes_no = set(classes) <= _TRUE_LABELS | _FALSE_LABELS
    if positive is not None:
        pos = _label_key(positive)
        if yes_no and pos in _TRUE_LABELS | _FALSE_LABELS:
            truth = np.isin(vals, list(_TRUE_LABELS if pos in _TRUE_LABELS else _FALSE_LABELS))
            return truth.astype(np.float32), positive
        if pos not in classes and (require_both or len(classes) == 2):
            raise SchemaError(f"positive class {positive!r} not among the labels {classes}; relabel the column "
                              f"(e.g. to {positive!r} and another value)", source=source, column=column)
    else:
        known = [c for c in classes if c in _TRUE_LABELS]
        negative = [c for c in classes if c in _FALSE_LABELS]
        if known:
            pos = known[0]
        elif len(classes) == 2 and len(negative) == 1:
            pos = next(c for c in classes if c != negative[0])
        else:
            counts = pd.Series(vals).value_counts()
            pos = counts.index[-1]
    is_pos = vals == pos
    hits = y[is_pos]
    original = hits.iloc[0] if len(hits) else positive
    if isinstance(original, np.generic):
        original = original.item()
    return is_pos.astype(np.float32), original


def validate_frame(
    df: pd.DataFrame,
    schema: TableSchema,
    *,
    source: str = "<dataframe>",
    require_target: bool = True,
    require_features: bool = True,
) -> None:
    """Check that a DataFrame fits the schema: required columns present and numeric columns parse.

    Raises:
        SchemaError on the first problem found.
    """
    if len(df) == 0:
        raise SchemaError("no rows", source=source)
    needed = list(schema.features) if require_features else []
    if require_target and schema.target:
        needed.append(schema.target)
    missing = [c for c in needed if c not in df.columns]
    if missing:
        steps = sorted({m.group(1) for c in missing if (m := SEQUENCE_COLUMN.match(str(c)))}, key=int)
        hint = ("" if not steps else f" (the model reads the last {int(steps[-1]) + 1} purchases as seq{{k}}_ "
                f"columns: build the frame as it was trained, view_to_frame(view, None, sequence_length="
                f"{int(steps[-1]) + 1}), or data.sequence_length={int(steps[-1]) + 1} from the command line)")
        hint = hint or spaced_names_hint(missing, list(df.columns))
        raise SchemaError(
            f"required column{'s' if len(missing) > 1 else ''} missing: {missing}{hint}",
            source=source,
            column=missing[0],
        )
    for col in schema.numeric:
        to_numeric_strict(df[col], source=source, column=col)
    if require_target and schema.target:
        validate_target(df[schema.target], source=source, column=schema.target)
