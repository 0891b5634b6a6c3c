"""``clm-pipeline``: the customer-lifecycle loop as one command (the default of ``make run``).

Steps: load → clean → features at the cutoff → InfoGapVAE → ChurnClassifier (with the VAE's
features) → EmbeddingRecommender → spend model → score every customer → segment → value → report.

No future leaks into training: the models learn from the customer view at
``train_cutoff = cutoff − horizon`` (features before it, labels in ``[train_cutoff, cutoff)``, all
observed), and every customer is then scored from the view at ``cutoff`` (features before it;
their outcome lies in the unobserved future — on synthetic data the report checks it against the
ground truth). Each model is trained by :func:`clm_torch.train.train` on tables this pipeline
writes into ``<run>/data/``, into its own sub-run ``<run>/<model>/``.

Run directory::

    data/                     train_view.parquet (labelled), profile_view.parquet (the VAE's: every customer
                              at the training cutoff, no labels), score_view.parquet, interactions.parquet,
                              customers_clean.parquet
    vae/ churn/ recommender/ spend/   one train() sub-run each: checkpoints/, tensorboard/, metrics.json
    customers.csv             one row per customer: segment, stage, churn probability, CLV, gap score,
                              next best question, top-5 recommendations, action and reason
    segments.csv              one row per segment
    summary.md                headline metrics (and the ground-truth check on synthetic data)
    plots/*.png               latent map, churn calibration + gain, CLV by segment, cohorts, top gaps
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pandas as pd
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from omegaconf.errors import ConfigKeyError

from clm_torch.data.cleaning import clean_table
from clm_torch.data.events import (CustomerView, build_customer_view, load_events, parse_cutoff,
                                   parse_sequence_column)
from clm_torch.data.schema import (DATE_FORMAT_EXPECTED, SchemaError, check_drop, csv_options, date_format_problem,
                                   infer_schema)
from clm_torch.data.sources.events import read_customer_table, view_to_frame
from clm_torch.lifecycle import report as rpt
from clm_torch.models.components.sequence import SEQUENCE_ENCODERS
from clm_torch.lifecycle.segments import choose_k, segment_summary
from clm_torch.lifecycle.stages import STAGE_INPUTS, assign_stage
from clm_torch.lifecycle.value import (
    clv_formula,
    clv_learned,
    cohort_retention,
    per_period_churn_prob,
    run_rate_clv,
    spearman,
    spend_capture,
    survival_from_churn_prob,
)
from clm_torch.train import (CONFIG_DIR, SettingError, bad_setting, check_run_dir, check_settings, is_number,
                             is_whole, run_cli, train)
from clm_torch.utils.io import write_csv_safe, write_json

log = logging.getLogger(__name__)


def _say(msg: str) -> None:
    print(f"[clm-pipeline] {msg}", flush=True)


# ----------------------------------------------------------------------------- step 1: load
def _csv(d: DictConfig) -> dict[str, Any] | None:
    """``data.csv`` (the CSV dialect of the log and the table) as a plain dict; None when unset."""
    node = d.get("csv")
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else None


def load_inputs(cfg: DictConfig) -> dict[str, Any]:
    """The event log (observed part only), the customer table, and ground truth when synthetic."""
    d = cfg.data
    if d.kind == "synthetic":
        from clm_torch.data.synthetic import generate_customer_base

        base = generate_customer_base(int(d.n_customers), seed=int(d.seed), horizon_days=int(cfg.horizon_days),
                                      **(OmegaConf.to_container(d.generator, resolve=True) if d.get("generator") else {}))
        cutoff = pd.Timestamp(base.cutoff)
        events = base.events[base.events["timestamp"] < cutoff].reset_index(drop=True)  # the observable past
        customers = base.customers.drop(columns=[base.target])
        name = f"synthetic(n={d.n_customers}, seed={d.seed})"
        return {"events": events, "customers": customers, "truth": base.truth.set_index("customer_id"),
                "items": base.items, "cutoff": cutoff, "name": name, "customers_source": f"{name} customer table"}
    if d.kind == "events":
        _check_event_columns(d)
        fmt = d.get("date_format")  # the log's, the table's and the cutoffs' dates when not ISO 8601
        events = load_events(d.path, customer_col=d.customer_col, time_col=d.time_col, amount_col=d.amount_col,
                             item_col=d.item_col, quantity_col=d.get("quantity_col"),
                             future_policy=d.get("future_policy", "error"), csv=_csv(d), date_format=fmt)
        customers = (read_customer_table(d.customers_path, d.get("customers_id_col") or d.customer_col, csv=_csv(d))
                     if d.get("customers_path") else None)
        drop = [str(c) for c in (d.get("customers_drop") or [])]
        if drop and customers is not None:  # columns no model should read: empty, free text, a label of today
            check_drop(drop, customers.columns, source=str(d.customers_path), setting="data.customers_drop")
            customers = customers.drop(columns=drop)
        cutoff = (parse_cutoff(d.cutoff, setting="data.cutoff", date_format=fmt) if d.get("cutoff")
                  else events["timestamp"].max().normalize() + pd.Timedelta(days=1))
        events = events[events["timestamp"] < cutoff].reset_index(drop=True)
        as_of = (parse_cutoff(d.customers_as_of, setting="data.customers_as_of", date_format=fmt)
                 if d.get("customers_as_of") else cutoff)
        return {"events": events, "customers": customers, "truth": None, "items": None, "cutoff": cutoff,
                "name": str(d.path), "customers_source": str(d.get("customers_path") or "customer table"),
                "customers_as_of": as_of, "customers_joined_col": d.get("customers_joined_col") or None,
                "date_format": fmt}
    raise SettingError(f"data.kind={d.kind!r}: expected synthetic or events")


# ----------------------------------------------------------------------------- settings
_MODELS = ("vae", "churn", "recommender", "spend")


def _check_event_columns(d: DictConfig) -> None:
    """The event-log columns the pipeline cannot do without (``data.amount_col``, ``data.item_col``)."""
    if not d.get("amount_col"):
        raise SettingError(f"data.amount_col={d.get('amount_col')!r}: expected the event log's money column (CLV and "
                           "the spend model are in money): set data.amount_col=<column>")
    if not d.get("item_col"):
        raise SettingError(f"data.item_col={d.get('item_col')!r}: expected the event log's item column (the "
                           "recommender learns from the items bought): set data.item_col=<column>")


def check_pipeline_settings(cfg: DictConfig) -> None:
    """Refuse a pipeline setting of the wrong type or out of range (``configs/pipeline.yaml``) before any
    data is read or written, in one line that names the setting, its value and what is accepted. A bad
    value used to stop with a traceback where it was first used, some (``segments.*``, ``value.*``,
    ``stages.*``, ``actions.*``) only after every model had trained.

    Raises:
        SettingError: e.g. ``horizon_days=0: expected a number of days > 0``.
        SchemaError: ``data.cutoff`` or ``data.customers_as_of`` that is not a date.
    """
    bad = bad_setting

    def one_of(key: str, value: Any, allowed: Sequence[str]) -> None:
        if value not in allowed:
            raise bad(key, value, f"{', '.join(allowed[:-1])} or {allowed[-1]}")

    def whole(key: str, value: Any, lo: int, what: str) -> None:
        if not (is_whole(value) and value >= lo):
            raise bad(key, value, f"a whole number of {what} >= {lo}")

    def number(key: str, value: Any, ok: Any, want: str) -> None:
        if not (is_number(value) and ok(value)):
            raise bad(key, value, want)

    def known(section: str, keys: Sequence[str]) -> DictConfig:
        node = cfg.get(section)
        if not isinstance(node, DictConfig):
            raise bad(section, node, f"its settings ({', '.join(keys)})")
        for k in node:
            if k not in keys:
                raise SettingError(f"{section}.{k}: not a setting of the pipeline; expected one of {', '.join(keys)}")
        return node

    seed = cfg.get("seed")
    if not is_whole(seed):
        raise bad("seed", seed, "a whole number")
    number("horizon_days", cfg.get("horizon_days"), lambda v: v > 0, "a number of days > 0")
    whole("n_last", cfg.get("n_last"), 1, "purchases")
    one_of("churn_sequence", cfg.get("churn_sequence"), SEQUENCE_ENCODERS)
    if not isinstance(cfg.get("tensorboard"), bool):
        raise bad("tensorboard", cfg.get("tensorboard"), "true or false")

    d = cfg.data
    one_of("data.kind", d.get("kind"), ("synthetic", "events"))
    if d.kind == "synthetic":
        whole("data.n_customers", d.get("n_customers"), 1, "customers")
        if float(cfg.horizon_days) != int(cfg.horizon_days):  # the generator's label window is whole days
            raise bad("horizon_days", cfg.horizon_days, "a whole number of days with data.kind=synthetic")
        if not is_whole(d.get("seed")):
            raise bad("data.seed", d.get("seed"), "a whole number")
        if d.get("generator") is not None and not isinstance(d.generator, DictConfig):
            raise bad("data.generator", d.generator, "settings of generate_customer_base(), e.g. "
                      "+data.generator.n_items=100")
    else:
        if not isinstance(d.get("path"), str) or not d.path:
            raise bad("data.path", d.get("path"), "the event log's file (.csv or .parquet)")
        _check_event_columns(d)
        one_of("data.future_policy", d.get("future_policy", "error"), ("error", "drop"))
        try:
            csv_options(_csv(d), path=d.path)
        except SchemaError as e:
            raise SettingError(e.detail) from None
        if date_format_problem(d.get("date_format")):
            raise bad("data.date_format", d.get("date_format"), DATE_FORMAT_EXPECTED)
        for key in ("cutoff", "customers_as_of"):
            if d.get(key):
                parse_cutoff(d[key], setting=f"data.{key}", date_format=d.get("date_format"))

    models = known("models", _MODELS)
    for name, extra in models.items():
        if extra is not None and not isinstance(extra, DictConfig):
            raise bad(f"models.{name}", extra, f"settings of the {name} sub-run (configs/train.yaml keys), e.g. "
                      f"models.{name}.trainer.max_epochs=5")
        if extra:  # a misspelt key or a bad value of the last sub-run used to stop the run after the others trained
            out = Path(str(cfg.paths.output_dir)) / name
            sub = _with_extra(name, compose_subrun(list(_SUBRUN_GROUPS[name]), out, str(cfg.paths.root_dir)), extra)
            try:
                check_settings(sub)
            except SettingError as e:
                raise SettingError(f"models.{name}.{e}") from None

    score = known("score", ("gap_samples", "question_samples"))
    whole("score.gap_samples", score.get("gap_samples"), 1, "samples")
    whole("score.question_samples", score.get("question_samples"), 1, "samples")

    seg = known("segments", ("k_min", "k_max", "criterion"))
    whole("segments.k_min", seg.get("k_min"), 2, "segments")
    if not (is_whole(seg.get("k_max")) and seg.k_max >= seg.k_min):
        raise bad("segments.k_max", seg.get("k_max"), f"a whole number of segments >= segments.k_min={seg.k_min}")
    one_of("segments.criterion", seg.get("criterion"), ("silhouette", "bic"))

    v = known("value", ("clv", "margin", "discount_rate", "period_days", "periods"))
    one_of("value.clv", v.get("clv"), ("learned", "formula"))
    number("value.margin", v.get("margin"), lambda x: 0 < x <= 1, "a share of spend in (0, 1]")
    number("value.discount_rate", v.get("discount_rate"), lambda x: x >= 0, "a rate per period >= 0")
    number("value.period_days", v.get("period_days"), lambda x: x > 0, "a number of days > 0")
    whole("value.periods", v.get("periods"), 1, "periods")

    for section, fn in (("stages", assign_stage), ("actions", rpt.suggest_actions)):
        params = [p.name for p in inspect.signature(fn).parameters.values() if p.kind is p.KEYWORD_ONLY]
        for key, value in known(section, params).items():
            if key.endswith("_days"):
                number(f"{section}.{key}", value, lambda x: x >= 0, "a number of days >= 0")
            else:  # a probability, a quantile or a share
                number(f"{section}.{key}", value, lambda x: 0 <= x <= 1, "a number in [0, 1]")


def check_views(inputs: dict[str, Any], train_frame: pd.DataFrame, horizon: float, d: DictConfig) -> None:
    """What the models need from the views and the log, checked before any of them trains: customers
    with history at the training cutoff, both churn outcomes, and at least two items."""
    ev, cutoff = inputs["events"], inputs["cutoff"]
    train_cut = cutoff - pd.Timedelta(days=horizon)
    span = (f"the log runs from {ev['timestamp'].min():%Y-%m-%d} to {ev['timestamp'].max():%Y-%m-%d}"
            if len(ev) else "the log has no events before the cutoff")
    # the settings that place the training cutoff, named as settings (not as a column of the log)
    if d.get("kind") == "synthetic":
        settings = f"the synthetic base's cutoff {cutoff:%Y-%m-%d}, horizon_days={horizon:g}"
    else:
        settings = (f"data.cutoff={cutoff:%Y-%m-%d}{'' if d.get('cutoff') else ' (the day after the last event)'}, "
                    f"horizon_days={horizon:g}")
    where = f"the training cutoff {train_cut:%Y-%m-%d} (the cutoff minus horizon_days)"
    if len(train_frame) == 0:
        move = "lower horizon_days" if d.get("kind") == "synthetic" else "move data.cutoff later or lower horizon_days"
        raise SchemaError(f"{settings}: no customer has a purchase before {where}; {span}: {move}",
                          source=inputs["name"])
    classes = train_frame["churn"].nunique()
    if classes < 2:
        what = "bought again" if int(train_frame["churn"].iloc[0]) == 0 else "made no purchase"
        raise SchemaError(f"{settings}: every customer {what} within the horizon after {where}, so churn has one "
                          f"class; {span}: choose a cutoff and horizon inside the log", source=inputs["name"])
    spend = train_frame["future_spend"] if "future_spend" in train_frame.columns else None
    if spend is not None and not bool((spend > 0).any()):  # the spend sub-run would refuse it, after the others
        raise SchemaError(f"{settings}: no customer spent more than 0 within the horizon after {where}; {span}: CLV "
                          "and the spend model need amounts above 0 (check the money column)", source=inputs["name"],
                          column=str(d.get("amount_col") or "amount"))
    items = ev["item_id"].dropna().nunique() if "item_id" in ev.columns else 0
    if items < 2:
        raise SchemaError(f"the recommender needs at least 2 distinct items; the log has {items}",
                          source=inputs["name"], column=str(d.get("item_col") or "item_id"))


# ----------------------------------------------------------------------------- step 2-3
_LABEL_LIKE = {"churn", "churned", "is_churn", "churn_flag", "exited", "attrition", "attrited", "cancelled",
               "canceled", "target", "label", "future_spend", "future_n_tx"}


def clean_customers(customers: pd.DataFrame | None, source: str, date_format: str | None = None
                    ) -> pd.DataFrame | None:
    """The customer table cleaned by the table rules; ``source`` (its file) is named in errors;
    ``date_format`` (``data.date_format``): how its text dates are written when not in ISO 8601."""
    if customers is None:
        return None
    leaky = [c for c in customers.columns if str(c).strip().lower().replace(" ", "_") in _LABEL_LIKE]
    if leaky:  # a status exported today is in the future of the training cutoff
        log.warning("%s: column(s) %s look like a churn label; if they were recorded after the training cutoff they "
                    "leak the outcome into the churn model: drop them from the table (data.customers_drop=[%s])",
                    source, leaky, ",".join(map(str, leaky)))
    try:
        schema = infer_schema(customers, id_col="customer_id", source=source, date_format=date_format,
                              roles_setting=None)  # the pipeline has no roles setting for its table
    except SchemaError as e:  # "drop it (data.drop=...)": the pipeline's key for the table is another
        raise SchemaError(e.detail.replace("data.drop=", "data.customers_drop="), source=e.source, column=e.column,
                          row=e.row) from None
    # its ids' letter case is looked at with the event log's, where the view is built
    clean, report = clean_table(customers, schema, source=source, check_id_case=False)
    _say(report.summary())
    return clean


def _view_kwargs(inputs: dict[str, Any]) -> dict[str, Any]:
    extra: dict[str, Any] = {"events_source": inputs.get("name"), "customers_source": inputs.get("customers_source"),
                             "customers_joined_col": inputs.get("customers_joined_col"),
                             "date_format": inputs.get("date_format")}
    items = inputs.get("items")
    if items is not None and {"item_id", "category"} <= set(items.columns):  # purchase shares per category
        extra.update(item_categories=items.set_index("item_id")["category"], category_shares=True)
    return extra


class CustomerViews:
    """The customer views of one pipeline run's inputs (its events, cleaned customer table, horizon,
    ``n_last`` and view options), each built once per cutoff and reused.

    The training view (labelled) and the profile view are the same view at cutoff − horizon with
    one difference: the table's customers without an event before it, which the profile view keeps
    and the training view leaves out when the table is of a later date (``customers_as_of``). So the
    view is built with every customer of the table, and :meth:`at` takes those rows out where
    ``build_customer_view(..., customers_as_of=...)`` would have left them out; the rows it keeps are
    the same values (each customer's features come from that customer's events only).
    """

    def __init__(self, inputs: dict[str, Any], customers: pd.DataFrame | None, horizon: float, n_last: int) -> None:
        self.inputs, self.customers, self.horizon, self.n_last = inputs, customers, float(horizon), int(n_last)
        self._events, self._items = inputs["events"], inputs.get("items")
        self._built: dict[pd.Timestamp, CustomerView] = {}

    def serves(self, inputs: dict[str, Any], customers: pd.DataFrame | None, horizon: float, n_last: int) -> bool:
        """Whether these views are of the same inputs (the same frames, horizon, ``n_last`` and options)."""
        return (inputs["events"] is self._events and inputs.get("items") is self._items and customers is self.customers
                and (float(horizon), int(n_last)) == (self.horizon, self.n_last)
                and all(inputs.get(k) == self.inputs.get(k)
                        for k in ("customers_source", "customers_joined_col", "date_format")))

    def at(self, cut: pd.Timestamp, customers_as_of: Any = None) -> CustomerView:
        """``build_customer_view(events, cut, customers_as_of=customers_as_of, ...)``, from the view at
        ``cut`` built on the first request for it."""
        view = self._built.get(cut)
        if view is None:
            # the id warnings read every event whatever the cutoff: given by the first view only
            view = self._built[cut] = build_customer_view(self._events, cut, horizon_days=self.horizon,
                                                          customers=self.customers, n_last=self.n_last,
                                                          warn_ids=not self._built, **_view_kwargs(self.inputs))
        if self.customers is None or customers_as_of is None or (
                parse_cutoff(customers_as_of, setting="customers_as_of") <= parse_cutoff(cut, setting="cutoff")):
            return view  # the table is current at the cutoff: every customer of it is in the view
        return _without_later_customers(view, self.inputs.get("customers_joined_col"), customers_as_of)


def _without_later_customers(view: CustomerView, joined_col: str | None, customers_as_of: Any) -> CustomerView:
    """``view`` (built with the customer table current at its cutoff) less the table's customers that
    ``build_customer_view`` leaves out when the table is of the later date ``customers_as_of``: those
    without an event before the cutoff, unless their join date (``joined_col``) says they existed."""
    f = view.features
    # an event before the cutoff: a purchase (frequency) or a refund alone (a negative net total)
    had_event = (f["frequency"].to_numpy() > 0) | (f["monetary_total"].to_numpy() < 0)
    keep = had_event | (f[f"{joined_col}_days"].notna().to_numpy() if joined_col else False)
    if keep.all():
        return view
    log.info("%s: %d of the customers have no event before the cutoff %s; left out of the view (the table is of "
             "%s)", view.customers_source, int((~keep).sum()), view.cutoff, customers_as_of)
    return dataclasses.replace(view, features=f.loc[keep], labels=view.labels.loc[keep],
                               sequences={k: v[keep] for k, v in view.sequences.items()})


def _views_for(views: CustomerViews | None, inputs: dict[str, Any], customers: pd.DataFrame | None, horizon: float,
               n_last: int) -> CustomerViews:
    """``views`` when it serves these inputs, else views of their own."""
    if views is not None and views.serves(inputs, customers, horizon, n_last):
        return views
    return CustomerViews(inputs, customers, horizon, n_last)


def profile_view(inputs: dict[str, Any], customers: pd.DataFrame | None, horizon: float, n_last: int,
                 columns: Sequence[str], views: CustomerViews | None = None) -> pd.DataFrame:
    """What the unsupervised VAE learns from: the view at cutoff − horizon with ``columns`` (the
    training view's features), for every customer of the table too. The labelled training view
    leaves out the table's customers without a purchase by then (some joined later); the score view
    holds such customers (those who never bought), so the VAE must know their kind of profile. No
    labels, so nothing of the label window reaches it. ``views``: those of :func:`build_views`, whose
    view at cutoff − horizon this is (built once for both)."""
    views = _views_for(views, inputs, customers, horizon, n_last)
    pv = views.at(inputs["cutoff"] - pd.Timedelta(days=horizon))
    return view_to_frame(pv, None, 0, min_step_customers=10).reindex(columns=list(columns))


def build_views(inputs: dict[str, Any], customers: pd.DataFrame | None, horizon: float, n_last: int,
                sequence_length: int = 0, views: CustomerViews | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train view at cutoff − horizon with its labels, score view at the cutoff).

    With ``sequence_length`` > 0 both also hold the last purchases as ``seq{k}_*`` columns
    (the steps fewer than 10 customers reach are left out, as in ``data=events``). ``views``: the
    run's :class:`CustomerViews`, so that :func:`profile_view` reuses the view at cutoff − horizon.
    """
    views = _views_for(views, inputs, customers, horizon, n_last)
    cutoff = inputs["cutoff"]
    train_cut = cutoff - pd.Timedelta(days=horizon)
    # the customer table is current at the scoring cutoff (or data.customers_as_of): in the training
    # view its customers without an event before train_cut are left out (some joined after it)
    as_of = inputs.get("customers_as_of", cutoff)
    tv = views.at(train_cut, customers_as_of=as_of)
    sv = views.at(cutoff, customers_as_of=as_of)
    train_frame = view_to_frame(tv, None, sequence_length, min_step_customers=10)
    for col in ("churn", "future_spend"):
        train_frame[col] = tv.labels[col].to_numpy()
    score_frame = view_to_frame(sv, None, sequence_length, min_step_customers=10)
    # the same feature columns in both views (a derived feature can be empty in one of them)
    shared = [c for c in train_frame.columns if c in score_frame.columns or c in ("churn", "future_spend")]
    return train_frame[shared], score_frame[[c for c in shared if c not in ("churn", "future_spend")]]


# ----------------------------------------------------------------------------- sub-runs
def compose_subrun(overrides: Sequence[str], output_dir: Path, root_dir: str) -> DictConfig:
    """Compose ``train.yaml`` with ``overrides`` for one model, writing into ``output_dir``."""
    def _compose() -> DictConfig:
        return compose("train.yaml", overrides=list(overrides))

    if GlobalHydra.instance().is_initialized():
        cfg = _compose()
    else:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = _compose()
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.root_dir = root_dir
        cfg.paths.log_dir = str(output_dir.parent)
        cfg.paths.data_dir = str(output_dir.parent / "data")
    return cfg


# the config groups of each sub-run (run_pipeline adds the paths and columns)
_SUBRUN_GROUPS = {"vae": ("model=infogap_vae", "data=parquet"), "churn": ("model=churn", "data=parquet"),
                  "recommender": ("model=recommender", "data=interactions"), "spend": ("model=spend", "data=parquet")}


def _open_maps(node: DictConfig) -> None:
    """Let the empty maps of a sub-run config take new keys, as ``+key=...`` does on the command line:
    ``data.roles: {}`` is filled with ``+models.churn.data.roles.categorical=[region]`` (refused as a
    misspelt key when the merge held every node to the keys it has)."""
    for key in node:
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_none() and not child._is_missing():
            if len(child) == 0:
                OmegaConf.set_struct(child, False)
            else:
                _open_maps(child)


def _groups_given_one_value(name: str, cfg: DictConfig, extra: DictConfig, prefix: str = "") -> None:
    """Refuse a value that would replace a group of settings of the sub-run (``+models.churn.logger=csv``:
    the merge made ``logger`` the text ``csv`` and the sub-run stopped with a traceback after the models
    before it had trained); ``null`` (turn it off) is a value such a group takes."""
    for key in extra:
        have = cfg._get_node(key) if key in cfg else None
        value = extra._get_node(key)
        if not isinstance(have, DictConfig) or have._is_none() or value._is_none():
            continue
        if isinstance(value, DictConfig):
            if not value._is_none() and not value._is_missing():
                _groups_given_one_value(name, have, value, f"{prefix}{key}.")
            continue
        shown = OmegaConf.to_container(value) if isinstance(value, ListConfig) else value._value()
        raise SettingError(f"models.{name}.{prefix}{key}={shown!r}: {prefix}{key} is a group of settings of the {name} "
                           "sub-run, not one value (a config-group choice such as logger=csv cannot be made per "
                           f"model): set its keys, e.g. models.{name}.{prefix}{key}.<key>=..., or null to turn it off")


def _with_extra(name: str, cfg: DictConfig, extra: DictConfig | None) -> DictConfig:
    """The sub-run config ``cfg`` with ``models.<name>`` merged in; a key it does not have is named."""
    if not extra:
        return cfg
    _groups_given_one_value(name, cfg, extra)
    _open_maps(cfg)
    try:
        return OmegaConf.merge(cfg, extra)
    except ConfigKeyError as e:
        raise SettingError(f"models.{name}.{e.full_key}={OmegaConf.select(extra, e.full_key)!r}: "
                           f"{e.full_key} is not a setting of the {name} sub-run (configs/train.yaml and its "
                           "groups); check the spelling") from None


def run_model(name: str, base: Sequence[str], extra: DictConfig | None, out: Path, root_dir: str, seed: int
              ) -> tuple[dict, Any]:
    """Train one model with :func:`train` into ``out/name`` and return (metrics, best model).

    ``extra`` is merged into the composed sub-run config (e.g. ``{trainer: {max_epochs: 5}}``).
    """
    t0 = time.time()
    cfg = _with_extra(name, compose_subrun([*base, f"task_name={name}", f"seed={seed}"], out / name, root_dir),
                      extra)
    metrics, objects = train(cfg, allow_relaunch=False)  # strategy=ddp would re-run the whole pipeline
    model = objects["model"]
    best = metrics.get("best_ckpt")
    if best:
        model = type(model).load_from_checkpoint(best)
    model.eval()
    _say(f"{name}: trained in {time.time() - t0:.0f}s; {_fmt(metrics)}")
    return metrics, model


def _fmt(m: dict[str, Any]) -> str:
    """The test metrics of a sub-run (those without a value, e.g. imputation accuracy without a categorical
    column, left out as clm-train's summary does)."""
    return ", ".join(f"{k}={v:.4f}" for k, v in sorted(m.items())
                     if k.startswith("test/") and isinstance(v, float) and math.isfinite(v))


# ----------------------------------------------------------------------------- the pipeline
def json_headline(headline: dict[str, Any]) -> dict[str, Any]:
    """The headline as metrics.json holds it: NumPy numbers as Python ones, counts kept whole (8 segments,
    not 8.0), booleans as booleans."""
    def plain(v: Any) -> Any:
        if isinstance(v, (bool, np.bool_)):
            return bool(v)
        if isinstance(v, (int, np.integer)):
            return int(v)
        if isinstance(v, (float, np.floating)):
            return float(v)
        return v
    return {k: plain(v) for k, v in headline.items()}


def run_pipeline(cfg: DictConfig) -> dict[str, Any]:
    """Run every step and write the run directory; returns the headline metrics."""
    check_pipeline_settings(cfg)  # before any data is read or written (a bad value used to end after training)
    out = Path(cfg.paths.output_dir)
    check_run_dir(out, resuming=False, can_resume=False)  # before data/ and plots/ of an earlier run are written over
    root = str(cfg.paths.root_dir)
    t_start = time.time()
    _say(f"run directory: {out}")

    # 1. load
    inputs = load_inputs(cfg)
    ev = inputs["events"]
    _say(f"1/10 loaded {inputs['name']}: {len(ev):,} events of {ev['customer_id'].nunique():,} customers "
         f"before the cutoff {inputs['cutoff'].date()}")
    # 2. clean
    customers = clean_customers(inputs["customers"], inputs["customers_source"], inputs.get("date_format"))
    # 3. features at the cutoff
    horizon = float(cfg.horizon_days)
    seq_kind = str(cfg.get("churn_sequence", "none"))  # checked by check_pipeline_settings
    views = CustomerViews(inputs, customers, horizon, int(cfg.n_last))  # the view at cutoff - horizon built once
    train_frame, score_frame = build_views(inputs, customers, horizon, int(cfg.n_last),
                                           int(cfg.n_last) if seq_kind != "none" else 0, views=views)
    check_views(inputs, train_frame, horizon, cfg.data)
    # the purchase-sequence columns feed only the churn model's sequence encoder
    seq_cols = [c for c in train_frame.columns if parse_sequence_column(c) is not None]
    profile_frame = profile_view(inputs, customers, horizon, int(cfg.n_last),
                                 [c for c in train_frame.columns if c not in ("churn", "future_spend", *seq_cols)],
                                 views=views)
    # the stage rules' and run rate's inputs of the score view (step 9), kept before the views are dropped
    score_feats = views.at(inputs["cutoff"], customers_as_of=inputs.get("customers_as_of", inputs["cutoff"])).features
    score_feats = score_feats[[c for c in (*STAGE_INPUTS, "monetary_total") if c in score_feats.columns]]
    del views  # the views' memory is not needed while the models train
    (out / "data").mkdir(parents=True, exist_ok=True)
    (out / "plots").mkdir(exist_ok=True)
    paths = {k: out / "data" / f"{k}.parquet" for k in ("train_view", "profile_view", "score_view", "interactions")}
    train_frame.to_parquet(paths["train_view"], index=False)
    profile_frame.to_parquet(paths["profile_view"], index=False)
    score_frame.to_parquet(paths["score_view"], index=False)
    ev[["customer_id", "item_id", "timestamp"]].dropna().to_parquet(paths["interactions"], index=False)
    if customers is not None:
        customers.to_parquet(out / "data" / "customers_clean.parquet", index=False)
    _say(f"3/10 customer views: train at {inputs['cutoff'] - pd.Timedelta(days=horizon):%Y-%m-%d} "
         f"({len(train_frame):,} customers, churn rate {train_frame['churn'].mean():.3f}); "
         f"score at {inputs['cutoff']:%Y-%m-%d} ({len(score_frame):,} customers)")

    # the views' ids were checked when they were built (step 3): the sub-runs do not warn again
    table = ["data=parquet", "data.id_col=customer_id", "data.clean.check_id_case=false",
             "~logger" if not cfg.tensorboard else "logger=tensorboard"]
    if inputs.get("date_format"):  # the table's dates in the views: read as dates there too, not as categories
        table.append(f"data.date_format='{inputs['date_format']}'")
    # 4. VAE (unsupervised: no labels) on every customer known at the training cutoff
    vae_m, vae = run_model("vae", ["model=infogap_vae", *table, f"data.path={paths['profile_view']}"],
                           cfg.models.get('vae'), out, root, int(cfg.seed))
    # 5. churn with the VAE's features
    churn_m, churn = run_model("churn", ["model=churn", *table, f"data.path={paths['train_view']}",
                                         "data.target=churn", "data.drop=[future_spend]",
                                         *([f"model.sequence_encoder={seq_kind}"] if seq_cols else []),
                                         *_infogap_override(vae_m)], cfg.models.get('churn'), out, root, int(cfg.seed))
    # 6. recommender on the interaction log
    rec_m, rec = run_model("recommender", ["model=recommender", "data=interactions",
                                           f"data.path={paths['interactions']}", "data.user_col=customer_id",
                                           "data.item_col=item_id", "data.time_col=timestamp",
                                           "~logger" if not cfg.tensorboard else "logger=tensorboard"],
                           cfg.models.get('recommender'), out, root, int(cfg.seed))
    # 6b. learned spend (CLV b)
    spend_m, spend = run_model("spend", ["model=spend", *table, f"data.path={paths['train_view']}",
                                         "data.target=future_spend", "data.target_type=continuous",
                                         f"data.drop=[{','.join(['churn', *seq_cols])}]"], cfg.models.get('spend'), out, root, int(cfg.seed))

    # 7. score every customer at the cutoff
    _say("7/10 scoring every customer")
    sf = score_frame
    p_churn = churn.predict_proba(sf)
    gap = vae.information_gap(sf, n_samples=int(cfg.score.gap_samples))
    # only what one can ask a customer: the customer table's columns (not the features of the event log)
    askable = [c for c in (customers.columns if customers is not None else []) if c in vae.encoder.feature_columns]
    nbq = vae.next_best_question(sf, k=1, n_samples=int(cfg.score.question_samples), askable=askable)
    latents = vae.encode(sf)
    recs = [[str(i) for i in r if i is not None] for r in rec.recommend(sf["customer_id"].tolist(), k=5)]
    spend_pred = spend.predict_spend(sf)

    # 8. segment on the latent profiles
    sel = choose_k(latents, range(int(cfg.segments.k_min), int(cfg.segments.k_max) + 1),
                   criterion=str(cfg.segments.criterion), seed=int(cfg.seed))
    segments = sel.result.labels.numpy()
    _say(f"8/10 segments: k={sel.k} by {cfg.segments.criterion}")

    # 9. value: CLV (a) formula with survival from churn, (b) learned spend; stages
    v = cfg.value
    period_days = float(v.period_days)
    p_period = per_period_churn_prob(p_churn, horizon / period_days)
    surv = survival_from_churn_prob(p_period, int(v.periods))
    sf_all = stage_frame(sf, score_feats)
    spend_rate = run_rate_clv(sf_all, period_days).to_numpy()  # past spend per period
    clv_formula_v = clv_formula(float(v.margin) * spend_rate[:, None] * np.ones((1, int(v.periods))), surv,
                                float(v.discount_rate))
    clv_learned_v = clv_learned(spend_pred, margin=float(v.margin), horizon_days=horizon, period_days=period_days,
                                periods=int(v.periods), discount_rate=float(v.discount_rate))
    stages = assign_stage(sf_all, p_churn, **OmegaConf.to_container(cfg.stages, resolve=True))

    customers_out = pd.DataFrame({
        "customer_id": sf["customer_id"].to_numpy(),
        "segment": segments,
        "stage": stages.to_numpy(),
        "churn_probability": p_churn,
        "clv": {"learned": clv_learned_v, "formula": clv_formula_v}[str(v.clv)],
        "clv_formula": clv_formula_v,
        "clv_learned": clv_learned_v,
        "expected_spend_horizon": spend_pred,
        "gap_score": gap["gap_score"].to_numpy(),
        "completeness": gap["completeness"].to_numpy(),
        "most_surprising_feature": gap["max_surprise_feature"].to_numpy(),
        "next_best_question": nbq["question_1"].to_numpy(),
        "next_best_question_gain": nbq["gain_1"].to_numpy(),
        "top5_items": [rpt.TOP_ITEMS_SEP.join(r) for r in recs],
        "recency_days": sf["recency_days"].to_numpy() if "recency_days" in sf else np.nan,
    })
    actions = rpt.suggest_actions(customers_out, **OmegaConf.to_container(cfg.actions, resolve=True))
    customers_out = pd.concat([customers_out, actions], axis=1)

    # 10. report
    seg_table = segment_summary(
        customers_out.assign(top_items=recs,
                             gap=customers_out["most_surprising_feature"]),
        numeric_cols=("churn_probability", "clv", "gap_score", "completeness"),
        category_cols=("stage", "gap", "next_best_question", "action"), list_cols=("top_items",))
    write_csv_safe(customers_out, out / "customers.csv")
    write_csv_safe(seg_table, out / "segments.csv")
    cohorts = cohort_retention(ev, end=inputs["cutoff"])  # the log is observed up to the cutoff
    rpt.plot_latent_map(latents, segments, out / "plots" / "latent_map.png")
    rpt.plot_clv_by_segment(customers_out, out / "plots" / "clv_by_segment.png")
    rpt.plot_cohorts(cohorts, out / "plots" / "cohort_retention.png")
    rpt.plot_top_gaps(gap, out / "plots" / "top_gaps.png")
    churn_preds = read_predictions(out / "churn" / "predictions" / "test.csv")
    rpt.plot_churn(churn_preds["prediction"].to_numpy(), churn_preds["label"].to_numpy(),
                   out / "plots" / "churn_calibration_gain.png")

    headline: dict[str, Any] = {
        "customers scored": len(customers_out),
        "segments (k)": sel.k,
        "churn test AUROC (train view)": churn_m.get("test/auroc"),
        "churn test log loss (train view)": churn_m.get("test/log_loss"),
        "VAE val loss": vae_m.get("val/loss"),
        "recommender test NDCG@10": rec_m.get("test/ndcg@10"),
        "recommender test Recall@20": rec_m.get("test/recall@20"),
        "spend test Spearman": spend_m.get("test/spearman"),
        "mean churn probability": float(np.mean(p_churn)),
        "mean CLV": float(np.mean(customers_out["clv"])),
    }
    membership_note = ""
    train_cut = inputs["cutoff"] - pd.Timedelta(days=horizon)
    if customers is not None and inputs.get("customers_as_of", inputs["cutoff"]) > train_cut:
        by_group = membership_aurocs(churn_preds, customers["customer_id"])
        headline.update(by_group)
        if by_group:
            membership_note = MEMBERSHIP_NOTE
            _say("churn test AUROC within groups (the table is of a later date than the training view; see "
                 "summary.md): " + ", ".join(f"{k.removeprefix('churn test AUROC, ')} {v:.3f}"
                                             for k, v in by_group.items()))
    truth_text = "No ground truth for this data."
    if inputs["truth"] is not None:
        truth = truth_check(customers_out, inputs["truth"], run_rate_clv(sf, horizon).to_numpy(), inputs["cutoff"])
        headline.update({f"truth: {k}": v for k, v in truth.items()})
        truth_text = "\n".join(f"- {k}: {v:.4f}" for k, v in truth.items())
        _say("truth check: " + ", ".join(f"{k}={v:.3f}" for k, v in truth.items()))
    headline["wall time (s)"] = round(time.time() - t_start, 1)
    sections = {
        **({"A table of a later date than the training cutoff": membership_note} if membership_note else {}),
        "Checked against the ground truth": truth_text,
        "Stages": customers_out["stage"].value_counts().to_frame("customers").to_markdown()
        if _has_tabulate() else customers_out["stage"].value_counts().to_string(),
        "Actions": customers_out["action"].value_counts().to_string(),
        "Segments": seg_table.to_string(index=False),
        "Files": "customers.csv, segments.csv, plots/*.png, and one sub-run per model (vae/, churn/, "
                 "recommender/, spend/) with checkpoints/ and tensorboard/.",
    }
    rpt.write_summary(out / "summary.md", headline, sections)
    write_json(json_headline(headline), out / "metrics.json")
    _say(f"10/10 report: {out / 'summary.md'}, customers.csv ({len(customers_out):,} rows), segments.csv, plots/")
    _say(f"done in {time.time() - t_start:.0f}s; compare sub-runs: tensorboard --logdir {out}")
    return headline


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


def _infogap_override(vae_metrics: dict[str, Any]) -> list[str]:
    """Use the VAE in the churn model when the model supports it (``model.infogap_ckpt``)."""
    import inspect

    from clm_torch.models.churn import ChurnClassifier

    if "infogap_ckpt" in inspect.signature(ChurnClassifier.__init__).parameters and vae_metrics.get("best_ckpt"):
        return [f"model.infogap_ckpt={vae_metrics['best_ckpt']}"]
    return []


def truth_check(customers: pd.DataFrame, truth: pd.DataFrame, run_rate: np.ndarray, cutoff: pd.Timestamp
                ) -> dict[str, float]:
    """Segment ARI, churn AUC against true churn, CLV rank correlation with true future spend."""
    import torch
    from torchmetrics.functional.classification import binary_auroc

    t = truth.reindex(customers["customer_id"])
    ok = t["segment"].notna().to_numpy()
    seg_true = t["segment"].to_numpy()[ok].astype(int)
    out = {"segment ARI": adjusted_rand(seg_true, customers["segment"].to_numpy()[ok])}
    p = torch.tensor(customers["churn_probability"].to_numpy()[ok])
    # the pipeline's label: no purchase in [cutoff, cutoff + horizon), for every customer in the view
    no_purchase = (t["future_n_tx"].to_numpy()[ok] == 0).astype(int)
    if 0 < no_purchase.mean() < 1:
        out["churn AUROC vs true no-purchase in horizon"] = float(binary_auroc(p, torch.tensor(no_purchase)))
    # the hazard process: churn within the horizon, among customers still active at the cutoff
    active = (t["churn_time"].isna() | (t["churn_time"] >= cutoff)).to_numpy()[ok]
    churned = t["churned"].to_numpy()[ok].astype(bool)
    if active.any() and 0 < churned[active].mean() < 1:
        out["churn AUROC vs true churn (active at cutoff)"] = float(
            binary_auroc(p[torch.from_numpy(active)], torch.tensor(churned[active].astype(int))))
    fs = t["future_spend"].to_numpy()[ok].astype(float)
    for name, col in (("CLV (learned)", "clv_learned"), ("CLV (formula)", "clv_formula")):
        out[f"{name} Spearman vs true future spend"] = spearman(customers[col].to_numpy()[ok], fs)
        out[f"{name} top-20% spend capture"] = spend_capture(customers[col].to_numpy()[ok], fs)
    out["run-rate baseline Spearman vs true future spend"] = spearman(run_rate[ok], fs)
    out["run-rate baseline top-20% spend capture"] = spend_capture(run_rate[ok], fs)
    return out


def stage_frame(frame: pd.DataFrame, view_features: pd.DataFrame) -> pd.DataFrame:
    """The score ``frame`` (the models' columns) with the stage rules' and the run rate's inputs taken
    from the score view's own ``view_features`` where the frame lacks them: the model frames keep only
    the columns the training view has too, so ``last_gap_days`` is left out when nobody had bought
    twice before cutoff − horizon, though customers have a last gap at the cutoff (``won_back``
    needs it). NaN for a feature the view lacks too."""
    if len(view_features) != len(frame) or not np.array_equal(view_features.index.astype(str),
                                                             frame["customer_id"].astype(str)):
        raise RuntimeError("the score view and its model frame list different customers")  # a bug, not bad input
    return frame.assign(**{c: (view_features[c].to_numpy() if c in view_features.columns else np.nan)
                           for c in (*STAGE_INPUTS, "monetary_total") if c not in frame.columns})


MEMBERSHIP_NOTE = (
    "The customer table is of a later date than the training view (cutoff - horizon): whom it lacks tells, in "
    "part, who left during the label window, and the churn model learns that from the log-only customers' missing "
    "table columns. The test AUROC of the training view is then optimistic; the AUROC within each group above is "
    "what the model reads from the customers' own data. A table of cutoff - horizon (data.customers_as_of) or join "
    "dates (data.customers_joined_col) avoid it; on synthetic data, the truth check 'active at cutoff' is the "
    "honest measure.")


def read_predictions(path: Path) -> pd.DataFrame:
    """A sub-run's ``predictions/<split>.csv`` with its ids as text: '000009' stays itself, to be found
    among the customer table's ids (:func:`membership_aurocs`); read as a number it became 9."""
    return pd.read_csv(path, dtype={"customer_id": str})


def membership_aurocs(preds: pd.DataFrame, table_ids: pd.Series) -> dict[str, float]:
    """The churn test AUROC within the customers of the table and within the log-only customers (each
    when it holds both classes), from a churn sub-run's ``predictions/test.csv`` frame (``customer_id``,
    ``label``, ``prediction``). Ids compare as text: read the CSV with ``dtype={"customer_id": str}``,
    or '000009' becomes 9 and is no longer found among the table's ids."""
    import torch
    from torchmetrics.functional.classification import binary_auroc

    in_table = preds["customer_id"].astype(str).isin(set(table_ids.astype(str))).to_numpy()
    out = {}
    for name, rows in (("customers of the table", in_table), ("log-only customers", ~in_table)):
        y = preds["label"].to_numpy()[rows].astype(int)
        if rows.sum() >= 10 and 0 < y.mean() < 1:
            out[f"churn test AUROC, {name}"] = float(binary_auroc(
                torch.tensor(preds["prediction"].to_numpy()[rows], dtype=torch.float32), torch.tensor(y)))
    return out


def adjusted_rand(a: np.ndarray, b: np.ndarray) -> float:
    """Adjusted Rand index of two labelings (n,) (Hubert & Arabie 1985)."""
    a = pd.factorize(a)[0]
    b = pd.factorize(b)[0]
    n = len(a)
    table = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(table, (a, b), 1)
    comb = lambda x: x * (x - 1) / 2  # noqa: E731
    sum_ij = comb(table).sum()
    sum_a, sum_b = comb(table.sum(1)).sum(), comb(table.sum(0)).sum()
    expected = sum_a * sum_b / comb(n)
    max_index = (sum_a + sum_b) / 2
    return float((sum_ij - expected) / (max_index - expected)) if max_index != expected else 1.0


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="pipeline.yaml")
def main(cfg: DictConfig) -> None:
    run_cli(run_pipeline, cfg)


if __name__ == "__main__":
    main()
