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

import pandas as pd

from clm_torch.data.datamodules import TableDataModule
from clm_torch.data.events import FEATURE_COLUMNS, LABEL_COLUMNS, CustomerView, build_customer_view, load_events
from clm_torch.data.schema import SchemaError, read_table
from clm_torch.data.sources.tables import FrameSource

log = logging.getLogger(__name__)


def default_cutoff(events: pd.DataFrame, horizon_days: float) -> pd.Timestamp:
    """The latest cutoff whose whole label window is observed: last event − horizon."""
    return (events["timestamp"].max() - pd.Timedelta(days=float(horizon_days))).normalize()


def view_to_frame(view: CustomerView, target: str | None) -> pd.DataFrame:
    """Features (and the chosen label) as one flat table with a ``customer_id`` column."""
    frame = view.features.copy()
    frame = frame.drop(columns=[c for c in LABEL_COLUMNS if c in frame.columns])  # table columns named like labels
    # derived features that an optional input did not allow (e.g. diversity without an item column)
    empty = [c for c in FEATURE_COLUMNS if c in frame.columns and frame[c].isna().all()]
    constant = [c for c in ("n_distinct_items",) if c in frame.columns and frame[c].nunique() <= 1]
    if empty or constant:
        log.info("customer view: leaving out features without information: %s", empty + constant)
        frame = frame.drop(columns=empty + constant)
    if target:
        frame[target] = view.labels[target].to_numpy()
    frame.index.name = "customer_id"
    return frame.reset_index()


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
) -> CustomerView:
    """Load and validate an event log (and customer table) and build the view at ``cutoff``."""
    events = load_events(path, customer_col=customer_col, time_col=time_col, amount_col=amount_col,
                         item_col=item_col, quantity_col=quantity_col, future_policy=future_policy)
    customers = None
    if customers_path:
        customers = read_table(customers_path, what="customer table")
        cid = customers_id_col or customer_col
        if cid not in customers.columns:
            raise SchemaError(f"id column not found; columns are {list(customers.columns)}",
                              source=str(customers_path), column=cid)
        customers = customers.rename(columns={cid: "customer_id"})
        dup = customers.duplicated("customer_id", keep="last")
        if dup.any():  # the cleaning rule: keep the last row of each id
            log.warning("%s: dropped %d duplicate customer rows (kept the last per id)", customers_path, int(dup.sum()))
            customers = customers.loc[~dup]
    cut = pd.Timestamp(cutoff) if cutoff not in (None, "", "auto") else default_cutoff(events, horizon_days)
    if cut <= events["timestamp"].min():
        raise SchemaError(f"cutoff {cut.date()} is before the first event ({events['timestamp'].min().date()})",
                          source=str(path), column=time_col)
    return build_customer_view(events, cut, horizon_days=horizon_days, customers=customers, n_last=n_last)


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
    **kwargs: Any,
) -> TableDataModule:
    """The ``data=events`` DataModule: customer view at ``cutoff`` → :class:`TableDataModule`.

    ``target`` is ``churn`` (binary) or ``future_spend`` / ``future_n_tx`` (continuous).
    ``cutoff`` null means the latest cutoff with a fully observed label window.
    """
    if target not in LABEL_COLUMNS:
        raise SchemaError(f"data.target must be one of {list(LABEL_COLUMNS)} for event logs, not {target!r}",
                          source="data.target")
    view = customer_view_from_files(path, customer_col=customer_col, time_col=time_col, amount_col=amount_col,
                                    item_col=item_col, quantity_col=quantity_col, cutoff=cutoff,
                                    horizon_days=horizon_days, customers_path=customers_path,
                                    customers_id_col=customers_id_col, n_last=n_last, future_policy=future_policy)
    frame = view_to_frame(view, target)
    kwargs.setdefault("target_type", "binary" if target == "churn" else "continuous")
    name = f"{path} @ cutoff {view.cutoff.date()} (+{horizon_days:g} days)"
    return TableDataModule(FrameSource(frame, target=target, id_col="customer_id", roles=roles, drop=drop,
                                       name=name), **kwargs)
