"""CLV on the synthetic customer base: predicted CLV against the naive run-rate baseline.

Protocol (issue 5, "Quality bar", CLV on the synthetic base), per seed:

* ``generate_customer_base(n_customers=20000, seed=s)``; the observable data are the events before
  ``base.cutoff`` and the customer snapshot without its churn column (exactly what ``clm-pipeline``
  loads: ``clm_torch.pipeline.load_inputs``). Ground truth: ``base.truth.future_spend``, the spend
  in ``(cutoff, cutoff + 90 days]``.
* The pipeline's own steps: ``clean_customers`` and ``build_views`` (train view at
  ``cutoff − 90 days`` with its labels, all observed; score view at the cutoff). A
  ``SpendRegressor`` (Tweedie) and a ``ChurnClassifier`` are trained by ``clm_torch.train.train``
  on the train view with the very overrides the pipeline uses (``model=spend|churn data=parquet
  data.id_col=customer_id ...``, 30 epochs max, early stopping), then applied to the score view.
* Predictions, over every customer of the score view (as ``pipeline.truth_check`` does):

  - **learned CLV**: the SpendRegressor's expected spend in the horizon as a per-period rate,
    held over the CLV periods and discounted (``clv_learned``; a constant times the spend, so
    its ranks are the spend's);
  - **formula CLV**: the pipeline's ``clv_formula`` column: margin × past spend per period ×
    survival ``S(t) = (1 − p)^t`` from the predicted churn probability, discounted
    (``configs/pipeline.yaml`` ``value:`` block);
  - **run-rate baseline**: past spend per week × horizon (``run_rate_clv``).

  Metrics: Spearman with the true future spend and top-20 % capture (the share of the true
  future spend among the 20 % of customers ranked highest).
* Variant ``events only`` (``--variants``): the same without the customer snapshot, to show how
  much of the gain needs it. The snapshot lists the customers active at the cutoff, so in the
  train view (at cutoff − 90 days) "no snapshot row" means "left before the cutoff": the table
  carries information from the train view's label window (it is legitimate at scoring time).

TARGET: learned and/or formula CLV beat run-rate on both metrics (mean over seeds).

Threads: torch and LightGBM run on ``CLM_BENCH_THREADS`` threads, default 1. On the shared, overloaded
2-core machine these numbers come from (load average 12-20), 2 OpenMP threads made a small MLP
training loop 18x and a LightGBM fit 25x slower than 1 thread (the threads spin-wait for each
other), so 1 thread is the faster setting there; set ``CLM_BENCH_THREADS=2`` on an idle machine.

Command::

    python experiments/bench_clv_synthetic.py            # → results/clv_synthetic.{md,json}
    python experiments/bench_clv_synthetic.py --seeds 0 --no-write   # quick look
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_lifecycle_events import freeze_package, quiet_run, run_meta, run_start, train_and_load  # shared

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"
METHODS = ("learned", "formula", "run_rate")
LABELS = {"learned": "learned CLV (SpendRegressor, Tweedie)", "formula": "formula CLV (survival from predicted churn)",
          "run_rate": "run-rate baseline (past spend per week × horizon)"}


def say(msg: str) -> None:
    print(f"[bench_clv_synthetic] {msg}", flush=True)


def train_model(kind: str, data_path: Path, seed: int, out: Path, pipe_cfg: Any,
                extra: Sequence[str] = ()) -> tuple[Any, dict[str, Any]]:
    """Train ``vae`` (on the profile view), ``spend`` or ``churn`` (on the train view) with the
    pipeline's sub-run overrides (``extra``: the churn model's ``model.infogap_ckpt``)."""
    from omegaconf import OmegaConf

    from clm_torch.config import compose_config

    table = ["data=parquet", "data.id_col=customer_id", "~logger", f"data.path={data_path}"]
    if kind == "spend":
        model = ["model=spend", "data.target=future_spend", "data.target_type=continuous", "data.drop=[churn]"]
    elif kind == "vae":
        model = ["model=infogap_vae"]
    else:
        model = ["model=churn", "data.target=churn", "data.drop=[future_spend]"]
    overrides = [*model, *table, *extra, f"task_name={kind}", f"seed={seed}"]
    cfg = compose_config(overrides, output_dir=out / kind)
    extra = pipe_cfg.models.get(kind)
    if extra:
        cfg = OmegaConf.merge(cfg, extra)
    m, metrics, seconds = train_and_load(cfg)
    info = {"overrides": overrides + [f"{k}={v}" for k, v in _flat(OmegaConf.to_container(extra) if extra else {})],
            "seconds": round(seconds, 1),
            "metrics": {k: v for k, v in metrics.items() if "/" in k and isinstance(v, float)},
            "best_ckpt": metrics.get("best_ckpt")}
    return m, info


def _flat(d: dict, prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for k, v in d.items():
        out += _flat(v, f"{prefix}{k}.") if isinstance(v, dict) else [(f"{prefix}{k}", v)]
    return out


def run_seed(seed: int, n_customers: int, variant: str, workdir: Path) -> dict[str, Any]:
    from clm_torch.config import compose_config
    from clm_torch.lifecycle.value import (
        clv_formula,
        clv_learned,
        per_period_churn_prob,
        run_rate_clv,
        spearman,
        spend_capture,
        survival_from_churn_prob,
    )
    from clm_torch.pipeline import _infogap_override, build_views, clean_customers, load_inputs, profile_view

    t0 = time.time()
    out = workdir / f"{variant.replace(' ', '_')}_seed{seed}"
    pipe_cfg = compose_config([f"data.n_customers={n_customers}", f"data.seed={seed}"], config_name="pipeline.yaml",
                              output_dir=out)
    horizon = float(pipe_cfg.horizon_days)
    inputs = load_inputs(pipe_cfg)
    customers = clean_customers(inputs["customers"], inputs["customers_source"]) if variant == "pipeline" else None
    train_frame, score_frame = build_views(inputs, customers, horizon, int(pipe_cfg.n_last))
    t_data = time.time() - t0
    diag: dict[str, Any] = {"n_train_view": len(train_frame), "n_score_view": len(score_frame),
                            "train_churn_rate": float(train_frame["churn"].mean())}
    if customers is not None:
        no_row = ~train_frame["customer_id"].isin(customers["customer_id"]).to_numpy()
        diag["train_share_without_snapshot_row"] = float(no_row.mean())
        diag["train_churn_rate_without_snapshot_row"] = float(train_frame["churn"].to_numpy()[no_row].mean())
        diag["train_churn_rate_with_snapshot_row"] = float(train_frame["churn"].to_numpy()[~no_row].mean())
    out.mkdir(parents=True, exist_ok=True)
    train_path = out / "train_view.parquet"
    train_frame.to_parquet(train_path, index=False)

    # as the pipeline: the VAE on every customer known at the training cutoff, its features in the churn model
    profile_path = out / "profile_view.parquet"
    profile_view(inputs, customers, horizon, int(pipe_cfg.n_last),
                 [c for c in train_frame.columns if c not in ("churn", "future_spend")]).to_parquet(profile_path,
                                                                                                 index=False)
    _, vae_info = train_model("vae", profile_path, seed, out, pipe_cfg)
    spend_model, spend_info = train_model("spend", train_path, seed, out, pipe_cfg)
    churn_model, churn_info = train_model("churn", train_path, seed, out, pipe_cfg, _infogap_override(vae_info))
    churn_info["vae_seconds"] = vae_info["seconds"]
    spend_pred = spend_model.predict_spend(score_frame)
    p_churn = churn_model.predict_proba(score_frame).astype("float64")

    v = pipe_cfg.value
    period_days = float(v.period_days)
    surv = survival_from_churn_prob(per_period_churn_prob(p_churn, horizon / period_days), int(v.periods))
    spend_rate = run_rate_clv(score_frame, period_days).to_numpy()
    preds = {
        "learned": clv_learned(spend_pred, margin=float(v.margin), horizon_days=horizon, period_days=period_days,
                               periods=int(v.periods), discount_rate=float(v.discount_rate)),
        "formula": clv_formula(float(v.margin) * spend_rate[:, None] * np.ones((1, int(v.periods))), surv,
                               float(v.discount_rate)),
        "run_rate": run_rate_clv(score_frame, horizon).to_numpy(),
    }
    truth = inputs["truth"].reindex(score_frame["customer_id"])
    fs = truth["future_spend"].to_numpy(dtype="float64")
    if np.isnan(fs).any():
        raise RuntimeError(f"{int(np.isnan(fs).sum())} scored customers have no ground truth")
    res = {k: {"spearman": spearman(p, fs), "capture20": spend_capture(p, fs, top=0.2)} for k, p in preds.items()}
    diag["true_future_spend_total"] = float(fs.sum())
    diag["share_with_future_spend"] = float((fs > 0).mean())
    say(f"{variant} seed {seed}: " + "; ".join(f"{k} Spearman {r['spearman']:.4f} capture {r['capture20']:.4f}"
                                               for k, r in res.items())
        + f" ({time.time() - t0:.0f}s: data {t_data:.0f}s, spend {spend_info['seconds']:.0f}s, "
          f"churn {churn_info['seconds']:.0f}s)")
    return {"seed": seed, "metrics": res, "diagnostics": diag, "seconds": round(time.time() - t0, 1),
            "spend_model": spend_info, "churn_model": churn_info}


def aggregate(runs: list[dict[str, Any]]) -> dict[str, dict[str, list[float]]]:
    out = {}
    for m in METHODS:
        out[m] = {}
        for k in ("spearman", "capture20"):
            x = np.array([r["metrics"][m][k] for r in runs])
            out[m][k] = [float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else 0.0]
    return out


def verdict(agg: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, Any]:
    v = {}
    for m in ("learned", "formula"):
        wins = {k: int(sum(r["metrics"][m][k] > r["metrics"]["run_rate"][k] for r in runs))
                for k in ("spearman", "capture20")}
        v[m] = {"beats_spearman": agg[m]["spearman"][0] > agg["run_rate"]["spearman"][0],
                "beats_capture20": agg[m]["capture20"][0] > agg["run_rate"]["capture20"][0],
                "seeds_won": wins, "n_seeds": len(runs)}
        v[m]["met"] = v[m]["beats_spearman"] and v[m]["beats_capture20"]
    return v


def pm(x: list[float]) -> str:
    return f"{x[0]:.4f} ± {x[1]:.4f}"


def write_report(res: dict[str, Any], meta: dict[str, Any]) -> None:
    (RESULTS / "clv_synthetic.json").write_text(json.dumps({"meta": meta, "results": res}, indent=2,
                                                           default=str) + "\n")
    L = ["# CLV on the synthetic customer base: predicted CLV vs the run-rate baseline", "",
         f"- command: `{meta['command']}`",
         f"- date: {meta['date']}; wall time {meta['wall_seconds'] / 60:.1f} min, CPU time of the process "
         f"{meta['cpu_seconds'] / 60:.1f} min, on {meta['machine']} (torch threads: {meta['threads']}; the machine "
         f"is shared with other jobs, load average at start {meta['load_average']}, so wall times are pessimistic)",
         f"- code: git {meta['git']} at the start of the run",
         f"- data: `generate_customer_base(n_customers={meta['n_customers']}, seed=s)` for s in {meta['seeds']}; "
         "events before the cutoff and the snapshot without its churn column are observed; truth = "
         "`base.truth.future_spend` over (cutoff, cutoff + 90 days]",
         "- models trained as `clm-pipeline` does (`load_inputs`, `clean_customers`, `build_views`, then "
         "`train(cfg)` with the pipeline's sub-run overrides and its `models.*` epochs): learn at cutoff − 90 days, "
         "score every customer of the view at the cutoff; the churn model takes the InfoGapVAE's features "
         "(`model.infogap_ckpt`, the VAE trained on the profile view), as in the pipeline",
         "- formula CLV: the pipeline's `value:` settings (margin 0.3, 12 periods of 30 days, 2 % discount per "
         "period), survival (1 − p)^t from the predicted 90-day churn probability",
         "- TARGET: beat run-rate on Spearman with the true future spend AND on top-20 % capture "
         "(mean over seeds)", ""]
    for variant, r in res.items():
        a = r["aggregate"]
        L += [f"## {variant}" + (" (events + cleaned customer snapshot, as `clm-pipeline`)" if variant == "pipeline"
                                 else " (event log only, no customer snapshot)"), "",
              "| method | Spearman vs true future spend | top-20 % capture "
              "| seeds beating run-rate (Spearman / capture) |",
              "|---|---|---|---|"]
        for m in METHODS:
            won = r["verdict"].get(m, {}).get("seeds_won")
            wtxt = f"{won['spearman']}/{len(r['runs'])} / {won['capture20']}/{len(r['runs'])}" if won else "—"
            L.append(f"| {LABELS[m]} | {pm(a[m]['spearman'])} | {pm(a[m]['capture20'])} | {wtxt} |")
        L += ["", "Per seed:", "",
              "| seed | " + " | ".join(f"{m} Spearman | {m} capture" for m in METHODS) + " | wall s |",
              "|---" * (2 * len(METHODS) + 2) + "|"]
        for run in r["runs"]:
            L.append(f"| {run['seed']} | " + " | ".join(f"{run['metrics'][m]['spearman']:.4f} | "
                                                        f"{run['metrics'][m]['capture20']:.4f}" for m in METHODS)
                     + f" | {run['seconds']:.0f} |")
        v = r["verdict"]
        L += ["", *(f"- {LABELS[m]}: Spearman {'beats' if v[m]['beats_spearman'] else 'does NOT beat'} run-rate, "
                    f"capture {'beats' if v[m]['beats_capture20'] else 'does NOT beat'} run-rate → "
                    f"**{'met' if v[m]['met'] else 'MISSED'}**" for m in ("learned", "formula"))]
        d = r["runs"][0]["diagnostics"]
        rounded = {k: round(x, 4) if isinstance(x, float) else x for k, x in d.items()}
        L += [f"- seed {r['runs'][0]['seed']} diagnostics: {json.dumps(rounded)}",
              ""]
    (RESULTS / "clv_synthetic.md").write_text("\n".join(L) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--n-customers", type=int, default=20000)
    ap.add_argument("--variants", nargs="+", default=["pipeline"], choices=["pipeline", "events only"])
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    quiet_run()
    start = run_start()
    res: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="clm_clv_") as tmp:
        freeze_package(Path(tmp))
        for variant in args.variants:
            runs = [run_seed(s, args.n_customers, variant, Path(tmp)) for s in args.seeds]
            agg = aggregate(runs)
            res[variant] = {"runs": runs, "aggregate": agg, "verdict": verdict(agg, runs)}
            say(f"{variant}: " + "; ".join(f"{m} Spearman {pm(a['spearman'])} capture {pm(a['capture20'])}"
                                          for m, a in agg.items()))
            say(f"{variant}: verdict {res[variant]['verdict']}")
    meta = {**run_meta("bench_clv_synthetic.py", start), "n_customers": args.n_customers, "seeds": args.seeds}
    say(f"done in {meta['wall_seconds'] / 60:.1f} min (CPU {meta['cpu_seconds'] / 60:.1f} min)")
    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        write_report(res, meta)
        say(f"wrote {RESULTS / 'clv_synthetic.md'} and .json")


if __name__ == "__main__":
    main()
