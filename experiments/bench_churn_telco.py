"""Churn quality bar: 5-fold stratified CV of ChurnClassifier against LR, LightGBM and an sklearn MLP.

Protocol (issue 2, "Quality bar"): StratifiedKFold(5, shuffle=True, random_state=0) on the whole
table, target ``churn == "Yes"``. Every model sees the same folds. Metrics on each test fold:
ROC-AUC, PR-AUC (average precision), log loss, Brier; the table reports mean ± std (ddof=1).

* ``lr``: one-hot categoricals + standardised numerics (median-imputed), C tuned by inner 5-fold CV
  on log loss.
* ``lgbm_tuned``: LightGBM, a small grid tuned by inner 5-fold CV on log loss.
* ``lgbm_default``: ``LGBMClassifier()`` with default parameters.
* ``mlp_sklearn``: ``MLPClassifier`` with default sizes, early stopping on a 10 % validation split.
* ``ours``: ChurnClassifier trained exactly as a user does: the composed Hydra config
  (``experiment=<name>`` + overrides), ``TableDataModule(FrameSource(train_fold), test_frame=test_fold)``
  (the validation split — early stopping, checkpoint choice and Platt calibration — is carved from
  the training fold only), a Lightning Trainer with early stopping and checkpointing on the model's
  monitor, then ``predict_proba(raw test fold)`` from the best checkpoint.

Commands::

    python experiments/bench_churn_telco.py                          # Telco → results/churn_telco.{md,json}
    python experiments/bench_churn_telco.py --dataset synthetic      # → results/churn_synthetic.{md,json}
    # tuning (never touches a test fold): CV over the 4 training folds of outer fold 0
    python experiments/bench_churn_telco.py --tune --models ours --override model.lr=0.0003 --tag lr3e-4
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"
CONFIG_DIR = str(ROOT / "configs")
N_THREADS = int(os.environ.get("CLM_BENCH_THREADS", "2"))

ANCHORS = {  # issue 2, measured on exactly this protocol (ROC-AUC, PR-AUC, log loss)
    "lr": (0.8451, 0.6535, 0.4178),
    "lgbm_tuned": (0.8497, 0.6692, 0.4114),
    "lgbm_default": (0.8365, 0.6439, 0.4316),
    "mlp_sklearn": (0.8424, 0.6490, 0.4207),
}
TARGET = {"auroc": 0.848, "log_loss": 0.415}
METRICS = ("auroc", "ap", "log_loss", "brier")
MODEL_LABELS = {
    "ours": "ChurnClassifier (default config)",
    "lr": "logistic regression (C by inner CV)",
    "lgbm_tuned": "LightGBM tuned (inner CV)",
    "lgbm_default": "LightGBM default",
    "mlp_sklearn": "sklearn MLP",
}


# ---------------------------------------------------------------------------- data
def load_dataset(name: str) -> tuple[pd.DataFrame, str, str, str]:
    """The raw table, its target and id columns, and the experiment config to compose."""
    if name == "telco":
        from clm_torch.data.sources import TelcoSource

        data = TelcoSource().load()
        return data.frame, data.target, data.id_col, "churn_telco"
    if name == "synthetic":
        from clm_torch.data.synthetic import generate_customer_base

        base = generate_customer_base(n_customers=20000, seed=0)
        df = base.customers
        # The base plants duplicate rows; CV folds are over customers, so keep one row per id
        # (the last, as the package's cleaning does) — otherwise a test customer leaks into training.
        df = df.drop_duplicates(subset=[base.id_col], keep="last").reset_index(drop=True)
        return df, base.target, base.id_col, "churn_synthetic"
    raise SystemExit(f"unknown dataset {name!r}")


def binary_labels(s: pd.Series) -> np.ndarray:
    """``churn == "Yes"`` (case/space-insensitive), or 0/1 / bool columns as they are."""
    if s.dtype == bool or pd.api.types.is_numeric_dtype(s):
        return s.astype(float).to_numpy().astype(int)
    return (s.astype("string").str.strip().str.lower() == "yes").fillna(False).to_numpy().astype(int)


def scores(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score

    p = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1 - 1e-7)
    return {"auroc": float(roc_auc_score(y, p)), "ap": float(average_precision_score(y, p)),
            "log_loss": float(log_loss(y, p, labels=[0, 1])), "brier": float(brier_score_loss(y, p))}


# ---------------------------------------------------------------------------- baselines
def feature_frame(df: pd.DataFrame, target: str, id_col: str) -> tuple[pd.DataFrame, list[str], list[str]]:
    """Features for the sklearn/LightGBM baselines: numerics as float, text columns normalised
    (strip + lower case, as the package's cleaning does) into pandas categories. Stateless per row."""
    X = df.drop(columns=[c for c in (target, id_col) if c in df.columns]).copy()
    num, cat = [], []
    for c in X.columns:
        s = X[c]
        if pd.api.types.is_bool_dtype(s):
            X[c] = s.astype(float)
            num.append(c)
        elif pd.api.types.is_numeric_dtype(s):
            X[c] = s.astype(float)
            num.append(c)
        elif pd.api.types.is_datetime64_any_dtype(s):
            X = X.drop(columns=[c])
        else:
            X[c] = s.astype("string").str.strip().str.lower().astype("category")
            cat.append(c)
    return X, num, cat


def _linear_preprocessor(num: list[str], cat: list[str]) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    return ColumnTransformer([
        ("num", make_pipeline(SimpleImputer(strategy="median", add_indicator=True), StandardScaler()), num),
        ("cat", make_pipeline(SimpleImputer(strategy="constant", fill_value="<missing>"),
                              OneHotEncoder(handle_unknown="ignore")), cat),
    ])


def _to_object(X: pd.DataFrame, cat: list[str]) -> pd.DataFrame:
    X = X.copy()
    for c in cat:
        X[c] = X[c].astype(object).where(X[c].notna(), None)
    return X


def fit_lr(Xtr: pd.DataFrame, ytr: np.ndarray, Xte: pd.DataFrame, num: list[str], cat: list[str]) -> tuple[np.ndarray, dict]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import Pipeline

    pipe = Pipeline([("prep", _linear_preprocessor(num, cat)), ("clf", LogisticRegression(max_iter=5000))])
    grid = {"clf__C": list(np.logspace(-3, 2, 11))}
    search = GridSearchCV(pipe, grid, cv=StratifiedKFold(5, shuffle=True, random_state=0), scoring="neg_log_loss",
                          n_jobs=1)
    search.fit(_to_object(Xtr, cat), ytr)
    return search.predict_proba(_to_object(Xte, cat))[:, 1], {"C": float(search.best_params_["clf__C"])}


LGBM_GRID = {"num_leaves": [4, 8, 16], "n_estimators": [150, 400], "learning_rate": [0.03],
             "min_child_samples": [20, 60], "colsample_bytree": [0.7]}


def fit_lgbm(Xtr: pd.DataFrame, ytr: np.ndarray, Xte: pd.DataFrame, tuned: bool) -> tuple[np.ndarray, dict]:
    import lightgbm as lgb
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    if not tuned:
        clf = lgb.LGBMClassifier(verbose=-1, n_jobs=N_THREADS, random_state=0).fit(Xtr, ytr)
        return clf.predict_proba(Xte)[:, 1], {}
    search = GridSearchCV(lgb.LGBMClassifier(verbose=-1, n_jobs=N_THREADS, random_state=0), LGBM_GRID,
                          cv=StratifiedKFold(5, shuffle=True, random_state=0), scoring="neg_log_loss", n_jobs=1)
    search.fit(Xtr, ytr)
    return search.predict_proba(Xte)[:, 1], {k: v for k, v in search.best_params_.items()}


def fit_mlp_sklearn(Xtr: pd.DataFrame, ytr: np.ndarray, Xte: pd.DataFrame, num: list[str], cat: list[str]
                    ) -> tuple[np.ndarray, dict]:
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import Pipeline

    pipe = Pipeline([("prep", _linear_preprocessor(num, cat)),
                     ("clf", MLPClassifier(early_stopping=True, max_iter=500, random_state=0))])
    pipe.fit(_to_object(Xtr, cat), ytr)
    return pipe.predict_proba(_to_object(Xte, cat))[:, 1], {}


# ---------------------------------------------------------------------------- ours, via the package
def compose_config(experiment: str, overrides: list[str]) -> Any:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train.yaml", overrides=[f"experiment={experiment}", *overrides])


def fit_with_early_stopping(cfg: Any, dm: Any, model: Any, workdir: str) -> tuple[Any, Any, float]:
    """Fit ``model`` on ``dm`` as ``clm-train`` does (the config's trainer, checkpoint of the best
    ``cfg.model_monitor`` and early stopping), without logger or progress bar, writing to ``workdir``.
    Returns (checkpoint callback, trainer, fit seconds)."""
    import hydra

    ckpt = hydra.utils.instantiate(cfg.callbacks.model_checkpoint, dirpath=workdir, monitor=cfg.model_monitor,
                                   mode=cfg.model_monitor_mode)
    early = hydra.utils.instantiate(cfg.callbacks.early_stopping, monitor=cfg.model_monitor,
                                    mode=cfg.model_monitor_mode)
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=[ckpt, early], logger=False, default_root_dir=workdir,
                                      enable_progress_bar=False, enable_model_summary=False, _convert_="partial")
    t0 = time.time()
    trainer.fit(model, datamodule=dm)
    return ckpt, trainer, time.time() - t0


