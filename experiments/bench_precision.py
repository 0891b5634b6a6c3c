"""fp32 against bf16-mixed (and 16-mixed on a GPU): training speed and the final metric.

Every model is trained through the package's own path (``train(cfg)`` on the composed Hydra config:
DataModule, Lightning Trainer, callbacks) for a fixed number of epochs (early stopping off), once per
precision and seed, interleaved (fp32, bf16, fp32, bf16, ...) because other jobs share the CPU. The
quality is always measured in fp32: the best checkpoint is re-tested by a ``32-true`` Trainer, so a
difference in the metric comes from how the weights were trained, not from evaluating in bf16.

Speed: training samples per wall second over ``fit`` (training + validation epochs), and per CPU
second of the process (robust to other jobs sharing the cores).

Commands::

    python experiments/bench_precision.py                                  # churn + vae on Telco, CPU
    python experiments/bench_precision.py --models churn --epochs 10 --seeds 0 1 2
    python experiments/bench_precision.py --accelerator gpu --precisions 32-true bf16-mixed 16-mixed  # on a GPU

Writes ``experiments/results/perf_precision[_<accelerator>].json`` and the "Precision" section of
``experiments/results/performance.md``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see bench_throughput.py; recorded with the results

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from bench_throughput import command_line, compose, experiment_exists, machine_info, publish, quiet_lightning  # noqa: E402,I001

N_THREADS = int(os.environ.get("CLM_BENCH_THREADS", "2"))

# model -> (experiment, metrics reported (name, higher is better), extra overrides)
MODELS: dict[str, tuple[str, list[tuple[str, bool]], list[str]]] = {
    "churn": ("churn_telco", [("test/auroc", True), ("test/log_loss", False), ("test/brier", False)], []),
    "vae": ("vae_telco", [("test/loss", False), ("test/impute_nrmse", False), ("test/impute_acc", True)], []),
    "recsys": ("recsys_movielens", [("test/ndcg@10", True), ("test/recall@20", True)], []),
}


def make_fit_timer() -> Any:
    import lightning as L

    class FitTimer(L.Callback):
        """Wall and process-CPU seconds from the start to the end of ``fit``, and training batches seen."""

        def __init__(self) -> None:
            self.t0 = self.c0 = 0.0
            self.wall = self.cpu = 0.0
            self.samples = 0

        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            self.t0, self.c0 = time.perf_counter(), time.process_time()

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            first = next(iter(batch.values())) if isinstance(batch, dict) else batch[0]
            self.samples += len(first)

        def on_train_end(self, trainer: Any, pl_module: Any) -> None:
            self.wall, self.cpu = time.perf_counter() - self.t0, time.process_time() - self.c0

    return FitTimer()


def run_once(model: str, precision: str, seed: int, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    import hydra
    import lightning as L

    from clm_torch.train import train

    experiment, metric_names, extra = MODELS[model]
    out = tmp / f"{model}_{precision}_{seed}"
    overrides = [f"experiment={experiment}", f"trainer.precision={precision}", f"trainer.max_epochs={args.epochs}",
                 f"trainer.min_epochs={args.epochs}", f"trainer.accelerator={args.accelerator}", f"seed={seed}",
                 "callbacks.early_stopping=null", "callbacks.model_summary=null", *extra, *args.override]
    cfg = compose(overrides, out)
    timer = make_fit_timer()
    import importlib

    train_mod = importlib.import_module("clm_torch.train")  # the module (clm_torch.train is also a function)
    orig = train_mod.instantiate_callbacks
    train_mod.instantiate_callbacks = lambda c: [*orig(c), timer]  # add the timer without touching the config
    try:
        metrics, objects = train(cfg)
    finally:
        train_mod.instantiate_callbacks = orig
    trained_in = {k: metrics.get(k) for k, _ in metric_names}
    # the quality, always evaluated in fp32 from the best checkpoint
    cls = hydra.utils.get_class(cfg.model._target_)
    best = cls.load_from_checkpoint(metrics["best_ckpt"])
    tester = L.Trainer(accelerator=args.accelerator, devices=1, precision="32-true", logger=False,
                       enable_progress_bar=False, enable_model_summary=False)
    res = tester.test(best, datamodule=objects["datamodule"], verbose=False)[0]
    fp32 = {k: float(res[k]) for k, _ in metric_names if k in res}
    return {"model": model, "precision": precision, "seed": seed, "epochs": args.epochs,
            "fit_wall_s": timer.wall, "fit_cpu_s": timer.cpu, "train_samples": timer.samples,
            "samples_per_s": timer.samples / timer.wall if timer.wall else float("nan"),
            "samples_per_cpu_s": timer.samples / timer.cpu if timer.cpu else float("nan"),
            "metrics_fp32_eval": fp32, "metrics_in_training_precision": trained_in,
            "param_dtypes": sorted({str(p.dtype) for p in best.parameters()})}


def summarise(runs: list[dict[str, Any]], precisions: list[str]) -> list[dict[str, Any]]:
    out = []
    for model in dict.fromkeys(r["model"] for r in runs):
        _, metric_names, _ = MODELS[model]
        base = [r for r in runs if r["model"] == model and r["precision"] == precisions[0]]
        for prec in precisions:
            rs = [r for r in runs if r["model"] == model and r["precision"] == prec]
            if not rs:
                continue
            row = {"model": model, "precision": prec, "n_runs": len(rs),
                   "samples_per_s": statistics.median(r["samples_per_s"] for r in rs),
                   "samples_per_cpu_s": statistics.median(r["samples_per_cpu_s"] for r in rs)}
            # speed relative to the first precision, per seed (paired, side by side)
            pairs = [(r, b) for r in rs for b in base if b["seed"] == r["seed"]]
            row["speed_vs_base_wall"] = statistics.median(r["samples_per_s"] / b["samples_per_s"] for r, b in pairs)
            row["speed_vs_base_cpu"] = statistics.median(r["samples_per_cpu_s"] / b["samples_per_cpu_s"]
                                                         for r, b in pairs)
            for k, _ in metric_names:
                vals = [r["metrics_fp32_eval"].get(k) for r in rs if r["metrics_fp32_eval"].get(k) is not None]
                if vals:
                    row[k] = statistics.mean(vals)
                    row[f"{k}_all"] = vals
                    diffs = [r["metrics_fp32_eval"][k] - b["metrics_fp32_eval"][k] for r, b in pairs
                             if k in r["metrics_fp32_eval"] and k in b["metrics_fp32_eval"]]
                    row[f"{k}_diff_vs_base"] = statistics.mean(diffs) if diffs else None
            out.append(row)
    return out


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f"Command: `{result['command']}`  ",
        f"Machine: {m['cpu']}, {m['cores']} cores (AVX-512F: {m['avx512f']}, AVX-512 BF16: {m['avx512_bf16']}, "
        f"AMX-BF16: {m['amx_bf16']}), accelerator `{result['accelerator']}`, torch {m['torch']}, lightning "
        f"{m['lightning']}, {m['torch_threads']} threads, OMP_WAIT_POLICY={m['omp_wait_policy']}; {m['date']}; "
        f"1-min load average at start {m['load_avg_1min_at_start']} (shared cores).  ",
        f"{result['epochs']} epochs per run (early stopping off), seeds {result['seeds']}, runs interleaved. "
        "Metrics: the best checkpoint re-tested in fp32 (mean over seeds); Δ = this precision − "
        f"{result['precisions'][0]}, paired by seed. Speed: training samples per second of `fit` (median over seeds).",
        "",
    ]
    for model in dict.fromkeys(r["model"] for r in result["summary"]):
        rows = [r for r in result["summary"] if r["model"] == model]
        _, metric_names, _ = MODELS[model]
        names = [k for k, _ in metric_names if k in rows[0]]
        lines += [f"**{model}** (`experiment={MODELS[model][0]}`)", "",
                  "| precision | samples/s (wall) | samples/CPU-s | speed vs " + result["precisions"][0] + " (wall, CPU) | "
                  + " | ".join(f"{k} (Δ)" for k in names) + " |",
                  "|---|---:|---:|---|" + "---:|" * len(names)]
        for r in rows:
            cells = []
            for k in names:
                d = r.get(f"{k}_diff_vs_base")
                cells.append(f"{r[k]:.4f}" + (f" ({d:+.4f})" if d is not None and r["precision"] != result["precisions"][0]
                                              else ""))
            lines.append(f"| {r['precision']} | {r['samples_per_s']:,.0f} | {r['samples_per_cpu_s']:,.0f} | "
                         f"{r['speed_vs_base_wall']:.2f}×, {r['speed_vs_base_cpu']:.2f}× | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["churn", "vae"], choices=list(MODELS))
    p.add_argument("--precisions", nargs="+", default=["32-true", "bf16-mixed"])
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides for every run")
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--tag", default="", help="suffix of the json file and of the section (e.g. 'recsys')")
    args = p.parse_args(argv)
    torch.set_num_threads(N_THREADS)
    quiet_lightning()
    tmp = Path(tempfile.mkdtemp(prefix="clm_bench_precision_"))
    runs = []
    for model in args.models:
        if not experiment_exists(MODELS[model][0]):
            print(f"[{model}] configs/experiment/{MODELS[model][0]}.yaml not found: skipped", flush=True)
            continue
        for seed in args.seeds:
            for prec in args.precisions:
                r = run_once(model, prec, seed, args, tmp)
                runs.append(r)
                print(f"[{model}] {prec} seed {seed}: {r['samples_per_s']:,.0f} samples/s, "
                      f"{r['samples_per_cpu_s']:,.0f} samples/CPU-s; fp32 eval {r['metrics_fp32_eval']}", flush=True)
    result = {"command": command_line(), "machine": machine_info(), "accelerator": args.accelerator,
              "epochs": args.epochs, "seeds": args.seeds, "precisions": args.precisions, "runs": runs,
              "summary": summarise(runs, args.precisions)}
    if args.accelerator != "cpu" and torch.cuda.is_available():
        result["machine"]["gpu"] = torch.cuda.get_device_name(0)
    suffix = ("" if args.accelerator == "cpu" else f"_{args.accelerator}") + (f"_{args.tag}" if args.tag else "")
    publish(f"precision{suffix}", markdown(result), f"Precision ({args.accelerator}{', ' + args.tag if args.tag else ''})",
            write=not args.no_write, json_name=f"perf_precision{suffix}.json", result=result)
    return result


if __name__ == "__main__":
    main()
