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


def test_what_used_to_be_read_wrongly_in_silence(event_files, tmp_path: Path) -> None:
    """A separator at the end of every line made pandas take the ids as the index, so each column held
    its left neighbour's values; a cutoff past the log's end labelled every customer a churner; a
    future_spend target without the money column was NaN for everyone; a 0 among epoch seconds was a
    1970 purchase; rows without an id were dropped as 'duplicates'."""
    from clm_torch.data.events import build_customer_view, load_events
    from clm_torch.data.sources.events import read_customer_table, view_to_frame

    trailing = tmp_path / "crm.csv"
    trailing.write_text("cid,age,band\n18,46,low,\n46,30,high,\n")
    table = read_customer_table(trailing, "cid")
    assert table.to_dict("list") == {"customer_id": ["18", "46"], "age": [46, 30], "band": ["low", "high"]}
    trailing.write_text("cid,age,band\n18,46,low,\n46,30,high,x\n")
    with pytest.raises(SchemaError, match="line 3 has 4 fields but the header names 3 columns"):
        read_customer_table(trailing, "cid")
    trailing.write_text("cid,age\n1,30\n,31\n3,32\n,33\n 3,34\n")
    assert read_customer_table(trailing, "cid")["age"].tolist() == [30, 31, 33, 34]  # ' 3' repeats 3; no id: kept

    log = load_events(pd.DataFrame({"cid": ["a", "b"], "ts": ["2024-01-01", "2024-02-01"], "amount": [5.0, 7.0]}),
                      customer_col="cid", time_col="ts", amount_col="amount")
    future = build_customer_view(log, "2024-03-01", horizon_days=30)
    assert future.labels.isna().all().all()  # was churn = 1, future_spend = 0 for everyone
    with pytest.raises(SchemaError, match="the labels at the cutoff 2024-03-01 00:00:00 are unknown"):
        view_to_frame(future, "churn")
    with pytest.raises(ValueError, match="horizon_days must be a number of days in"):
        build_customer_view(log, "2024-03-01", horizon_days=float("nan"))
    with pytest.raises(SchemaError, match="column 'amount': expected money amounts"):
        build_customer_view(log.assign(amount=["5", "$6"]), "2024-03-01")
    ev, _ = event_files
    with pytest.raises(SchemaError, match="target=future_spend .* set data.amount_col"):
        events_datamodule(str(ev), cutoff="2024-06-01", target="future_spend")
    with pytest.raises(SchemaError, match=r"column 'ts', row 0: 0 read as epoch seconds is 1970-01-01"):
        load_events(pd.DataFrame({"cid": [1, 1], "ts": [0, 1704067200]}), customer_col="cid", time_col="ts")
    with pytest.raises(SchemaError, match="column 'ts': the log has 2 columns of this name"):
        load_events(pd.DataFrame([[1, "2024-03-01", "2024-03-01"]], columns=["cid", "ts", "ts"]), customer_col="cid",
                    time_col="ts")
    for amounts, msg in (([5.0, 1e308], "row 1: 1 amounts beyond 1e15"), ([True, False], "found booleans")):
        with pytest.raises(SchemaError, match=f"column 'amount', {msg}" if "row" in msg else msg):
            load_events(pd.DataFrame({"cid": ["a", "b"], "ts": ["2024-01-01", "2024-02-01"], "amount": amounts}),
                        customer_col="cid", time_col="ts", amount_col="amount")
    with pytest.raises(SchemaError, match="a YYYYMMDD date among epoch seconds"):
        load_events(pd.DataFrame({"cid": [1, 1], "ts": [20240301, 1704067200]}), customer_col="cid", time_col="ts")


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


def test_ids_written_as_decimals_beside_plain_ones_are_warned_about(tmp_path: Path, caplog) -> None:
    """'1.0' (an export through a number column) and '1' are two customers, as text ids; they were
    counted apart without a word."""
    import logging

    from clm_torch.data.cleaning import decimal_collisions
    from clm_torch.data.events import build_customer_view, load_events

    log = tmp_path / "e.csv"
    log.write_text("cid,ts\n1.0,2024-01-01\n1,2024-02-01\n2,2024-02-03\n3.0,2024-02-04\n")
    with caplog.at_level(logging.WARNING):
        view = build_customer_view(load_events(log, customer_col="cid", time_col="ts"), "2024-03-01")
    assert len(view.features) == 4  # kept apart: only the data's owner knows
    assert "1 ids are a whole number written as a decimal beside the same number written plainly (e.g. '1' and " \
           "'1.0')" in caplog.text
    assert decimal_collisions(pd.Index(["C1.0", "C1", "7.5", "7"])) == (0, None)
    # the cleaning report's count of ids differing in letter case counts only those
    from clm_torch.data.cleaning import clean_table
    from clm_torch.data.schema import infer_schema

    table = pd.DataFrame({"cid": ["1", "1.0", "a", "A", "b", "c"], "x": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]})
    _, report = clean_table(table, infer_schema(table, id_col="cid"))
    assert report.case_colliding_ids == 1