def fit_ours(cfg: Any, train_df: pd.DataFrame, test_df: pd.DataFrame, target: str, id_col: str
             ) -> tuple[np.ndarray, dict]:
    """Train ChurnClassifier on ``train_df`` through the package's own path; score raw ``test_df``."""
    import hydra
    import lightning as L

    from clm_torch.data.sources import FrameSource

    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    from clm_torch.train import build_model

    dm = hydra.utils.instantiate(cfg.data, source=FrameSource(train_df, target=target, id_col=id_col),
                                 test_frame=test_df, _convert_="partial")
    model = build_model(cfg, dm)  # as train() does (with model.infogap_ckpt: the VAE's features too)
    with tempfile.TemporaryDirectory(prefix="clm_bench_") as tmp:
        ckpt, trainer, fit_s = fit_with_early_stopping(cfg, dm, model, tmp)
        cls = hydra.utils.get_class(cfg.model._target_)
        best = cls.load_from_checkpoint(ckpt.best_model_path, weights_only=True)
        prob = best.predict_proba(test_df.drop(columns=[target]))
        info = {"epochs": int(trainer.current_epoch), "best_epoch": _best_epoch(ckpt.best_model_path),
                "best_val": float(ckpt.best_model_score) if ckpt.best_model_score is not None else None,
                "calib": [round(float(v), 4) for v in best.calib.tolist()], "fit_seconds": round(fit_s, 1),
                "n_val": len(dm.frames["val"])}
    return prob, info


