"""``clm-evaluate``: score a trained checkpoint on new data; metrics when the data has labels.

    clm-evaluate ckpt_path=logs/churn_telco/runs/<stamp>/checkpoints/best.ckpt data=telco
    clm-evaluate ckpt_path=logs/churn_telco/runs/<stamp> data=csv data.path=new.csv data.target=churn
    clm-evaluate ckpt_path=... data=csv data.path=to_score.csv          # no target: predictions only

The model class is read from the checkpoint (``clm_model_class``); the model scores the new rows
with its own fitted preprocessing from the checkpoint (nothing is refitted on the new data).
The evaluation directory (``logs/evaluate/runs/<timestamp>/`` by default) holds::

    metrics.json                 eval/* metrics (labels present) + row counts, checkpoint, data
    predictions/<name>.csv       one row per customer (or per user for a recommender)
    .hydra/config.yaml           the evaluation's config

How each model is evaluated:

* a model with ``evaluate_frame(frame, target=..., id_col=...) -> (predictions, metrics)`` → that;
* a binary classifier (``predict_proba``; the ChurnClassifier) on a table → churn probability per
  row; with labels: AUROC, AP, log loss, Brier, ECE;
* a spend model (``predict_spend``; the SpendRegressor) on a table → expected spend per row; with
  the target: MAE, RMSE;
* an imputation model (``impute`` + ``information_gap``; the InfoGapVAE) on a table → the
  information gap and latent mean per row; metrics from re-imputing a seeded ``hide_rate`` share
  of the observed cells (NRMSE, accuracy);
* a recommender (``recommend``) on an interaction log → top-k per user of the log (seen training
  items excluded) against the user's items in the log: Recall/NDCG/HitRate@k.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import re
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from clm_torch.data.cleaning import check_ids_present
from clm_torch.data.schema import SchemaError, level_keys, missing_cells, to_numeric_strict, validate_target
from clm_torch.lifecycle.report import TOP_ITEMS_SEP
from clm_torch.runs import load_model, read_config, resolve_checkpoint
from clm_torch.utils.io import CheckpointError, SettingError, write_csv_safe, write_json
from clm_torch.utils.progress import chunks

log = logging.getLogger(__name__)
CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")


@dataclasses.dataclass
class Evaluation:
    """What an evaluation produced: per-row ``predictions`` and ``metrics`` (``eval/*`` + counts)."""

    predictions: pd.DataFrame
    metrics: dict[str, Any]


# ---------------------------------------------------------------------------------------- models
@dataclasses.dataclass
class _Table:
    frame: pd.DataFrame          # the new rows, as loaded
    features: pd.DataFrame       # the same rows without target columns
    target: str | None           # the target column present in the rows, if any
    id_name: str                 # id column of the predictions ("row" when there is none)
    ids: np.ndarray


def _table(model: Any, data: Any) -> _Table:
    """Split a :class:`TableData` into features / target / ids, as the checkpoint's preprocessing sees it.

    The target is ``data.target``, else the model's training target when the rows have it; the id
    column is ``data.id_col``, else the training id column when the rows have it.
    """
    frame: pd.DataFrame = data.frame
    if len(frame) == 0:
        raise SchemaError("no rows to score", source=data.name)
    trained_target = getattr(getattr(model, "encoder", None), "target", None)
    target = data.target or (trained_target if trained_target in frame.columns else None)
    features = frame.drop(columns=[c for c in {target, trained_target} if c and c in frame.columns])
    trained_id = (getattr(model, "preprocessing", None) or {}).get("schema", {}).get("id_col")
    id_name = next((c for c in (data.id_col, trained_id) if c and c in frame.columns), "row")
    if id_name in frame.columns:
        check_ids_present(frame[id_name], source=data.name, column=id_name)
        dup = frame[id_name].duplicated(keep="last").to_numpy()
        if dup.any():  # as training's cleaning does: one row per customer, the last one
            log.warning("%s: %d rows repeat the id of a later row (e.g. %r); each customer is scored once, from "
                        "its last row", data.name, int(dup.sum()), frame.loc[dup, id_name].iloc[0])
            frame, features = frame.loc[~dup], features.loc[~dup]
    ids = frame[id_name].to_numpy() if id_name in frame.columns else np.arange(len(frame))
    return _Table(frame, features, target, id_name, ids)


def _scored_table(model: Any, data: Any, predict: Any, batch_size: int) -> tuple[_Table, np.ndarray]:
    """``data``'s rows as :func:`_table` splits them, and ``predict(rows, batch_size=, source=)`` of each
    (a model's ``predict_proba`` or ``predict_spend``): (n,) float64, scored ``batch_size`` rows at a time."""
    t = _table(model, data)
    features, encoder = t.features, getattr(model, "encoder", None)
    out = np.empty(len(features), dtype=np.float64)
    once = encoder.one_warning_each() if encoder is not None else contextlib.nullcontext()
    with once:  # the warnings about the frame once, not once per chunk
        for start, stop in chunks(len(features), batch_size, f"scoring {len(features):,} rows"):
            out[start:stop] = predict(features.iloc[start:stop], batch_size=batch_size, source=data.name)
    return t, out


def evaluate_binary(model: Any, data: Any, *, batch_size: int = 65536) -> Evaluation:
    """Churn probability (``predict_proba``) for every row of ``data`` (a :class:`TableData`);
    AUROC, AP, log loss, Brier and ECE on the labelled rows. Rows without a label are scored but
    left out of the metrics.
    """
    from clm_torch.callbacks import expected_calibration_error
    from clm_torch.models.churn import binary_metrics

    t, prob = _scored_table(model, data, model.predict_proba, batch_size)
    preds = pd.DataFrame({t.id_name: t.ids})
    metrics: dict[str, Any] = {"n_rows": len(t.frame)}
    if t.target is not None:
        # as training reads a label: an empty cell and a missing token ('?', 'NA', 'n/a', ...) are no label (the
        # row is scored, not measured); a token was read as a third class and the evaluation refused
        labelled = ~missing_cells(t.frame[t.target])
        y = np.full(len(t.frame), np.nan)
        if labelled.any():
            y_l, _ = validate_target(t.frame.loc[labelled, t.target], source=data.name, column=t.target,
                                     positive=getattr(model.encoder, "positive_label", None), require_both=False)
            y[labelled] = y_l
        preds["label"] = pd.array(np.where(labelled, y, 0).astype(int), dtype="Int64")
        preds.loc[~labelled, "label"] = pd.NA
        metrics.update({"target": t.target, "n_labelled": int(labelled.sum()),
                        "positive_rate": float(np.nanmean(y)) if labelled.any() else float("nan")})
        yl, pl = y[labelled], prob[labelled]
        if labelled.any() and len(np.unique(yl)) == 2:
            m = binary_metrics(torch.from_numpy(pl).float(), torch.from_numpy(yl).float())
            metrics.update({f"eval/{k}": float(v) for k, v in m.items()})
            metrics["eval/ece"] = expected_calibration_error(pl, yl)
        else:
            log.warning("%s: the labelled rows hold one class only; no metrics", data.name)
    preds["prediction"] = prob.astype(np.float32)
    return Evaluation(preds, metrics)


def evaluate_regression(model: Any, data: Any, *, batch_size: int = 65536) -> Evaluation:
    """Expected spend (``predict_spend``) for every row of ``data``; MAE, RMSE and the means of
    prediction and truth on the rows whose target is known."""
    t, pred = _scored_table(model, data, model.predict_spend, batch_size)
    preds = pd.DataFrame({t.id_name: t.ids})
    metrics: dict[str, Any] = {"n_rows": len(t.frame)}
    if t.target is not None:
        y = to_numeric_strict(t.frame[t.target], source=data.name, column=t.target).to_numpy(dtype=np.float64)
        known = ~np.isnan(y)
        preds["label"] = y
        metrics.update({"target": t.target, "n_labelled": int(known.sum())})
        if known.any():
            err = pred[known] - y[known]
            metrics.update({"eval/mae": float(np.abs(err).mean()), "eval/rmse": float(np.sqrt((err ** 2).mean())),
                            "eval/mean_prediction": float(pred[known].mean()),
                            "eval/mean_target": float(y[known].mean())})
    preds["prediction"] = pred
    return Evaluation(preds, metrics)


def evaluate_imputer(model: Any, data: Any, *, hide_rate: float = 0.2, seed: int = 0,
                     batch_size: int = 65536) -> Evaluation:
    """An imputation model (``impute`` + ``information_gap``; the InfoGapVAE) on new rows.

    Predictions: the information gap per customer (``gap_score``, ``completeness``,
    ``total_surprise``, ``max_surprise_feature``, ``missing_entropy``, ``n_observed``,
    ``n_missing``) and the latent mean ``z_*``.
    Metrics: hide ``hide_rate`` of the observed feature cells at random (seeded), impute them
    from the rest and score only those cells: NRMSE (RMSE / the column's std in these rows),
    averaged over numeric columns, and accuracy averaged over categorical columns.
    ``batch_size`` caps the rows of each chunk (the gap and imputation, which sample, use smaller
    chunks by default: 1024 and 8192 rows).
    """
    t = _table(model, data)
    enc = model.encoder
    features = t.features
    gap = model.information_gap(features, batch_size=min(batch_size, 1024), source=data.name)
    keep = ["gap_score", "completeness", "total_surprise", "max_surprise_feature", "missing_entropy",
            "n_observed", "n_missing"]  # information_gap's names (a misspelt one was dropped in silence)
    preds = pd.concat([pd.DataFrame({t.id_name: t.ids}, index=features.index), gap[keep]], axis=1)
    z = model.encode(features, batch_size=batch_size, source=data.name)
    for d in range(z.shape[1]):
        preds[f"z_{d}"] = z[:, d]
    rng = np.random.default_rng(seed)
    masked = features.copy()
    hidden: dict[str, np.ndarray] = {}
    for col in [*enc.num_columns, *enc.cat_columns]:
        # observed cells: not NaN nor a missing token ('n/a', '?') the model reads as missing
        h = ~missing_cells(features[col]) & (rng.random(len(features)) < hide_rate)
        if h.any():
            if col in enc.num_columns and not pd.api.types.is_float_dtype(masked[col]):  # text ('n/a', '$12'): as
                masked[col] = to_numeric_strict(masked[col], source=data.name, column=col)  # the model reads it
            elif not (pd.api.types.is_float_dtype(masked[col]) or pd.api.types.is_object_dtype(masked[col])):
                masked[col] = masked[col].astype(object)
            masked.loc[h, col] = np.nan
            hidden[col] = h
    metrics: dict[str, Any] = {"n_rows": len(features), "hide_rate": float(hide_rate), "seed": int(seed),
                               "n_hidden_cells": int(sum(h.sum() for h in hidden.values())),
                               "mean_gap_score": float(gap["gap_score"].mean()),
                               "mean_completeness": float(gap["completeness"].mean())}
    if hidden:
        imputed = model.impute(masked, batch_size=min(batch_size, 8192), seed=seed, source=data.name)
        nrmse, acc = [], []
        for col, h in hidden.items():
            if col in enc.num_columns:
                # as the model reads them: '$1,234.50' and '12%' are numbers (coerced, they were NaN and the
                # column's NRMSE NaN)
                truth = to_numeric_strict(features[col], source=data.name, column=col).to_numpy(dtype=np.float64)
                guess = pd.to_numeric(imputed[col], errors="coerce").to_numpy(dtype=np.float64)
                sd = np.nanstd(truth)
                if sd > 0:
                    nrmse.append(float(np.sqrt(np.mean((guess[h] - truth[h]) ** 2)) / sd))
            else:
                def norm(s: pd.Series) -> np.ndarray:
                    return level_keys(s).to_numpy(dtype=object)  # as the encoder matches levels

                acc.append(float(np.mean(norm(imputed[col])[h] == norm(features[col])[h])))
        metrics["eval/imputation_nrmse"] = float(np.mean(nrmse)) if nrmse else float("nan")
        metrics["eval/imputation_accuracy"] = float(np.mean(acc)) if acc else float("nan")
    return Evaluation(preds.reset_index(drop=True), metrics)


def evaluate_recommender(model: Any, data: Any, *, k: int = 10, batch_users: int = 4096) -> Evaluation:
    """Top-``k`` recommendations for every user of an interaction log (an :class:`InteractionData`),
    scored against the items that user has in the log: Recall/NDCG/HitRate@k averaged over users
    with at least one target. Users are ranked as :meth:`recommend` ranks them, with every
    interaction of the training log excluded (its test part included), so those items are not
    targets; nor are items unknown to the model. Ids are matched as ``recommend`` matches them
    (``7``, ``'7'`` and ``7.0`` are one id). Users without any target are listed in the
    predictions but not measured.
    """
    from clm_torch.metrics import per_user_metrics

    frame: pd.DataFrame = data.frame
    if len(frame) == 0:
        raise SchemaError("no interactions to evaluate", source=data.name)
    model._require_preprocessing()
    item_index = model.item_index
    users = pd.unique(frame["user"])
    item_pos = model._lookup(item_index, frame["item"].tolist())
    known = item_pos >= 0
    user_pos = pd.Index(users).get_indexer(frame["user"])
    in_vocab = model._lookup(model.user_index, list(users))  # position in the vocabulary without <unk>
    vocab_pos = np.where(in_vocab >= 0, in_vocab + 1, -1)[user_pos]  # -1 = unknown user
    # items a user already has in the training log are never recommended again (exclude_seen), so they
    # are not targets either: only new (user, item) pairs count
    indptr, seen_items, _ = (t.long().cpu().numpy() for t in model.history_csr(everything=True))
    seen_rows = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    seen_keys = seen_rows * len(item_index) + seen_items
    already = known & (vocab_pos >= 0) & np.isin(vocab_pos * len(item_index) + item_pos, seen_keys)
    known_new = known & ~already
    # the targets scored: new items the model knows (the log's other items are counted in the metrics' n_*)
    held = (pd.Series(frame["item"].astype(str).to_numpy()[known_new]).groupby(user_pos[known_new])
            .agg(TOP_ITEMS_SEP.join))
    k = int(min(k, len(item_index)))
    recs, parts = [], []
    for start, stop in chunks(len(users), batch_users, f"recommending for {len(users):,} users"):
        top_ids = model.recommend(list(users[start:stop]), k=k, exclude_seen=True)
        recs += [TOP_ITEMS_SEP.join(str(x) for x in row if x is not None) for row in top_ids]
        top_pos = torch.as_tensor(item_index.get_indexer(pd.Series(np.asarray(top_ids, dtype=object).ravel()))
                                  .reshape(len(top_ids), k))
        # (users, n_items + 1) bool: the last column pads empty top-k slots and is never a target
        targets = torch.zeros(stop - start, len(item_index) + 1, dtype=torch.bool)
        sel = known_new & (user_pos >= start) & (user_pos < stop)
        targets[torch.as_tensor(user_pos[sel] - start), torch.as_tensor(item_pos[sel])] = True
        top_pos = torch.where(top_pos < 0, len(item_index), top_pos)
        parts.append(per_user_metrics(top_pos, targets, [k]))
    if len(users) and (in_vocab < 0).all():
        log.warning("%s: none of its %d users is a user of the model's training log (e.g. %r; the model's look like "
                    "%r): every list is the fallback's (history encoder or popularity), not the model's; check that "
                    "the ids are written as in training", data.name, len(users), users[0],
                    model.user_index[0] if len(model.user_index) else None)
    metrics: dict[str, Any] = {"n_users": len(users), "n_interactions": len(frame),
                               "n_unknown_items": int((~known).sum()),
                               "n_already_seen": int(already.sum()),
                               "n_unknown_users": int((in_vocab < 0).sum())}
    for name in parts[0]:
        v = torch.cat([p[name] for p in parts])
        metrics["n_evaluated_users"] = int((~torch.isnan(v)).sum())
        metrics[f"eval/{name}"] = float(torch.nanmean(v)) if (~torch.isnan(v)).any() else float("nan")
    preds = pd.DataFrame({"user_id": users, "recommended": recs,
                          "held_out": held.reindex(range(len(users))).fillna("").to_numpy()})
    return Evaluation(preds, metrics)


def evaluate_model(model: Any, data: Any, *, batch_size: int = 65536, k: int = 10, hide_rate: float = 0.2,
                   seed: int = 0) -> Evaluation:
    """Evaluate ``model`` on loaded ``data`` (a ``TableData`` or ``InteractionData``); see the module docstring.

    Raises:
        CheckpointError: the model class has no way to be evaluated on this kind of data.
        SchemaError: bad rows; for a table of several files (data=parquet_shards) the error names the
            file and the row within it.
    """
    try:
        return _evaluate_model(model, data, batch_size=batch_size, k=k, hide_rate=hide_rate, seed=seed)
    except SchemaError as e:
        located = data.locate(e) if callable(getattr(data, "locate", None)) else e
        if located is e:
            raise
        raise located from None


def _evaluate_model(model: Any, data: Any, *, batch_size: int, k: int, hide_rate: float, seed: int) -> Evaluation:
    hook = getattr(model, "evaluate_frame", None)
    if callable(hook):
        preds, metrics = hook(data.frame, target=getattr(data, "target", None), id_col=getattr(data, "id_col", None))
        return Evaluation(preds, dict(metrics))
    is_interactions = {"user", "item"} <= set(data.frame.columns) and not hasattr(data, "target")
    if is_interactions and hasattr(model, "recommend"):
        return evaluate_recommender(model, data, k=k)
    if not is_interactions:
        if hasattr(model, "predict_proba"):
            return evaluate_binary(model, data, batch_size=batch_size)
        if hasattr(model, "predict_spend"):
            return evaluate_regression(model, data, batch_size=batch_size)
        if hasattr(model, "impute") and hasattr(model, "information_gap"):
            return evaluate_imputer(model, data, hide_rate=hide_rate, seed=seed, batch_size=batch_size)
    kind = "an interaction log" if is_interactions else "a customer table"
    raise CheckpointError(f"clm-evaluate cannot evaluate a {type(model).__name__} on {kind} ({data.name}); "
                          f"pick data that matches the model, or give the model an evaluate_frame() method")


# ---------------------------------------------------------------------------------------- task
def load_data(cfg_data: DictConfig) -> Any:
    """The raw data of a ``data=...`` config: its source's ``load()`` (no split, no fitting)."""
    try:
        if "source" in cfg_data:
            source = hydra.utils.instantiate(cfg_data.source, _convert_="partial")
        else:
            source = hydra.utils.instantiate(cfg_data, _convert_="partial").source
    except MissingMandatoryValue as e:
        raise SchemaError(f"data.{e.full_key.split('data.')[-1]} is required, e.g. data.path=<file>",
                          source="clm-evaluate") from None
    except hydra.errors.InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, (SchemaError, CheckpointError)):
            raise cause from None
        raise
    return source.load()


# the customer-view columns computed from the event log's money column (data.amount_col)
_MONEY_COLUMNS = ("monetary_mean", "monetary_total", "spend_per_30d", "future_spend")


def money_columns(model: Any) -> list[str]:
    """The model's inputs that a customer view computes from purchase amounts (``monetary_*``,
    ``spend_per_30d``, ``seq{k}_amount``)."""
    from clm_torch.data.events import parse_sequence_column

    columns = list(getattr(getattr(model, "encoder", None), "feature_columns", None) or [])
    return [c for c in columns if c in _MONEY_COLUMNS or (parse_sequence_column(c) or (None, None))[1] == "amount"]


def check_amount_col(cfg_data: DictConfig, model: Any, trained: DictConfig, ckpt: Path) -> None:
    """Refuse an event log read without ``data.amount_col`` for a model that learned from amounts.

    Without it the view has no money features, and scoring stopped on "required columns missing"
    (naming derived columns such as ``tenure_days``), which never named the setting to give.

    Raises:
        SettingError: names ``data.amount_col``, the training run's money column (from its
            ``.hydra/config.yaml``, when there) and the model's inputs computed from it.
    """
    if "amount_col" not in cfg_data or cfg_data.get("amount_col"):
        return  # not an event log, or its money column is given
    needs = money_columns(model)
    if not needs:
        return
    was = OmegaConf.select(trained, "data.amount_col", default=None)
    shown = ", ".join(needs[:4]) + (f" and {len(needs) - 4} more" if len(needs) > 4 else "")
    trained_with = f"data.amount_col={was}; " if was else ""
    raise SettingError(f"data.amount_col={cfg_data.get('amount_col')!r}: expected the event log's money column: the "
                       f"model {ckpt} was trained with purchase amounts ({trained_with}its inputs {shown} are computed "
                       f"from them): set data.amount_col={was or '<the money column>'}"
                       f"{' (or what that column is called in this log)' if was else ''}")


def predictions_name(cfg: DictConfig, data: Any) -> str:
    """``cfg.name``, else the data file's stem, else the ``data=`` choice."""
    name = cfg.get("name")
    if not name:
        p = Path(str(data.name))
        name = p.name.split(".")[0] if p.suffix and p.exists() else None
    if not name:
        try:
            from hydra.core.hydra_config import HydraConfig

            name = HydraConfig.get().runtime.choices.get("data")
        except ValueError:
            name = None
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name or "predictions")).strip("_.") or "predictions"


def check_evaluate_settings(cfg: DictConfig) -> None:
    """Refuse a ``batch_size``, ``k``, ``hide_rate`` or ``seed`` of the wrong type or out of range (with
    the key), a missing checkpoint and a missing ``data=``, before the run directory is made
    (``hide_rate=1.5`` hid every cell, ``batch_size=0`` was ignored, ``k=0`` failed deep in the
    recommender)."""
    from clm_torch.train import bad_setting, is_count, is_number, is_whole

    checks = {"batch_size": (is_count, "a whole number >= 1"), "k": (is_count, "a whole number >= 1"),
              "hide_rate": (lambda v: is_number(v) and 0 < v < 1, "a share in (0, 1)"),
              "seed": (is_whole, "a whole number")}
    for key, (ok, want) in checks.items():
        v = cfg.get(key)
        if v is not None and not ok(v):
            raise bad_setting(key, v, want)
    if cfg.get("ckpt_path") in (None, "", "???"):
        raise CheckpointError("no checkpoint: pass ckpt_path=<run dir or .ckpt file>")
    resolve_checkpoint(cfg.ckpt_path)  # there is one to load
    if cfg.get("data") is None:
        raise SchemaError("no data to evaluate on: pass data=<telco|synthetic|csv|...> "
                          "(e.g. data=csv data.path=new.csv data.target=churn)", source="clm-evaluate")


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Load ``cfg.ckpt_path``, score ``cfg.data``, write metrics.json and predictions/<name>.csv.

    Returns:
        the metrics (also written to ``<output_dir>/metrics.json``).
    """
    from clm_torch.train import check_run_dir

    check_evaluate_settings(cfg)
    output_dir = Path(cfg.paths.output_dir)
    check_run_dir(output_dir, resuming=False, can_resume=False)  # never over a training run's (or another evaluation's) files
    output_dir.mkdir(parents=True, exist_ok=True)
    print(f"[clm_torch] evaluation directory: {output_dir}", flush=True)
    ckpt = resolve_checkpoint(cfg.ckpt_path)
    trained = read_config(ckpt.parent.parent)
    model = load_model(ckpt, trained)
    check_amount_col(cfg.data, model, trained, ckpt)  # before the event log is read
    data = load_data(cfg.data)
    result = evaluate_model(model, data, batch_size=int(cfg.get("batch_size", 65536)), k=int(cfg.get("k", 10)),
                            hide_rate=float(cfg.get("hide_rate", 0.2)), seed=int(cfg.get("seed", 0)))
    pred_path = output_dir / "predictions" / f"{predictions_name(cfg, data)}.csv"
    write_csv_safe(result.predictions, pred_path)
    name = Path(str(data.name))
    # paths as absolute ones: metrics.json is read from other directories (notebooks, the pipeline)
    metrics = {**result.metrics, "ckpt_path": str(Path(ckpt).resolve()), "model_class": type(model).__name__,
               "data": str(name.resolve()) if name.exists() else str(data.name),
               "predictions": str(pred_path.resolve())}
    write_json(metrics, output_dir / "metrics.json")
    shown = {k: v for k, v in metrics.items() if k.startswith("eval/") and isinstance(v, float) and math.isfinite(v)}
    if shown:
        print("[clm_torch] metrics: " + ", ".join(f"{k}={v:.4f}" for k, v in sorted(shown.items())), flush=True)
    else:
        print(f"[clm_torch] {_no_metrics_reason(metrics)}", flush=True)
    print(f"[clm_torch] predictions ({len(result.predictions):,} rows): {pred_path}", flush=True)
    print(f"[clm_torch] metrics: {output_dir / 'metrics.json'}", flush=True)
    return metrics


def _no_metrics_reason(metrics: dict[str, Any]) -> str:
    """Why an evaluation has no metrics, from what it counted."""
    if "n_evaluated_users" in metrics or "n_already_seen" in metrics:
        n, seen = metrics.get("n_interactions", 0), metrics.get("n_already_seen", 0)
        if n and seen == n:
            return (f"all {n:,} interactions are in the model's training log (never recommended again): nothing "
                    "to measure; evaluate on interactions from after training. Predictions only")
        return ("no interaction of a known user with a catalogue item the user had not bought: nothing to measure; "
                "predictions only")
    if metrics.get("target") is not None:
        if metrics.get("n_labelled", 0) > 0:
            return f"the labelled rows of {metrics['target']!r} hold one class only: no metrics, predictions only"
        return f"no row has a label in {metrics['target']!r}: predictions only"
    return "no labels in the data: predictions only"


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="evaluate.yaml")
def main(cfg: DictConfig) -> None:
    from clm_torch.train import run_cli

    run_cli(evaluate, cfg)


if __name__ == "__main__":
    main()
