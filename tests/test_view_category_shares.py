"""``build_customer_view(..., item_categories=..., category_shares=True)``: per-category purchase shares,
checked by hand on a small log."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from clm_torch.data.events import build_customer_view, load_events
from clm_torch.data.schema import SchemaError

CUTOFF = "2024-04-01"
LOG = [
    # customer, timestamp, item, amount
    ("A", "2024-01-01", "x", 10.0),
    ("A", "2024-02-01", "y", 20.0),
    ("A", "2024-02-01", "z", 5.0),
    ("A", "2024-03-02", "x", 30.0),
    ("A", "2024-03-10", "x", -10.0),  # refund: not a purchase row
    ("A", "2024-04-10", "y", 15.0),  # label window: not a feature
    ("B", "2023-09-01", "x", 40.0),
    ("B", "2024-03-22", "y", 60.0),
    ("C", "2024-03-20", "z", 12.0),
    ("C", "2024-04-01", "z", 8.0),  # at the cutoff: label, not feature
    ("D", "2024-04-15", "x", 9.0),  # only after the cutoff
]
CATS = {"x": "A", "y": "A", "z": "B"}


def _events() -> pd.DataFrame:
    df = pd.DataFrame(LOG, columns=["cid", "ts", "item", "amt"])
    return load_events(df, customer_col="cid", time_col="ts", amount_col="amt", item_col="item", now="2024-12-31")


def _view(**kw):
    return build_customer_view(_events(), CUTOFF, horizon_days=30, n_last=3, **kw)


def test_shares_by_hand():
    f = _view(item_categories=CATS, category_shares=True).features
    shares = [c for c in f.columns if c.startswith("share_")]
    assert shares == ["share_A", "share_B"]
    # A's purchase rows before the cutoff: x, y, z, x (refund and label-window rows excluded)
    assert f.loc["A", "share_A"] == pytest.approx(0.75)
    assert f.loc["A", "share_B"] == pytest.approx(0.25)
    assert f.loc["B", ["share_A", "share_B"]].tolist() == pytest.approx([1.0, 0.0])
    assert f.loc["C", ["share_A", "share_B"]].tolist() == pytest.approx([0.0, 1.0])
    assert "D" not in f.index
    # the entropy is unchanged and consistent with the shares
    assert f.loc["A", "category_entropy"] == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))


def test_off_by_default_and_without_a_map():
    assert not any(c.startswith("share_") for c in _view(item_categories=CATS).features.columns)
    assert not any(c.startswith("share_") for c in _view(category_shares=True).features.columns)


def test_unmapped_items_and_unseen_categories():
    # y unmapped (denominator only); category Q of an item nobody bought: a column of zeros
    f = _view(item_categories={"x": "A", "z": "B", "w": "Q"}, category_shares=True).features
    assert [c for c in f.columns if c.startswith("share_")] == ["share_A", "share_B", "share_Q"]
    assert f.loc["A", ["share_A", "share_B", "share_Q"]].tolist() == pytest.approx([0.5, 0.25, 0.0])
    assert f.loc["B", ["share_A", "share_B"]].tolist() == pytest.approx([0.5, 0.0])
    assert (f["share_Q"] == 0).all()


def test_non_string_categories_and_table_customers_without_history():
    table = pd.DataFrame({"customer_id": ["A", "E"], "age": [30, 40]})
    f = _view(item_categories=pd.Series({"x": 1, "y": 1, "z": 2}), category_shares=True, customers=table).features
    assert f.loc["A", ["share_1", "share_2"]].tolist() == pytest.approx([0.75, 0.25])
    assert np.isnan(f.loc["E", "share_1"]) and np.isnan(f.loc["E", "share_2"])  # no purchase before the cutoff
    assert f.loc["E", "age"] == 40


def test_clash_with_a_table_column():
    table = pd.DataFrame({"customer_id": ["A"], "share_A": [0.1]})
    with pytest.raises(SchemaError, match="share_A"):
        _view(item_categories=CATS, category_shares=True, customers=table)