def _best_epoch(path: str) -> int | None:
    try:
        return int(torch.load(path, weights_only=True, map_location="cpu")["epoch"])
    except Exception:  # noqa: BLE001 - informative only
        return None


# ---------------------------------------------------------------------------- CV driver
def run_cv(df: pd.DataFrame, target: str, id_col: str, experiment: str, models: list[str], overrides: list[str],
           folds: list[tuple[np.ndarray, np.ndarray]], log: Callable[[str], None]) -> dict[str, Any]:
    y = binary_labels(df[target])
    X, num, cat = feature_frame(df, target, id_col)
    cfg = compose_config(experiment, overrides) if "ours" in models else None
    out: dict[str, Any] = {m: {"folds": [], "info": [], "seconds": 0.0, "cpu_seconds": 0.0, "pred": []}
                           for m in models}
    for i, (tr, te) in enumerate(folds):
        for m in models:
            t0, c0 = time.time(), time.process_time()
            if m == "ours":
                p, info = fit_ours(cfg, df.iloc[tr].reset_index(drop=True), df.iloc[te].reset_index(drop=True),
                                   target, id_col)
            elif m == "lr":
                p, info = fit_lr(X.iloc[tr], y[tr], X.iloc[te], num, cat)
            elif m == "lgbm_tuned":
                p, info = fit_lgbm(X.iloc[tr], y[tr], X.iloc[te], tuned=True)
            elif m == "lgbm_default":
                p, info = fit_lgbm(X.iloc[tr], y[tr], X.iloc[te], tuned=False)
            elif m == "mlp_sklearn":
                p, info = fit_mlp_sklearn(X.iloc[tr], y[tr], X.iloc[te], num, cat)
            else:
                raise SystemExit(f"unknown model {m!r}")
            dt = time.time() - t0
            s = scores(y[te], p)
            out[m]["folds"].append(s)
            out[m]["pred"].append((te, np.asarray(p, dtype=np.float64)))
            out[m]["info"].append(info)
            out[m]["seconds"] += dt
            out[m]["cpu_seconds"] += time.process_time() - c0
            log(f"fold {i} {m:13s} " + " ".join(f"{k}={v:.4f}" for k, v in s.items()) + f"  ({dt:.1f}s) {info}")
    for m in models:
        arr = {k: np.array([f[k] for f in out[m]["folds"]]) for k in METRICS}
        out[m]["mean"] = {k: float(v.mean()) for k, v in arr.items()}
        out[m]["std"] = {k: float(v.std(ddof=1)) if len(v) > 1 else 0.0 for k, v in arr.items()}
        out[m]["seconds"] = round(out[m]["seconds"], 1)
        out[m]["cpu_seconds"] = round(out[m]["cpu_seconds"], 1)
    return out


