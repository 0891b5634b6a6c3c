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
* a recommender (``recommend``) on an interaction log → top-k per user of the log (seen training
  items excluded) against the user's items in the log: Recall/NDCG/HitRate@k.
"""

from __future__ import annotations

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

from clm_torch.data.schema import SchemaError, validate_target
from clm_torch.runs import load_model, read_config, resolve_checkpoint
from clm_torch.utils.io import CheckpointError, write_csv_safe, write_json
from clm_torch.utils.progress import chunks

log = logging.getLogger(__name__)
CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")


@dataclasses.dataclass
class Evaluation:
    """What an evaluation produced: per-row ``predictions`` and ``metrics`` (``eval/*`` + counts)."""

    predictions: pd.DataFrame
    metrics: dict[str, Any]


# ---------------------------------------------------------------------------------------- models
def evaluate_binary(model: Any, data: Any, *, batch_size: int = 65536) -> Evaluation:
    """Churn probability for every row of ``data.frame`` (a :class:`TableData`); metrics on labelled rows.

    The target column is ``data.target``, else the model's training target when the table has it.
    Rows whose target is missing are scored but left out of the metrics.
    """
    from clm_torch.callbacks import expected_calibration_error
    from clm_torch.models.churn import binary_metrics

    frame: pd.DataFrame = data.frame
    if len(frame) == 0:
        raise SchemaError("no rows to score", source=data.name)
    enc = getattr(model, "encoder", None)
    trained_target = getattr(enc, "target", None)
    target = data.target or (trained_target if trained_target in frame.columns else None)
    features = frame.drop(columns=[c for c in {target, trained_target} if c and c in frame.columns])
    prob = np.empty(len(frame), dtype=np.float32)
    for start, stop in chunks(len(frame), batch_size, f"scoring {len(frame):,} rows"):
        prob[start:stop] = model.predict_proba(features.iloc[start:stop], batch_size=batch_size, source=data.name)
    trained_id = (getattr(model, "preprocessing", None) or {}).get("schema", {}).get("id_col")
    id_name = next((c for c in (data.id_col, trained_id) if c and c in frame.columns), "row")
    ids = frame[id_name].to_numpy() if id_name in frame.columns else np.arange(len(frame))
    preds = pd.DataFrame({id_name: ids})
    metrics: dict[str, Any] = {"n_rows": len(frame)}
    if target is not None:
        labelled = frame[target].notna().to_numpy()
        y = np.full(len(frame), np.nan)
        if labelled.any():
            y_l, _ = validate_target(frame.loc[labelled, target], source=data.name, column=target,
                                     positive=getattr(enc, "positive_label", None), require_both=False)
            y[labelled] = y_l
        preds["label"] = pd.array(np.where(labelled, y, 0).astype(int), dtype="Int64")
        preds.loc[~labelled, "label"] = pd.NA
        metrics.update({"target": target, "n_labelled": int(labelled.sum()),
                        "positive_rate": float(np.nanmean(y)) if labelled.any() else float("nan")})
        yl, pl = y[labelled], prob[labelled]
        if labelled.any() and len(np.unique(yl)) == 2:
            m = binary_metrics(torch.from_numpy(pl), torch.from_numpy(yl.astype(np.float32)))
            metrics.update({f"eval/{k}": float(v) for k, v in m.items()})
            metrics["eval/ece"] = expected_calibration_error(pl, yl)
        else:
            log.warning("%s: the labelled rows hold one class only; no metrics", data.name)
    preds["prediction"] = prob
    return Evaluation(preds, metrics)


def evaluate_recommender(model: Any, data: Any, *, k: int = 10, batch_users: int = 4096) -> Evaluation:
    """Top-``k`` recommendations for every user of an interaction log (an :class:`InteractionData`),
    scored against the items that user has in the log (items unknown to the model cannot be hit
    and are left out of the targets). Users are ranked with their training history excluded.
    """
    from clm_torch.metrics import per_user_metrics

    frame: pd.DataFrame = data.frame
    if len(frame) == 0:
        raise SchemaError("no interactions to evaluate", source=data.name)
    item_index = pd.Index(model.preprocessing["item_ids"])
    users = pd.unique(frame["user"])
    item_pos = item_index.get_indexer(frame["item"])
    known = item_pos >= 0
    user_pos = pd.Index(users).get_indexer(frame["user"])
    held = pd.Series(frame["item"].astype(str).to_numpy()).groupby(user_pos).agg(" ".join)
    k = int(min(k, len(item_index)))
    recs, parts = [], []
    for start, stop in chunks(len(users), batch_users, f"recommending for {len(users):,} users"):
        top_ids = model.recommend(list(users[start:stop]), k=k, exclude_seen=True)
        recs += [" ".join(str(x) for x in row if x is not None) for row in top_ids]
        top_pos = torch.as_tensor(item_index.get_indexer(pd.Series(np.asarray(top_ids, dtype=object).ravel()))
                                  .reshape(len(top_ids), k))
        # (users, n_items + 1) bool: the last column pads empty top-k slots and is never a target
        targets = torch.zeros(stop - start, len(item_index) + 1, dtype=torch.bool)
        sel = known & (user_pos >= start) & (user_pos < stop)
        targets[torch.as_tensor(user_pos[sel] - start), torch.as_tensor(item_pos[sel])] = True
        top_pos = torch.where(top_pos < 0, len(item_index), top_pos)
        parts.append(per_user_metrics(top_pos, targets, [k]))
    metrics: dict[str, Any] = {"n_users": len(users), "n_interactions": len(frame),
                               "n_unknown_items": int((~known).sum()),
                               "n_unknown_users": int((model.user_index.get_indexer(users) < 0).sum())}
    for name in parts[0]:
        v = torch.cat([p[name] for p in parts])
        metrics[f"eval/{name}"] = float(torch.nanmean(v)) if (~torch.isnan(v)).any() else float("nan")
    preds = pd.DataFrame({"user_id": users, "recommended": recs,
                          "held_out": held.reindex(range(len(users))).fillna("").to_numpy()})
    return Evaluation(preds, metrics)


def evaluate_model(model: Any, data: Any, *, batch_size: int = 65536, k: int = 10) -> Evaluation:
    """Evaluate ``model`` on loaded ``data`` (a ``TableData`` or ``InteractionData``); see the module docstring.

    Raises:
        CheckpointError: the model class has no way to be evaluated on this kind of data.
    """
    hook = getattr(model, "evaluate_frame", None)
    if callable(hook):
        preds, metrics = hook(data.frame, target=getattr(data, "target", None), id_col=getattr(data, "id_col", None))
        return Evaluation(preds, dict(metrics))
    is_interactions = {"user", "item"} <= set(data.frame.columns) and not hasattr(data, "target")
    if is_interactions and hasattr(model, "recommend"):
        return evaluate_recommender(model, data, k=k)
    if not is_interactions and hasattr(model, "predict_proba"):
        return evaluate_binary(model, data, batch_size=batch_size)
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


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Load ``cfg.ckpt_path``, score ``cfg.data``, write metrics.json and predictions/<name>.csv.

    Returns:
        the metrics (also written to ``<output_dir>/metrics.json``).
    """
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    print(f"[clm_torch] evaluation directory: {output_dir}", flush=True)
    if cfg.get("ckpt_path") in (None, "", "???"):
        raise CheckpointError("no checkpoint: pass ckpt_path=<run dir or .ckpt file>")
    if cfg.get("data") is None:
        raise SchemaError("no data to evaluate on: pass data=<telco|synthetic|csv|...> "
                          "(e.g. data=csv data.path=new.csv data.target=churn)", source="clm-evaluate")
    ckpt = resolve_checkpoint(cfg.ckpt_path)
    model = load_model(ckpt, read_config(ckpt.parent.parent))
    data = load_data(cfg.data)
    result = evaluate_model(model, data, batch_size=int(cfg.get("batch_size", 65536)), k=int(cfg.get("k", 10)))
    pred_path = output_dir / "predictions" / f"{predictions_name(cfg, data)}.csv"
    write_csv_safe(result.predictions, pred_path)
    metrics = {**result.metrics, "ckpt_path": str(ckpt), "model_class": type(model).__name__,
               "data": str(data.name), "predictions": str(pred_path)}
    write_json(metrics, output_dir / "metrics.json")
    shown = {k: v for k, v in metrics.items() if k.startswith("eval/") and isinstance(v, float) and math.isfinite(v)}
    if shown:
        print("[clm_torch] metrics: " + ", ".join(f"{k}={v:.4f}" for k, v in sorted(shown.items())), flush=True)
    else:
        print("[clm_torch] no labels in the data: predictions only", flush=True)
    print(f"[clm_torch] predictions ({len(result.predictions):,} rows): {pred_path}", flush=True)
    print(f"[clm_torch] metrics: {output_dir / 'metrics.json'}", flush=True)
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="evaluate.yaml")
def main(cfg: DictConfig) -> None:
    from clm_torch.train import run_cli

    run_cli(evaluate, cfg)


if __name__ == "__main__":
    main()
