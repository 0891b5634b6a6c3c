"""Churn under missing data (issue 3, "the thesis"): does the InfoGapVAE help when data go missing?

Protocol, on the real IBM Telco table (7,043 customers, target ``churn == "Yes"``):

* for each rate r in 0, 0.2, 0.4, 0.6, hide each feature cell (every column but ``rownames`` and
  ``churn``) completely at random with probability r (``numpy.random.default_rng(1000 + 100 r)``),
  in the training *and* the test rows;
* the same 5 outer folds as ``bench_churn_telco.py`` (``StratifiedKFold(5, shuffle=True,
  random_state=0)``); every model sees the same masked folds;
* models, side by side in one run:
  - ``lgbm``: LightGBM with its native NaN handling, tuned by inner 5-fold CV (the grid of
    ``bench_churn_telco.py``);
  - ``plain``: ChurnClassifier, default ``churn_telco`` config (missing cells → its missing embeddings);
  - ``vae``: an InfoGapVAE (``vae_telco`` config; early stopping on its own validation split of the
    training fold) is trained on the masked training fold's features only, then the same
    ChurnClassifier with ``model.infogap_ckpt=<that VAE>``: latent mean, posterior std and gap
    scores as inputs, missing cells filled with the VAE's imputation.
* test-fold ROC-AUC (and log loss), mean ± std over the folds.

Targets (issue 3): at 40% and above, ChurnClassifier + InfoGapVAE beats LightGBM's AUC; at 0% it
stays within 0.003 of the plain ChurnClassifier.

Commands::

    python experiments/bench_churn_missing.py                         # → results/churn_missing.{md,json,png}
    python experiments/bench_churn_missing.py --rates 0.4 --folds 0 --no-write   # a quick look
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import tempfile
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_churn_telco as bct  # noqa: E402  (same folds, baselines and training path)

RESULTS = bct.RESULTS
MODELS = ("lgbm", "plain", "vae")
LABELS = {"lgbm": "LightGBM, native NaN (tuned, inner CV)", "plain": "ChurnClassifier",
          "vae": "ChurnClassifier + InfoGapVAE"}


def mask_features(df: pd.DataFrame, rate: float, cols: list[str]) -> pd.DataFrame:
    """``df`` with each cell of ``cols`` set to NaN with probability ``rate`` (seeded by the rate)."""
    out = df.copy()
    if rate <= 0:
        return out
    rng = np.random.default_rng(1000 + int(round(100 * rate)))
    hide = rng.random((len(df), len(cols))) < rate
    for j, c in enumerate(cols):
        out[c] = out[c].mask(hide[:, j])
    return out


def fit_vae(train_df: pd.DataFrame, target: str, id_col: str, workdir: str, overrides: list[str]) -> tuple[str, dict]:
    """Train the InfoGapVAE (``vae_telco`` config) on the training fold's features; its best checkpoint."""
    import hydra
    import lightning as L

    from clm_torch.data.sources import FrameSource
    from clm_torch.train import build_model

    cfg = bct.compose_config("vae_telco", overrides)
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    dm = hydra.utils.instantiate(cfg.data, source=FrameSource(train_df, target=target, id_col=id_col),
                                 _convert_="partial")
    model = build_model(cfg, dm)
    ckpt, trainer, seconds = bct.fit_with_early_stopping(cfg, dm, model, workdir)
    return ckpt.best_model_path, {"vae_epochs": int(trainer.current_epoch), "vae_seconds": round(seconds, 1)}


def run(rates: list[float], folds_sel: list[int], models: list[str], churn_over: list[str], vae_over: list[str],
        log: Any = print) -> dict[str, Any]:
    df, target, id_col, experiment = bct.load_dataset("telco")
    y = bct.binary_labels(df[target])
    features = [c for c in df.columns if c not in (target, id_col)]
    folds = bct.outer_folds(y)
    res: dict[str, Any] = {}
    for rate in rates:
        masked = mask_features(df, rate, features)
        X, _, _ = bct.feature_frame(masked, target, id_col)
        cell = {m: {"auroc": [], "log_loss": [], "info": [], "seconds": 0.0} for m in models}
        for i in folds_sel:
            tr, te = folds[i]
            train_df, test_df = masked.iloc[tr].reset_index(drop=True), masked.iloc[te].reset_index(drop=True)
            for m in models:
                t0 = time.time()
                info: dict[str, Any] = {}
                if m == "lgbm":
                    p, info = bct.fit_lgbm(X.iloc[tr], y[tr], X.iloc[te], tuned=True)
                elif m == "plain":
                    p, info = bct.fit_ours(bct.compose_config(experiment, churn_over), train_df, test_df, target,
                                           id_col)
                else:
                    with tempfile.TemporaryDirectory(prefix="clm_vae_") as tmp:
                        path, vinfo = fit_vae(train_df, target, id_col, tmp, vae_over)
                        cfg = bct.compose_config(experiment, [*churn_over, f"model.infogap_ckpt={path}"])
                        p, info = bct.fit_ours(cfg, train_df, test_df, target, id_col)
                        info.update(vinfo)
                s = bct.scores(y[te], p)
                cell[m]["auroc"].append(s["auroc"])
                cell[m]["log_loss"].append(s["log_loss"])
                cell[m]["info"].append(info)
                cell[m]["seconds"] += time.time() - t0
                log(f"rate {rate:.1f} fold {i} {m:6s} auroc={s['auroc']:.4f} log_loss={s['log_loss']:.4f} "
                    f"({time.time() - t0:.0f}s)")
        res[f"{rate:.1f}"] = cell
    return res


