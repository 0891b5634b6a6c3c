"""Scale: time and peak memory of every stage at 100k, 300k and 1M synthetic customers (~20 events each).

Each stage runs in its own subprocess, so its peak memory (``VmHWM`` of that process: the inputs it
loads plus what the stage allocates) is measured alone. Stages, per size:

* ``gen``: ``generate_customer_base(n, events_per_customer=20)``; the customer table and the event
  log are then written to Parquet for the next stages (not timed).
* ``features``: ``build_customer_view(events, cutoff, horizon_days)`` on the whole event log.
* ``churn``: ``TableDataModule`` set-up (cleaning, split, encoding) and one epoch (training +
  validation) of ChurnClassifier with the ``churn_synthetic`` config, through a Lightning Trainer.
* ``score``: ``ChurnClassifier.load_from_checkpoint`` then ``predict_proba`` on every customer row.
* ``vae``: set-up and one epoch of InfoGapVAE (``vae_synthetic`` config), when the model exists.
* ``recsys``: ``interactions_from_file`` on the event log and one epoch of EmbeddingRecommender, when
  the model exists.
* ``recommend``: ``EmbeddingRecommender.load_from_checkpoint`` then ``recommend(k=10)`` for 100k users
  over the full catalogue, seen items masked (issue 7: bounded memory).

``gen`` and ``features`` are then called a second time in the same process ("second call" rows): the
first call is the stage's time; the second reuses memory the process has already touched. With gen or
features, a last process measures how fast this machine fills fresh memory the first time and again
(``first_touch``): on a VM the host may back guest memory lazily, which a large stage pays on first touch.

Targets (issue 6): time at 1M ≤ 12 × time at 100k for every stage; peak RSS at 1M ≤ 8 GB; features
from ~20M events < 60 s; ``predict_proba`` ≥ 200k rows/s on 2 cores. Wall times are disturbed by the
other jobs that share the cores, so CPU seconds (all threads of the stage's process) are recorded too.

Commands::

    python experiments/bench_scale.py                                   # 100k, 300k, 1M; all stages
    python experiments/bench_scale.py --sizes 100000 --stages gen features
    python experiments/bench_scale.py --stages gen features --repeats 3 --tag features   # best of 3, own section
    python experiments/bench_scale.py --stage features --n 100000 --workdir /tmp/x   # one stage (internal)

Writes ``experiments/results/perf_scale.json`` and the "Scale" section of ``experiments/results/performance.md``
(with ``--tag T``: ``perf_scale_T.json`` and a section of its own).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see bench_throughput.py; recorded with the results
sys.path.insert(0, str(Path(__file__).resolve().parent))

STAGES = ("gen", "features", "churn", "score", "vae", "recsys", "recommend")
N_THREADS = int(os.environ.get("CLM_BENCH_THREADS", "2"))
TARGETS = {"ratio": 12.0, "peak_gb": 8.0, "features_s": 60.0, "score_rows_per_s": 200_000.0}


# ---------------------------------------------------------------------------- inside one stage process
def _status_mb(key: str) -> float:
    from bench_throughput import status_mb

    return status_mb(key)


class Clock:
    """Wall and process-CPU seconds of a block; the CPU seconds split into user and system (kernel) time."""

    def __enter__(self) -> "Clock":
        self.t0, self.c0, self.os0 = time.perf_counter(), time.process_time(), os.times()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.wall, self.cpu = time.perf_counter() - self.t0, time.process_time() - self.c0
        t = os.times()
        self.user, self.sys = t.user - self.os0.user, t.system - self.os0.system


def _compose(overrides: list[str], out: Path) -> Any:
    from bench_throughput import compose

    return compose(overrides, out)


def _second_call(fn: Any) -> tuple[dict[str, Any], Any]:
    """Time ``fn()`` again in this process (the caller has dropped the first call's result); returns times and value.

    The second call reuses memory this process has already touched. On a VM whose host backs guest
    memory lazily (this one: see ``first_touch`` in the results), the first call also pays the host's
    first-touch cost of every fresh page, which grows with the footprint, not with the work.
    """
    import gc

    gc.collect()
    with Clock() as c:
        value = fn()
    return {"wall_s": c.wall, "cpu_s": c.cpu, "user_s": c.user, "sys_s": c.sys}, value


def first_touch(mb: int) -> dict[str, float]:
    """GB/s of filling ``mb`` MB of fresh memory, the first time and again after freeing it (one process)."""
    import numpy as np

    rates = []
    for _ in range(3):
        with Clock() as c:
            a = np.empty((mb << 20) // 8)
            a.fill(1.0)
        del a
        rates.append({"gb_per_s": mb / 1024 / c.wall, "sys_s": c.sys})
    return {"mb": mb, "first": rates[0], "again": rates[1:]}


def _fit_one_epoch(cfg: Any, dm: Any, out: Path) -> tuple[Any, Any, Clock]:
    """Build the model and a Trainer from ``cfg`` (checkpoint + TensorBoard as in a normal run) and fit one epoch."""
    import hydra

    from clm_torch.train import instantiate_loggers
    from clm_torch.utils.io import AtomicCheckpointIO

    model = hydra.utils.instantiate(cfg.model, **dm.model_kwargs(), _convert_="all")
    if hasattr(model, "set_preprocessing") and hasattr(dm, "preprocessing_state"):
        model.set_preprocessing(dm.preprocessing_state())
    ckpt = hydra.utils.instantiate(cfg.callbacks.model_checkpoint, dirpath=str(out / "checkpoints"))
    trainer = hydra.utils.instantiate(cfg.trainer, max_epochs=1, min_epochs=1, callbacks=[ckpt],
                                      logger=instantiate_loggers(cfg.get("logger")) or False,
                                      plugins=[AtomicCheckpointIO()], enable_progress_bar=False,
                                      enable_model_summary=False, _convert_="partial")
    with Clock() as clock:
        trainer.fit(model, datamodule=dm)
    return model, trainer, clock


def run_stage(stage: str, n: int, workdir: Path) -> dict[str, Any]:
    import pandas as pd
    import torch

    torch.set_num_threads(N_THREADS)
    from bench_throughput import quiet_lightning

    quiet_lightning()
    workdir.mkdir(parents=True, exist_ok=True)
    meta_path = workdir / "meta.json"
    res: dict[str, Any] = {"stage": stage, "n": n}
    if stage == "gen":
        from clm_torch.data.synthetic import generate_customer_base

        with Clock() as c:
            base = generate_customer_base(n, seed=0, events_per_customer=20)
        res.update(wall_s=c.wall, cpu_s=c.cpu, user_s=c.user, sys_s=c.sys, rows=len(base.customers),
                   events=len(base.events))
        res["peak_rss_mb_first"] = _status_mb("VmHWM")
        del base  # the second call starts from what the first one freed
        res["again"], base = _second_call(lambda: generate_customer_base(n, seed=0, events_per_customer=20))
        base.customers.to_parquet(workdir / "customers.parquet", index=False)
        base.events.to_parquet(workdir / "events.parquet", index=False)
        meta_path.write_text(json.dumps({"cutoff": str(base.cutoff), "horizon_days": base.horizon_days,
                                         "rows": len(base.customers), "events": len(base.events)}))
    elif stage == "features":
        from clm_torch.data.events import build_customer_view

        meta = json.loads(meta_path.read_text())
        events = pd.read_parquet(workdir / "events.parquet")
        res["rss_inputs_mb"] = _status_mb("VmRSS")
        with Clock() as c:
            view = build_customer_view(events, meta["cutoff"], horizon_days=meta["horizon_days"])
        res.update(wall_s=c.wall, cpu_s=c.cpu, user_s=c.user, sys_s=c.sys, events=len(events),
                   customers=len(view.features))
        res["peak_rss_mb_first"] = _status_mb("VmHWM")
        del view
        res["again"], _ = _second_call(lambda: build_customer_view(events, meta["cutoff"],
                                                                   horizon_days=meta["horizon_days"]))
    elif stage in ("churn", "vae"):
        import hydra

        from clm_torch.data.sources.tables import FrameSource

        customers = pd.read_parquet(workdir / "customers.parquet")
        res["rss_inputs_mb"] = _status_mb("VmRSS")
        out = workdir / f"run_{stage}"
        cfg = _compose([f"experiment={'churn_synthetic' if stage == 'churn' else 'vae_synthetic'}"], out)
        with Clock() as setup:
            dm = hydra.utils.instantiate(cfg.data, source=FrameSource(customers, target="churn", id_col="customer_id"),
                                         _convert_="partial")
            dm.setup("fit")
        del customers
        model, trainer, fit = _fit_one_epoch(cfg, dm, out)
        n_train = len(dm.tensors["train"]["row"])
        res.update(wall_s=fit.wall, cpu_s=fit.cpu, setup_wall_s=setup.wall, setup_cpu_s=setup.cpu, train_rows=n_train,
                   val_rows=len(dm.tensors["val"]["row"]), batch_size=dm.batch_size,
                   train_rows_per_s=n_train / fit.wall,
                   params=sum(p.numel() for p in model.parameters()))
        if stage == "churn":
            res["checkpoint"] = str(out / "checkpoints" / "last.ckpt")
            (workdir / "churn_ckpt.txt").write_text(res["checkpoint"])
    elif stage == "score":
        from clm_torch.models.churn import ChurnClassifier

        model = ChurnClassifier.load_from_checkpoint((workdir / "churn_ckpt.txt").read_text().strip())
        model.eval()  # Lightning loads in training mode; predict_proba switches itself, the diagnostics below do not
        customers = pd.read_parquet(workdir / "customers.parquet").drop(columns=["churn"])
        res["rss_inputs_mb"] = _status_mb("VmRSS")
        with Clock() as c:
            p = model.predict_proba(customers)
        enc = model.encoder.transform(customers.iloc[:200_000])  # where the time goes: encoding vs the network
        with Clock() as ce:
            model.encoder.transform(customers.iloc[:200_000])
        m = len(enc["num"])
        chunks = {}
        step = int(model.forward_rows)  # predict_proba's forward pass on CPU (fused embeddings)
        for chunk in (65536, 8192, step, 1024):
            with Clock() as cf, torch.inference_mode(), model.fused_inference():
                for i in range(0, m, chunk):
                    model.predict_batch({k: v[i: i + chunk] for k, v in enc.items()})
            chunks[chunk] = {"rows_per_s": m / cf.wall, "rows_per_cpu_s": m / cf.cpu}
        res["network_by_chunk"] = chunks
        cf = Clock()
        cf.wall, cf.cpu = m / chunks[step]["rows_per_s"], m / chunks[step]["rows_per_cpu_s"]
        res.update(wall_s=c.wall, cpu_s=c.cpu, rows=len(customers), rows_per_s=len(customers) / c.wall,
                   rows_per_cpu_s=len(customers) / c.cpu, finite=bool(pd.Series(p).notna().all()),
                   encode_rows_per_s=m / ce.wall, encode_rows_per_cpu_s=m / ce.cpu,
                   network_rows_per_s=m / cf.wall, network_rows_per_cpu_s=m / cf.cpu,
                   k_ensemble=int(model.hparams.k_ensemble), hidden=list(model.hparams.hidden))
    elif stage == "recsys":
        import hydra

        out = workdir / "run_recsys"
        cfg = _compose(["model=recommender", "data=interactions", f"data.path={workdir / 'events.parquet'}",
                        "data.user_col=customer_id", "data.item_col=item_id", "data.time_col=timestamp",
                        "task_name=recsys_scale", "trainer.gradient_clip_val=0.0"], out)
        with Clock() as setup:
            dm = hydra.utils.instantiate(cfg.data, _convert_="partial")
            dm.setup("fit")
        res["rss_inputs_mb"] = float("nan")
        model, trainer, fit = _fit_one_epoch(cfg, dm, out)
        res.update(wall_s=fit.wall, cpu_s=fit.cpu, setup_wall_s=setup.wall, setup_cpu_s=setup.cpu,
                   params=sum(p.numel() for p in model.parameters()), users=dm.n_users, items=dm.n_items)
        (workdir / "recsys_ckpt.txt").write_text(str(out / "checkpoints" / "last.ckpt"))
    elif stage == "recommend":
        import numpy as np

        from clm_torch.models.recommender import EmbeddingRecommender

        model = EmbeddingRecommender.load_from_checkpoint((workdir / "recsys_ckpt.txt").read_text().strip())
        model.eval()
        users = model.user_index[:100_000].tolist()
        res["rss_inputs_mb"] = _status_mb("VmRSS")
        with Clock() as c:
            recs = model.recommend(users, k=10)
        res.update(wall_s=c.wall, cpu_s=c.cpu, users=len(users), users_per_s=len(users) / c.wall,
                   shape=list(recs.shape), valid=bool(np.all(recs != None)))  # noqa: E711
    elif stage == "touch":
        res.update(first_touch(n))
    else:
        raise SystemExit(f"unknown stage {stage}")
    res["peak_rss_mb"] = _status_mb("VmHWM")
    return res


# ---------------------------------------------------------------------------- driver
def stage_available(stage: str) -> str | None:
    """None if the stage can run, else why not."""
    import importlib.util

    root = Path(__file__).resolve().parents[1]
    need = {"vae": ("clm_torch.models.infogap_vae", "vae_synthetic"),
            "recsys": ("clm_torch.models.recommender", None), "recommend": ("clm_torch.models.recommender", None)}
    if stage in need:
        module, exp = need[stage]
        if importlib.util.find_spec(module) is None:
            return f"{module} not found"
        if exp and not (root / "configs" / "experiment" / f"{exp}.yaml").exists():
            return f"configs/experiment/{exp}.yaml not found"
    return None


def run_in_subprocess(stage: str, n: int, workdir: Path, timeout: int) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--stage", stage, "--n", str(n), "--workdir", str(workdir)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"stage": stage, "n": n, "error": f"timed out after {timeout} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        return {"stage": stage, "n": n, "error": (proc.stderr or proc.stdout)[-1500:]}
    res = json.loads(lines[-1][len("RESULT "):])
    res["process_wall_s"] = time.perf_counter() - t0
    return res


def _fmt(v: float | None, spec: str = ".1f") -> str:
    return "–" if v is None else format(v, spec)


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    sizes = result["sizes"]
    lo, hi = min(sizes), max(sizes)
    by = {(r["stage"], r["n"]): r for r in result["stages"]}
    gen_once = any(r["stage"] == "gen" and "wall_s" in r and "wall_s_runs" not in r for r in result["stages"])  # older runs
    lines = [
        f"Command: `{result['command']}`  ",
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, {m['torch_threads']} torch threads per stage, "
        f"OMP_WAIT_POLICY={m['omp_wait_policy']}; {m['date']}; 1-min load average at start "
        f"{m['load_avg_1min_at_start']} (other jobs share these cores: wall times are inflated, CPU seconds less so). "
        "Each stage is a separate process; peak = its VmHWM (inputs it loaded included)."
        + (f" Every stage{' but gen' if gen_once else ''} ran {result['repeats']} times; the table shows the fastest run (by wall time), "
           "the notes below list all." if result.get("repeats", 1) > 1 else ""),
        "",
        "| stage | " + " | ".join(f"{n:,}: wall s / CPU s / peak GB" for n in sizes)
        + f" | {hi // 1000}k ÷ {lo // 1000}k (wall, CPU) | targets |",
        "|---|" + "---|" * len(sizes) + "---|---|",
    ]
    # data set-up (before the epoch) as rows of their own: "churn: data set-up" etc.
    for r in list(result["stages"]):
        if "setup_wall_s" in r:
            by[(f"{r['stage']}: data set-up", r["n"])] = {**r, "wall_s": r["setup_wall_s"], "cpu_s": r["setup_cpu_s"]}
    # a second call in the same process (gen, features) as a row of its own
    for r in list(result["stages"]):
        if "again" in r:
            by[(f"{r['stage']}: second call", r["n"])] = {**r, **r["again"]}
    names = []
    for stage in result["stage_names"]:
        if any((f"{stage}: data set-up", n) in by for n in sizes):
            names.append(f"{stage}: data set-up")
        if any((f"{stage}: second call", n) in by for n in sizes):
            names.append(stage)
            stage = f"{stage}: second call"
        names.append(stage if stage not in ("churn", "vae", "recsys") else f"{stage}: one epoch")
        if names[-1] != stage:
            for n in sizes:
                if (stage, n) in by:
                    by[(names[-1], n)] = by[(stage, n)]
    for stage in names:
        cells, missing = [], []
        for n in sizes:
            r = by.get((stage, n))
            if r is None or "error" in r or "skipped" in r:
                cells.append("skipped: " + r["skipped"] if r and "skipped" in r else
                             ("**failed**" if r else "–"))
                missing.append(n)
                continue
            cells.append(f"{r['wall_s']:.1f} / {r['cpu_s']:.1f} / {r['peak_rss_mb'] / 1024:.2f}")
        ratio, verdicts = "–", []
        a, b = by.get((stage, lo)), by.get((stage, hi))
        if a and b and "wall_s" in a and "wall_s" in b and lo != hi:
            rw, rc = b["wall_s"] / a["wall_s"], b["cpu_s"] / a["cpu_s"]
            ratio = f"{rw:.1f}×, {rc:.1f}×"
            verdicts.append(f"≤ 12×: {'met' if min(rw, rc) <= TARGETS['ratio'] else '**missed**'}"
                            + (" (CPU only)" if rc <= TARGETS["ratio"] < rw else ""))
        if b and "peak_rss_mb" in b:
            verdicts.append(f"peak ≤ 8 GB: {'met' if b['peak_rss_mb'] / 1024 <= TARGETS['peak_gb'] else '**missed**'}")
        if stage == "features" and b and "wall_s" in b:
            verdicts.append(f"{b['events'] / 1e6:.1f}M events < 60 s: "
                            f"{'met' if b['wall_s'] < TARGETS['features_s'] else '**missed**'} ({b['wall_s']:.1f} s wall)")
        if stage == "score" and b and "rows_per_s" in b:
            verdicts.append(f"≥ 200k rows/s: {'met' if b['rows_per_s'] >= TARGETS['score_rows_per_s'] else '**missed**'}"
                            f" ({b['rows_per_s']:,.0f} rows/s wall, {b['rows_per_cpu_s']:,.0f} per CPU-s)")
        if stage == "recommend" and b and "users_per_s" in b:
            verdicts.append(f"top-10 for {b['users']:,} users over the full catalogue: {b['wall_s']:.1f} s "
                            f"({b['users_per_s']:,.0f} users/s)")
        lines.append(f"| {stage} | " + " | ".join(cells) + f" | {ratio} | {'; '.join(verdicts) or '–'} |")
    lines.append("")
    # details
    details = []
    for r in result["stages"]:
        if "error" in r:
            details.append(f"* {r['stage']} at {r['n']:,}: failed: `{r['error'].strip().splitlines()[-1][:300]}`")
    for r in result["stages"]:
        if "wall_s_runs" in r:
            details.append(f"* {r['stage']} at {r['n']:,}: all runs, wall s "
                           + ", ".join(_fmt(x, ".2f") for x in r["wall_s_runs"]) + "; CPU s "
                           + ", ".join(_fmt(x, ".2f") for x in r["cpu_s_runs"]) + ".")
    for r in result["stages"]:
        if "again_wall_s_runs" in r:
            details.append(f"* {r['stage']} at {r['n']:,}: second calls, wall s "
                           + ", ".join(_fmt(x, ".2f") for x in r["again_wall_s_runs"]) + ".")
    for stage in [x for st in result["stage_names"] for x in (st, f"{st}: second call")]:
        a, b = by.get((stage, lo), {}), by.get((stage, hi), {})
        if "user_s" in a and "user_s" in b and lo != hi:
            details.append(f"* {stage}, where the CPU time goes (fastest runs): user {a['user_s']:.2f} → {b['user_s']:.2f} s "
                           f"(**{b['user_s'] / a['user_s']:.1f}×**), system {a['sys_s']:.2f} → {b['sys_s']:.2f} s "
                           f"({b['sys_s'] / max(a['sys_s'], 1e-9):.0f}×).")
    for n in sizes:
        g, c, v, s = (by.get((k, n), {}) for k in ("gen", "churn", "vae", "score"))
        if "events" in g:
            details.append(f"* {n:,} customers: {g['rows']:,} table rows, {g['events']:,} events.")
        elif any("setup_wall_s" in r for r in (c, v)) or "encode_rows_per_s" in s:
            details.append(f"* {n:,} customers:")
        for name, r in (("churn", c), ("vae", v)):
            if "setup_wall_s" in r:
                details.append(f"  * {name}: data set-up (clean + split + encode) {r['setup_wall_s']:.1f} s wall / "
                               f"{r['setup_cpu_s']:.1f} s CPU; one epoch = {r['train_rows']:,} training rows at batch "
                               f"{r['batch_size']} + {r['val_rows']:,} validation rows ({r['params']:,} parameters).")
        if "encode_rows_per_s" in s:
            details.append(f"  * score: encoding alone {s['encode_rows_per_s']:,.0f} rows/s "
                           f"({s['encode_rows_per_cpu_s']:,.0f} per CPU-s); the network alone (k_ensemble="
                           f"{s['k_ensemble']}, hidden={s['hidden']}) {s['network_rows_per_s']:,.0f} rows/s "
                           f"({s['network_rows_per_cpu_s']:,.0f} per CPU-s)"
                           " in predict_proba's fused forward passes of 2,048 rows"
                           + ("; by chunk size: " + ", ".join(f"{int(c):,} rows → {v['rows_per_s']:,.0f} rows/s "
                                                             f"({v['rows_per_cpu_s']:,.0f} per CPU-s)"
                                                             for c, v in s["network_by_chunk"].items())
                              if "network_by_chunk" in s else "") + ".")
    ft = result.get("first_touch")
    if ft and "first" in ft:
        details.append(
            f"* First touch of memory on this machine (a fresh process fills {ft['mb']:,} MB, frees it, fills it again): "
            f"{ft['first']['gb_per_s']:.2f} GB/s the first time ({ft['first']['sys_s']:.2f} s system time), then "
            + ", ".join(f"{a['gb_per_s']:.1f}" for a in ft["again"]) + " GB/s. A stage's first call pays the slow rate "
            "for every page beyond the memory the machine has used recently; the second call in the same process "
            "reuses pages already touched.")
    return "\n".join(lines + details) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", type=int, default=[100_000, 300_000, 1_000_000])
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    p.add_argument("--workdir", type=Path, default=None, help="where the generated data go (default: a temp dir)")
    p.add_argument("--timeout", type=int, default=5400, help="seconds per stage")
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--repeats", type=int, default=1,
                   help="run every stage this many times (fresh processes) and keep the fastest (by wall time); all are "
                        "recorded. gen rewrites the same data each time")
    p.add_argument("--tag", default="", help="write perf_scale_<tag>.json and its own performance.md section")
    p.add_argument("--render", type=Path,
                   help="only re-render performance.md from this perf_scale[_<tag>].json (with its --tag)")
    p.add_argument("--touch-mb", type=int, default=2048,
                   help="MB of fresh memory for the first-touch diagnostic (runs with gen or features; 0 = skip)")
    p.add_argument("--stage", choices=(*STAGES, "touch"), help=argparse.SUPPRESS)  # internal: run one stage here
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.stage:
        try:
            res = run_stage(args.stage, args.n, args.workdir)
        except Exception:  # noqa: BLE001 - reported to the driver
            traceback.print_exc()
            sys.exit(1)
        print("RESULT " + json.dumps(res), flush=True)
        return None

    from bench_throughput import command_line, machine_info, publish

    if args.render:
        result = json.loads(args.render.read_text())
        suffix = f"_{args.tag}" if args.tag else ""
        publish(f"scale{suffix}", markdown(result), f"Scale: 100k → 1M customers{' (' + args.tag + ')' if args.tag else ''}")
        return result
    root = args.workdir or Path(tempfile.mkdtemp(prefix="clm_bench_scale_"))
    result: dict[str, Any] = {"command": command_line(), "machine": machine_info(), "sizes": args.sizes,
                              "stage_names": args.stages, "targets": TARGETS, "repeats": args.repeats, "stages": []}
    for n in args.sizes:
        for stage in args.stages:
            why = stage_available(stage)
            if why:
                r = {"stage": stage, "n": n, "skipped": why}
            else:
                runs = [run_in_subprocess(stage, n, root / str(n), args.timeout)
                        for _ in range(max(1, args.repeats))]
                ok = [x for x in runs if "wall_s" in x]
                r = min(ok, key=lambda x: x["wall_s"]) if ok else runs[-1]
                if len(runs) > 1:
                    r = {**r, "wall_s_runs": [x.get("wall_s") for x in runs], "cpu_s_runs": [x.get("cpu_s") for x in runs]}
                    again = [x["again"] for x in ok if "again" in x]
                    if again:  # the fastest second call, whichever process it came from
                        r["again"] = min(again, key=lambda x: x["wall_s"])
                        r["again_wall_s_runs"] = [a["wall_s"] for a in again]
            result["stages"].append(r)
            shown = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items() if k != "error"}
            print(f"[scale] {stage} n={n:,}: {shown}" + (f"\n{r['error']}" if "error" in r else ""), flush=True)
    if args.touch_mb > 0 and {"gen", "features"} & set(args.stages):
        result["first_touch"] = run_in_subprocess("touch", args.touch_mb, root, args.timeout)
        print(f"[scale] first touch: {result['first_touch']}", flush=True)
    suffix = f"_{args.tag}" if args.tag else ""
    publish(f"scale{suffix}", markdown(result), f"Scale: 100k → 1M customers{' (' + args.tag + ')' if args.tag else ''}",
            write=not args.no_write, json_name=f"perf_scale{suffix}.json", result=result)
    return result


if __name__ == "__main__":
    main()
