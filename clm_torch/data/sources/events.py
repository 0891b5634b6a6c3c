"""``data=events``: an event log (+ optional customer table) → the customer view at one cutoff → a table.

Features come from events strictly before ``cutoff``; the label (``churn``: no purchase within
``horizon_days``; or ``future_spend`` / ``future_n_tx``) from ``[cutoff, cutoff + horizon)``.
The DataModule then splits over customers, so no customer's future leaks into training.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from clm_torch.data.datamodules import TableDataModule
from clm_torch.data.events import (  # noqa: F401 (the time-feature names are re-exported)
    AGE_DEPENDENT_COLUMNS,
    FEATURE_COLUMNS,
    LABEL_COLUMNS,
    RELATIVE_TIME_COLUMNS,
    TIME_FEATURES,
    CustomerView,
    apply_time_features,
    build_customer_view,
    load_events,
    parse_cutoff,
    parse_sequence_column,
    relative_time_features,
    sequence_column,
)
from clm_torch.data.schema import SchemaError, read_table, role_columns
from clm_torch.data.sources.tables import FrameSource

log = logging.getLogger(__name__)


def default_cutoff(events: pd.DataFrame, horizon_days: float) -> pd.Timestamp:
    """The latest cutoff whose whole label window is observed: last event − horizon."""
    return (events["timestamp"].max() - pd.Timedelta(days=float(horizon_days))).normalize()


def sequence_frame(view: CustomerView, length: int, *, min_customers: int = 0) -> pd.DataFrame:
    """The last ``length`` purchases of every customer as wide columns, most recent first.

    Columns ``seq{k}_days`` (days before the cutoff), ``seq{k}_amount`` (only when the log has
    amounts) and ``seq{k}_item`` (the raw item id; only when the log has items), k = 0 … length − 1,
    in the order of ``view.features.index``. A customer with fewer purchases has NaN in the steps
    they lack; a missing/unknown item is NaN. Steps that fewer than ``min_customers`` customers
    reach are left out (for training: an encoder cannot fit a column that is empty in the
    training split; for scoring keep 0, so that every step a model was trained with is there).
    Purchase rows are the rows of ``view.sequences`` (refunds excluded, one row per basket line).
    """
    seq = view.sequences
    n_last = seq["item_idx"].shape[1]
    if length > n_last:
        raise ValueError(f"the view keeps the last {n_last} purchases; rebuild it with n_last >= {length}")
    lengths = np.asarray(seq["length"], dtype=np.int64)
    n_reaching = (lengths[:, None] > np.arange(length)[None, :]).sum(0)  # customers with >= k + 1 purchases
    reached = int((n_reaching >= min_customers).sum())  # non-increasing in k: a prefix of the steps
    if reached < length:
        log.info("purchase sequences: keeping %d of %d steps (later steps reached by < %d customers)",
                 reached, length, min_customers)
    k = np.arange(reached)
    pos = lengths[:, None] - 1 - k[None, :]  # sequences are oldest first and left-aligned
    valid = pos >= 0
    pos = np.clip(pos, 0, None)
    rows = np.arange(len(lengths))[:, None]
    has_amount = not view.features["monetary_total"].isna().all()  # all NaN only without an amount column
    has_item = len(view.item_vocab) > 1
    cols: dict[str, Any] = {}
    days = np.where(valid, seq["days_before_cutoff"][rows, pos].astype(np.float64), np.nan)
    amount = np.where(valid, seq["amount"][rows, pos].astype(np.float64), np.nan)
    if has_item:
        vocab = np.asarray([np.nan, *view.item_vocab[1:]], dtype=object)  # index 0: unknown or missing
        items = np.where(valid, vocab[seq["item_idx"][rows, pos]], np.nan)
    for j in range(reached):
        cols[sequence_column(j, "days")] = days[:, j]
        if has_amount:
            cols[sequence_column(j, "amount")] = amount[:, j]
        if has_item:
            cols[sequence_column(j, "item")] = items[:, j]
    return pd.DataFrame(cols, index=view.features.index)


def sequence_roles(columns: Sequence[str], roles: Mapping[str, Sequence[str]] | None) -> dict[str, list[str]]:
    """``roles`` plus the sequence columns among ``columns``: days and amounts numeric, items
    categorical (whatever their values look like). A role given in ``roles`` wins."""
    out = {k: role_columns(v) for k, v in (roles or {}).items()}
    forced = {c for v in out.values() for c in v}
    for c in columns:
        parsed = parse_sequence_column(c)
        if parsed is not None and c not in forced:
            out.setdefault("categorical" if parsed[1] == "item" else "numeric", []).append(c)
    return out


def view_to_frame(view: CustomerView, target: str | None, sequence_length: int = 0,
                  min_step_customers: int = 0, time_features: str = "absolute") -> pd.DataFrame:
    """Features (and the chosen label) as one flat table with a ``customer_id`` column.

    With ``sequence_length`` > 0 the last purchases follow as wide columns (:func:`sequence_frame`,
    leaving out the steps fewer than ``min_step_customers`` customers reach). ``time_features``
    (``data.time_features``): ``absolute`` (the view as built), ``relative`` or ``both``
    (:func:`apply_time_features`). A model trained on a frame with ``relative`` or ``both`` scores
    frames built with the same setting.
    """
    frame = apply_time_features(view.features, time_features, source=view.customers_source).copy()
    frame = frame.drop(columns=[c for c in LABEL_COLUMNS if c in frame.columns])  # table columns named like labels
    # derived features that an optional input did not allow (e.g. diversity without an item column)
    empty = [c for c in (*FEATURE_COLUMNS, *RELATIVE_TIME_COLUMNS) if c in frame.columns and frame[c].isna().all()]
    constant = [c for c in ("n_distinct_items",) if c in frame.columns and c not in empty and frame[c].nunique() <= 1]
    if empty or constant:
        log.info("customer view: leaving out features without information: %s", empty + constant)
        frame = frame.drop(columns=empty + constant)
    if sequence_length > 0:
        seq = sequence_frame(view, int(sequence_length), min_customers=min_step_customers)
        clash = [c for c in seq.columns if c in frame.columns]
        if clash:
            raise SchemaError("customer table column has the name of a purchase-sequence column; rename it",
                              source=view.customers_source, column=clash[0])
        frame = frame.join(seq)
    if target:
        y = view.labels[target]
        if len(y) and y.isna().all():
            raise SchemaError(f"the labels at the cutoff {view.cutoff} are unknown: the log has no event on or after "
                              "it; train at an earlier cutoff (data.cutoff), at least the horizon before the last event",
                              source=view.events_source)
        frame[target] = y.to_numpy()
    frame.index.name = "customer_id"
    return frame.reset_index()


def read_customer_table(path: str | os.PathLike, id_col: str, csv: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """A customer table file with its id column (read as text: ids keep leading zeros) renamed to
    ``customer_id`` and one row per id (the cleaning rule: the last row of each id, with a warning).

    Raises:
        SchemaError: the file cannot be read, or has no column ``id_col``.
    """
    customers = read_table(path, what="customer table", text_columns=[id_col], csv=csv)
    if id_col not in customers.columns:
        raise SchemaError(f"id column not found; columns are {list(customers.columns)}", source=str(path),
                          column=id_col)
    customers = customers.rename(columns={id_col: "customer_id"})
    # ids compare without surrounding spaces (as the view reads them); rows without an id are no
    # duplicates of each other (the view names them as missing)
    key = customers["customer_id"].astype("string").str.strip()
    dup = key.notna().to_numpy() & key.duplicated(keep="last").to_numpy()
    if dup.any():
        log.warning("%s: dropped %d duplicate customer rows (kept the last per id)", path, int(dup.sum()))
        customers = customers.loc[~dup]
    return customers


def customer_view_from_files(
    path: str | os.PathLike,
    *,
    customer_col: str = "customer_id",
    time_col: str = "timestamp",
    amount_col: str | None = None,
    item_col: str | None = None,
    quantity_col: str | None = None,
    cutoff: Any = None,
    horizon_days: float = 90,
    customers_path: str | os.PathLike | None = None,
    customers_id_col: str | None = None,
    n_last: int = 10,
    future_policy: str = "error",
    customers_as_of: Any = None,
    customers_joined_col: str | None = None,
    warn_ids: bool = True,
    csv: Mapping[str, Any] | None = None,
    date_format: str | None = None,
) -> CustomerView:
    """Load and validate an event log (and customer table) and build the view at ``cutoff``.

    ``customers_as_of``: when the customer table was current (None: at the log's last event). For
    an earlier cutoff its customers without an event before the cutoff are left out of the view
    (see :func:`build_customer_view`): some of them joined after the cutoff. ``customers_joined_col``:
    the table's join-date column, which says who existed at the cutoff (see :func:`build_customer_view`).
    ``warn_ids``: warn about ids that differ only in letter case (``data.clean.check_id_case``). ``csv``:
    the CSV dialect of both files (``data.csv``). ``date_format``: how the log's timestamps, the join
    dates and the cutoffs are written when not in ISO 8601 (``data.date_format``, e.g. ``'%d/%m/%Y'``)."""
    events = load_events(path, customer_col=customer_col, time_col=time_col, amount_col=amount_col,
                         item_col=item_col, quantity_col=quantity_col, future_policy=future_policy, csv=csv,
                         date_format=date_format)
    customers = (read_customer_table(customers_path, customers_id_col or customer_col, csv=csv) if customers_path
                 else None)
    cut = (parse_cutoff(cutoff, setting="data.cutoff", date_format=date_format) if cutoff not in (None, "", "auto")
           else default_cutoff(events, horizon_days))
    if cut <= events["timestamp"].min():
        raise SchemaError(f"cutoff {cut.date()} is before the first event ({events['timestamp'].min().date()})",
                          source=str(path), column=time_col)
    as_of = (parse_cutoff(customers_as_of, setting="data.customers_as_of", date_format=date_format)
             if customers_as_of not in (None, "")
             else events["timestamp"].max())
    return build_customer_view(events, cut, horizon_days=horizon_days, customers=customers, n_last=n_last,
                               events_source=str(path), customers_source=str(customers_path) if customers_path else None,
                               customers_as_of=as_of, customers_joined_col=customers_joined_col or None,
                               warn_ids=warn_ids, date_format=date_format)


def _check_view_args(target: str, sequence_length: int, time_features: str = "absolute") -> None:
    if time_features not in TIME_FEATURES:
        raise ValueError(f"data.time_features must be one of {TIME_FEATURES}, not {time_features!r}")
    if sequence_length < 0:
        raise ValueError(f"data.sequence_length must be >= 0, not {sequence_length}")
    if target not in LABEL_COLUMNS:
        raise SchemaError(f"data.target must be one of {list(LABEL_COLUMNS)} for event logs, not {target!r}",
                          source="data.target")


def _check_id_case(kwargs: Mapping[str, Any]) -> bool:
    """``data.clean.check_id_case`` (default on): the view's id warnings, as a table's cleaning gives them."""
    return bool((kwargs.get("clean") or {}).get("check_id_case", True))


def _view_datamodule(view: CustomerView, target: str, sequence_length: int, roles: Mapping[str, Sequence[str]] | None,
                     drop: Sequence[str], name: str, time_features: str = "absolute", **kwargs: Any
                     ) -> TableDataModule:
    """A customer view (features + its labels) as the :class:`TableDataModule` of ``target``."""
    frame = view_to_frame(view, target, sequence_length, min_step_customers=10, time_features=time_features)
    if sequence_length > 0:
        roles = sequence_roles(frame.columns, roles)
    kwargs.setdefault("target_type", "binary" if target == "churn" else "continuous")
    return TableDataModule(FrameSource(frame, target=target, id_col="customer_id", roles=roles, drop=drop,
                                       name=name, ids_checked=True), **kwargs)  # the view warned about its ids


def events_datamodule(
    path: str,
    customer_col: str = "customer_id",
    time_col: str = "timestamp",
    amount_col: str | None = None,
    item_col: str | None = None,
    quantity_col: str | None = None,
    cutoff: Any = None,
    horizon_days: float = 90,
    customers_path: str | None = None,
    customers_id_col: str | None = None,
    target: str = "churn",
    roles: Mapping[str, Sequence[str]] | None = None,
    drop: Sequence[str] = (),
    n_last: int = 10,
    future_policy: str = "error",
    sequence_length: int = 0,
    time_features: str = "absolute",
    customers_as_of: Any = None,
    customers_joined_col: str | None = None,
    csv: Mapping[str, Any] | None = None,
    date_format: str | None = None,
    **kwargs: Any,
) -> TableDataModule:
    """The ``data=events`` DataModule: customer view at ``cutoff`` → :class:`TableDataModule`.

    ``target`` is ``churn`` (binary) or ``future_spend`` / ``future_n_tx`` (continuous).
    ``cutoff`` null means the latest cutoff with a fully observed label window.
    ``sequence_length`` > 0 adds the last purchases as wide columns ``seq{k}_days``,
    ``seq{k}_amount``, ``seq{k}_item`` (:func:`sequence_frame`) for ``model.sequence_encoder``.
    ``time_features``: ``absolute`` | ``relative`` | ``both`` (:func:`apply_time_features`).
    ``date_format``: how the log's timestamps, the customer table's dates and the cutoffs are written
    when not in ISO 8601 (a strftime format such as ``'%d/%m/%Y'``; None: ISO 8601 and epoch seconds).
    """
    _check_view_args(target, sequence_length, time_features)
    if target == "future_spend" and not amount_col:  # the label would be NaN for every customer
        raise SchemaError("data.target=future_spend is money spent in the horizon: it needs the log's money column; "
                          "set data.amount_col=<column>", source=str(path))
    view = customer_view_from_files(path, customer_col=customer_col, time_col=time_col, amount_col=amount_col,
                                    item_col=item_col, quantity_col=quantity_col, cutoff=cutoff,
                                    horizon_days=horizon_days, customers_path=customers_path,
                                    customers_id_col=customers_id_col, n_last=max(n_last, sequence_length),
                                    future_policy=future_policy, customers_as_of=customers_as_of,
                                    customers_joined_col=customers_joined_col, warn_ids=_check_id_case(kwargs),
                                    csv=csv, date_format=date_format)
    name = f"{path} @ cutoff {view.cutoff.date()} (+{horizon_days:g} days)"
    # the table's other date columns in the view: read as dates (not features) in that format too
    return _view_datamodule(view, target, sequence_length, roles, drop, name, time_features, date_format=date_format,
                            **kwargs)


def synthetic_events_datamodule(
    n_customers: int = 5000,
    seed: int = 0,
    target: str = "churn",
    n_last: int = 10,
    sequence_length: int = 0,
    category_shares: bool = True,
    roles: Mapping[str, Sequence[str]] | None = None,
    drop: Sequence[str] = (),
    time_features: str = "absolute",
    **kwargs: Any,
) -> TableDataModule:
    """The ``data=synthetic_events`` DataModule: the built-in synthetic base's event log (with items
    and amounts) → the customer view at the base's cutoff, labels over its horizon. The same
    features as ``data=events`` (plus per-category purchase shares), so any ``data=events``
    experiment runs out of the box; pass ``data=events data.path=...`` for your own log."""
    from clm_torch.data.synthetic import generate_customer_base

    _check_view_args(target, sequence_length, time_features)
    base = generate_customer_base(int(n_customers), seed=int(seed))
    categories = base.items.set_index("item_id")["category"] if category_shares else None
    view = build_customer_view(base.events, base.cutoff, horizon_days=base.horizon_days,
                               n_last=max(n_last, sequence_length), item_categories=categories,
                               category_shares=bool(category_shares), warn_ids=_check_id_case(kwargs))
    name = f"synthetic(n={n_customers}, seed={seed}) events @ cutoff {view.cutoff.date()} (+{base.horizon_days} days)"
    return _view_datamodule(view, target, sequence_length, roles, drop, name, time_features, **kwargs)