def summarise(res: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for rate, cell in res.items():
        out[rate] = {m: {k: (float(np.mean(v[k])), float(np.std(v[k], ddof=1)) if len(v[k]) > 1 else 0.0)
                         for k in ("auroc", "log_loss")} for m, v in cell.items()}
    return out


def verdicts(summary: dict[str, Any]) -> list[str]:
    lines = []
    for rate, cell in summary.items():
        if "vae" not in cell:
            continue
        r = float(rate)
        if r >= 0.4 and "lgbm" in cell:
            d = cell["vae"]["auroc"][0] - cell["lgbm"]["auroc"][0]
            lines.append(f"- {int(100 * r)}% missing: ChurnClassifier + InfoGapVAE {cell['vae']['auroc'][0]:.4f} vs "
                         f"LightGBM {cell['lgbm']['auroc'][0]:.4f} (Δ {d:+.4f}): "
                         f"{'**met**' if d > 0 else '**missed**'} (target: beat LightGBM)")
        if r == 0 and "plain" in cell:
            d = cell["vae"]["auroc"][0] - cell["plain"]["auroc"][0]
            lines.append(f"- 0% missing: + InfoGapVAE {cell['vae']['auroc'][0]:.4f} vs plain "
                         f"{cell['plain']['auroc'][0]:.4f} (Δ {d:+.4f}): "
                         f"{'**met**' if d >= -0.003 else '**missed**'} (target: within 0.003)")
    return lines


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = sorted(summary, key=float)
    fig, ax = plt.subplots(figsize=(6, 4))
    for m in MODELS:
        if m not in summary[rates[0]]:
            continue
        mean = [summary[r][m]["auroc"][0] for r in rates]
        std = [summary[r][m]["auroc"][1] for r in rates]
        ax.errorbar([100 * float(r) for r in rates], mean, yerr=std, marker="o", capsize=3, label=LABELS[m])
    ax.set_xlabel("share of feature cells missing (train and test), %")
    ax.set_ylabel("test ROC-AUC (mean ± std over folds)")
    ax.set_title("Telco churn under missing data")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", type=float, nargs="+", default=[0.0, 0.2, 0.4, 0.6])
    ap.add_argument("--folds", default="0,1,2,3,4")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--churn-override", action="append", default=[], help="Hydra override of the churn model")
    ap.add_argument("--vae-override", action="append", default=[], help="Hydra override of the VAE")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(bct.N_THREADS)
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "clm_torch"):
        logging.getLogger(name).setLevel(logging.ERROR)
    t0 = time.time()
    models = [m for m in args.models.split(",") if m]
    folds = [int(i) for i in args.folds.split(",")]
    res = run(args.rates, folds, models, args.churn_override, args.vae_override, lambda s: print(s, flush=True))
    summary = summarise(res)
    wall = time.time() - t0
    command = f"python experiments/bench_churn_missing.py {' '.join(argv if argv is not None else sys.argv[1:])}".rstrip()
    date = f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC"
    lines = ["# Churn under missing data (Telco)", "",
             f"- command: `{command}`",
             f"- date: {date}; wall time {wall / 60:.1f} min; "
             f"{platform.machine()}, torch {torch.__version__}, {bct.N_THREADS} threads",
             f"- folds {folds} of `StratifiedKFold(5, shuffle=True, random_state=0)`; cells hidden MCAR in train "
             "and test; protocol in the script's docstring",
             f"- churn overrides: {args.churn_override or 'none'}; VAE overrides: {args.vae_override or 'none'}", "",
             "| missing | " + " | ".join(LABELS[m] for m in models) + " |",
             "|---|" + "---|" * len(models)]
    for rate, cell in summary.items():
        lines.append(f"| {int(100 * float(rate))}% | " + " | ".join(
            f"{cell[m]['auroc'][0]:.4f} ± {cell[m]['auroc'][1]:.4f} (log loss {cell[m]['log_loss'][0]:.4f})"
            for m in models) + " |")
    lines += ["", "ROC-AUC mean ± std (ddof=1) over the folds.", "", "**Targets (issue 3)**", "", *verdicts(summary),
              "", "![AUC against missing rate](plots/churn_missing.png)", ""]
    md = "\n".join(lines)
    print(md)
    if args.no_write:
        return
    (RESULTS / "plots").mkdir(parents=True, exist_ok=True)
    plot(summary, RESULTS / "plots" / "churn_missing.png")
    (RESULTS / "churn_missing.md").write_text(md)
    (RESULTS / "churn_missing.json").write_text(json.dumps({"command": command, "date": date, "summary": summary,
                                                             "folds": res, "wall_seconds": wall}, indent=1, default=str))


if __name__ == "__main__":
    main()
