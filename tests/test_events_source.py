"""data=events: event log + customer table → customer view at a cutoff → churn model via train(cfg)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from clm_torch.data.schema import SchemaError
from clm_torch.data.sources.events import default_cutoff, events_datamodule
from clm_torch.train import train

FAST = ["model.k_ensemble=2", "model.hidden=[32]", "model.d_embed=8", "trainer.max_epochs=2",
        "data.batch_size=128", "callbacks.model_summary=null", "~logger"]


@pytest.fixture(scope="module")
def event_files(tmp_path_factory) -> tuple[Path, Path]:
    from clm_torch.data.synthetic import generate_customer_base

    tmp = tmp_path_factory.mktemp("events")
    base = generate_customer_base(1500, seed=1)
    ev, cust = tmp / "events.csv", tmp / "customers.csv"
    base.events[base.events["timestamp"] < base.cutoff].to_csv(ev, index=False)  # the observable past only
    base.customers.drop(columns=["churn"]).to_csv(cust, index=False)
    return ev, cust


def test_events_datamodule_builds_features_before_cutoff(event_files) -> None:
    ev, cust = event_files
    dm = events_datamodule(str(ev), amount_col="amount", item_col="item_id", cutoff="2024-06-01",
                           customers_path=str(cust))
    dm.setup()
    cols = dm.frames["train"].columns
    assert {"recency_days", "frequency", "monetary_mean", "tenure_days", "trend_log_ratio", "plan"} <= set(cols)
    assert dm.schema.target == "churn" and "future_spend" not in cols
    assert 0.05 < float(dm.tensors["train"]["y"].mean()) < 0.95
    assert set(dm.ids("train")).isdisjoint(dm.ids("test"))  # split over customers
    events = pd.read_csv(ev, parse_dates=["timestamp"])
    assert default_cutoff(events, 90) == (events["timestamp"].max() - pd.Timedelta(days=90)).normalize()


def test_spend_target_is_continuous(event_files) -> None:
    ev, _ = event_files
    dm = events_datamodule(str(ev), amount_col="amount", cutoff="2024-06-01", target="future_spend")
    dm.setup()
    assert dm.target_type == "continuous" and float(dm.tensors["train"]["y"].max()) > 1.0


def test_bad_target_and_cutoff(event_files) -> None:
    ev, _ = event_files
    with pytest.raises(SchemaError, match="data.target"):
        events_datamodule(str(ev), target="revenue")
    with pytest.raises(SchemaError, match="before the first event"):
        events_datamodule(str(ev), cutoff="1999-01-01")


@pytest.mark.parametrize("column, time_features, what", [
    ("recency_days", "absolute", "the name of an event feature"),
    ("recency_share", "relative", "the name of a relative time feature"),
    ("seq0_days", "absolute", "the name of a purchase-sequence column"),
])
def test_a_customer_table_column_clash_names_the_table_file(event_files, tmp_path: Path, column: str,
                                                            time_features: str, what: str) -> None:
    """A customer-table column named like a derived feature: the error names the table's file."""
    ev, cust = event_files
    bad = tmp_path / "crm_export.csv"
    pd.read_csv(cust).assign(**{column: 1.0}).to_csv(bad, index=False)
    with pytest.raises(SchemaError) as err:
        events_datamodule(str(ev), amount_col="amount", cutoff="2024-06-01", customers_path=str(bad),
                          time_features=time_features, sequence_length=2 if column.startswith("seq") else 0)
    assert str(err.value).startswith(f"{bad}, column '{column}': ") and what in str(err.value), str(err.value)


def test_train_churn_on_events_from_the_cli_config(make_cfg, event_files) -> None:
    ev, cust = event_files
    cfg = make_cfg("model=churn", "data=events", f"data.path={ev}", "data.amount_col=amount",
                   "data.item_col=item_id", "data.cutoff=2024-06-01", f"data.customers_path={cust}", *FAST)
    metrics, _ = train(cfg)
    assert metrics["test/auroc"] > 0.75  # recency/frequency carry most of the churn signal
    preds = pd.read_csv(Path(cfg.paths.output_dir) / "predictions" / "test.csv")
    assert list(preds.columns) == ["customer_id", "label", "prediction"]