def outer_folds(y: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import StratifiedKFold

    return list(StratifiedKFold(5, shuffle=True, random_state=0).split(np.zeros(len(y)), y))


def tuning_folds(y: np.ndarray, outer: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """CV over the 4 training folds of outer fold ``outer``: each inner split trains on 3 of them and
    scores the 4th. The outer test fold is never used."""
    folds = outer_folds(y)
    train_folds = [te for j, (_, te) in enumerate(folds) if j != outer]
    out = []
    for j, te in enumerate(train_folds):
        tr = np.sort(np.concatenate([f for k, f in enumerate(train_folds) if k != j]))
        out.append((tr, np.sort(te)))
    return out


# ---------------------------------------------------------------------------- report
def fmt(mean: float, std: float) -> str:
    return f"{mean:.4f} ± {std:.4f}"


def tuning_table(path: Path) -> list[str]:
    """Markdown rows summarising every tuning run recorded in ``path`` (inner CV, never a test fold)."""
    if not path.exists():
        return []
    rows = ["| # | tag | overrides of `ours` | inner ROC-AUC | inner PR-AUC | inner log loss | inner Brier | best epochs |",
            "|---|---|---|---|---|---|---|---|"]
    for i, line in enumerate(path.read_text().splitlines()):
        rec = json.loads(line)
        for m, r in rec["results"].items():
            mu = r["mean"]
            epochs = [x.get("best_epoch") for x in r.get("info", [])]
            label = " ".join(rec["overrides"]) if m == "ours" else f"({MODEL_LABELS.get(m, m)})"
            rows.append(f"| {i} | {rec['tag']} | {label or '(default at the time)'} | {mu['auroc']:.4f} | "
                        f"{mu['ap']:.4f} | {mu['log_loss']:.4f} | {mu['brier']:.4f} | "
                        f"{epochs if m == 'ours' else ''} |")
    return rows


def write_report(res: dict[str, Any], meta: dict[str, Any], path_md: Path, path_json: Path) -> None:
    path_json.write_text(json.dumps({"meta": meta, "results": res}, indent=2, default=str) + "\n")
    L = [f"# Churn benchmark: {meta['dataset']} ({meta['n_rows']:,} customers, 5-fold stratified CV)", "",
         f"- command: `{meta['command']}`",
         f"- date: {meta['date']}; wall time {meta['wall_seconds'] / 60:.1f} min, CPU time "
         f"{meta['cpu_seconds'] / 60:.1f} min, torch/LightGBM threads: {meta['threads']} ({meta['machine']})",
         f"- folds: `StratifiedKFold(5, shuffle=True, random_state=0)`; target `{meta['target']} == \"Yes\"` "
         f"(positive rate {meta['pos_rate']:.3f})",
         f"- ours: `experiment={meta['experiment']}` {' '.join(meta['overrides']) or '(no overrides)'}, trained "
         "through `TableDataModule(FrameSource(train fold), test_frame=test fold)`; the validation split "
         "(early stopping, checkpoint, Platt calibration) is carved from each training fold; the best checkpoint "
         "scores the raw test fold with `predict_proba`",
         "", "| model | ROC-AUC | PR-AUC | log loss | Brier | wall s (5 folds) | CPU s |",
         "|---|---|---|---|---|---|---|"]
    for m, r in res.items():
        L.append(f"| {MODEL_LABELS.get(m, m)} | " + " | ".join(fmt(r["mean"][k], r["std"][k]) for k in METRICS)
                 + f" | {r['seconds']:.0f} | {r.get('cpu_seconds', float('nan')):.0f} |")
    L += ["", "mean ± std (ddof=1) over the 5 test folds."]
    if meta["dataset"] == "telco":
        L += ["", "Anchors from issue 2 (same protocol, ROC-AUC / PR-AUC / log loss): " + "; ".join(
            f"{MODEL_LABELS[m]} {a[0]:.4f} / {a[1]:.4f} / {a[2]:.4f}" for m, a in ANCHORS.items()) + "."]
    if "ours" in res:
        mo = res["ours"]["mean"]
        ok_auc, ok_ll = mo["auroc"] >= TARGET["auroc"], mo["log_loss"] <= TARGET["log_loss"]
        what = "Target (issue 2, set for Telco)" if meta["dataset"] == "telco" else \
            "For reference, the Telco target (issue 2; not defined for this table)"
        L += ["", f"**{what}**: mean ROC-AUC ≥ {TARGET['auroc']} and log loss ≤ {TARGET['log_loss']}. "
              f"Measured: ROC-AUC {mo['auroc']:.4f} ({'met' if ok_auc else 'MISSED'}), "
              f"log loss {mo['log_loss']:.4f} ({'met' if ok_ll else 'MISSED'})."]
    L += ["", "## Per fold", "", "| fold | model | ROC-AUC | PR-AUC | log loss | Brier | notes |",
          "|---|---|---|---|---|---|---|"]
    n = len(next(iter(res.values()))["folds"])
    for i in range(n):
        for m, r in res.items():
            f = r["folds"][i]
            info = r["info"][i]
            note = ", ".join(f"{k}={v}" for k, v in info.items() if k in ("C", "best_epoch", "epochs", "calib",
                                                                          "num_leaves", "n_estimators",
                                                                          "min_child_samples"))
            L.append(f"| {i} | {m} | " + " | ".join(f"{f[k]:.4f}" for k in METRICS) + f" | {note} |")
    if meta.get("notes"):
        L += ["", meta["notes"].rstrip()]
    tuning = tuning_table(path_md.with_suffix(".tuning.jsonl"))
    if tuning:
        L += ["", "## Tuning runs (inner CV: the 4 training folds of outer fold 0; no test fold used)", "",
              f"Recorded by `--tune` in `{path_md.with_suffix('.tuning.jsonl').name}`; each row is the mean "
              "over 4 inner splits (train on 3 of outer fold 0's training folds, score the 4th).", "", *tuning]
    path_md.write_text("\n".join(L) + "\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="telco", choices=["telco", "synthetic"])
    ap.add_argument("--models", default="ours,lr,lgbm_tuned,lgbm_default,mlp_sklearn",
                    help="comma list of ours, lr, lgbm_tuned, lgbm_default, mlp_sklearn")
    ap.add_argument("--override", action="append", default=[], help="Hydra override for `ours` (repeatable)")
    ap.add_argument("--tune", action="store_true",
                    help="tuning mode: CV over the 4 training folds of outer fold 0 (its test fold is never used); "
                         "appends to results/churn_<dataset>.tuning.jsonl")
    ap.add_argument("--tag", default="", help="label of a tuning run")
    ap.add_argument("--folds", default="", help="comma list of fold indices to run (debugging)")
    ap.add_argument("--notes", default="", help="a file whose text is appended to the report")
    ap.add_argument("--no-write", action="store_true", help="print only")
    ap.add_argument("--save-preds", default="", help="a folder: write <tag or dataset>_<model>.npz with the "
                                                      "test-fold row indices, labels and predictions")
    args = ap.parse_args(argv)

    torch.set_num_threads(N_THREADS)
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "clm_torch"):
        logging.getLogger(name).setLevel(logging.ERROR)
    t_start = time.time()
    df, target, id_col, experiment = load_dataset(args.dataset)
    y = binary_labels(df[target])
    folds = tuning_folds(y) if args.tune else outer_folds(y)
    if args.folds:
        keep = [int(i) for i in args.folds.split(",")]
        folds = [folds[i] for i in keep]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    print(f"{args.dataset}: {len(df)} rows, positive rate {y.mean():.3f}, models {models}, "
          f"{'TUNING (inner CV on outer fold 0 training folds)' if args.tune else 'outer CV'}", flush=True)
    res = run_cv(df, target, id_col, experiment, models, args.override, folds, lambda s: print(s, flush=True))
    wall = time.time() - t_start
    for m, r in res.items():
        pred = r.pop("pred")
        if args.save_preds:
            Path(args.save_preds).mkdir(parents=True, exist_ok=True)
            np.savez(Path(args.save_preds) / f"{args.tag or args.dataset}_{m}.npz", y=y,
                     **{f"idx{i}": te for i, (te, _) in enumerate(pred)}, **{f"p{i}": p for i, (_, p) in enumerate(pred)})
    for m, r in res.items():
        print(f"{m:13s} " + "  ".join(f"{k}={fmt(r['mean'][k], r['std'][k])}" for k in METRICS)
              + f"  ({r['seconds']:.0f}s)", flush=True)
    print(f"wall time {wall:.0f}s", flush=True)
    if args.no_write:
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    command = "python experiments/bench_churn_telco.py " + " ".join(argv if argv is not None else sys.argv[1:])
    meta = {"command": command.strip(), "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "wall_seconds": round(wall, 1), "cpu_seconds": round(time.process_time(), 1), "threads": N_THREADS, "dataset": args.dataset, "n_rows": len(df),
            "target": target, "pos_rate": float(y.mean()), "experiment": experiment, "overrides": args.override,
            "machine": f"{platform.machine()}, torch {torch.__version__}", "folds": args.folds or "all"}
    if args.tune:
        rec = {"tag": args.tag, **meta, "results": {m: {"mean": r["mean"], "std": r["std"], "folds": r["folds"],
                                                        "info": r["info"]} for m, r in res.items()}}
        with open(RESULTS / f"churn_{args.dataset}.tuning.jsonl", "a") as f:
            f.write(json.dumps(rec, default=str) + "\n")
        return
    if args.notes:
        meta["notes"] = Path(args.notes).read_text()
    write_report(res, meta, RESULTS / f"churn_{args.dataset}.md", RESULTS / f"churn_{args.dataset}.json")


if __name__ == "__main__":
    main()
