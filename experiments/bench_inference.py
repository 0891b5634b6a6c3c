"""Inference: ``predict_proba`` rows/s on a million raw customers, variants side by side (issue 6, point 4).

One process, one machine state, the same raw frame for every variant:

* the default ChurnClassifier (``experiment=churn_synthetic``: 8 MLP members of [64, 64] + 8 additive
  members), trained for one epoch on 20k synthetic customers, saved and reloaded;
* ``predict_proba`` as shipped: raw rows encoded in chunks of 65,536, forward passes of 2,048 rows,
  categorical embeddings fused into the first layers (:meth:`ChurnClassifier.fused_inference`);
* ``predict_proba(compile=True)``: the same forward passes through ``torch.compile``; its first call
  (which compiles) is reported apart from the later calls;
* the same model without the fusion, and without the small forward passes (one pass per chunk), to
  show what each step brings;
* the encoding alone (``FeatureEncoder.transform`` of the whole frame) and the network alone (on
  pre-encoded tensors);
* the previous default architecture (members of [256, 256], ~4.7x the multiply-adds per row),
  trained and scored the same way.

With ``--recommend`` (section "inference_recommend"): the default ``recsys_movielens`` recommender,
trained for one epoch on R1's training split (the cost of ``recommend`` depends on the architecture
and the catalogue, not on how long it trained), saved, reloaded with ``load_from_checkpoint``, then
``recommend(k=10)`` for every MovieLens user over the full 9,066-movie catalogue, seen items masked:
the median and the best of ``--repeats`` calls after a warm-up. Target: under 1 s.

Every figure is the best of ``--repeats`` timed calls after one warm-up call. The probabilities of
every variant of one model are checked against each other (max abs difference reported).

    python experiments/bench_inference.py                       # → performance.md, section "inference"
    python experiments/bench_inference.py --n 200000 --no-write # quick
    python experiments/bench_inference.py --recommend           # only the MovieLens recommend timing
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_throughput import command_line, compose, machine_info, publish, quiet_lightning  # noqa: E402,I001


def train_checkpoint(overrides: list[str], workdir: Path) -> Path:
    """One epoch of the ``churn_synthetic`` config (plus ``overrides``) on 20k customers → a checkpoint."""
    import hydra
    import lightning as L

    from clm_torch.data.sources import FrameSource
    from clm_torch.data.synthetic import generate_customer_base
    from clm_torch.train import build_model

    cfg = compose(["experiment=churn_synthetic", *overrides], workdir / "run")
    small = generate_customer_base(20_000, seed=1).customers
    dm = hydra.utils.instantiate(cfg.data, source=FrameSource(small, target="churn", id_col="customer_id"),
                                 _convert_="partial")
    model = build_model(cfg, dm)
    trainer = L.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=str(workdir), accelerator="cpu", devices=1, enable_checkpointing=False)
    trainer.fit(model, datamodule=dm)
    path = workdir / "churn.ckpt"
    trainer.save_checkpoint(path)
    return path


def best_of(fn: Any, repeats: int) -> tuple[float, Any]:
    out = fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def measure(ckpt: Path, frame: Any, repeats: int, full: bool) -> list[dict[str, Any]]:
    from clm_torch.models.churn import ChurnClassifier

    model = ChurnClassifier.load_from_checkpoint(ckpt)
    model.eval()
    n = len(frame)
    rows: list[dict[str, Any]] = []

    def add(name: str, fn: Any) -> np.ndarray:
        sec, out = best_of(fn, repeats)
        rows.append({"variant": name, "seconds": sec, "rows_per_s": n / sec})
        print(f"  {name:60s} {sec:7.2f} s  {n / sec:>12,.0f} rows/s", flush=True)
        return np.asarray(out)

    ref = add("predict_proba (as shipped)", lambda: model.predict_proba(frame))
    if not full:
        return rows
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    cold = not Path(cache_dir()).exists() or not any(Path(cache_dir()).iterdir())
    t0 = time.perf_counter()
    model.predict_proba(frame, compile=True)
    sec = time.perf_counter() - t0
    rows.append({"variant": f"predict_proba(compile=True), first call of the process (compiles; torch's on-disk "
                            f"cache {'empty' if cold else 'not empty: it may hold this graph already'})",
                 "seconds": sec, "rows_per_s": n / sec})
    print(f"  {rows[-1]['variant']:60s} {sec:7.2f} s  {n / sec:>12,.0f} rows/s", flush=True)
    p_comp = add("predict_proba(compile=True), later calls", lambda: model.predict_proba(frame, compile=True))
    limit, step = model.fuse_limit, model.forward_rows
    try:
        model.fuse_limit = -1
        p_nofuse = add("predict_proba, no fusion", lambda: model.predict_proba(frame))
        model.forward_rows = 1 << 30
        p_plain = add("predict_proba, no fusion, one forward pass per 65,536-row chunk",
                      lambda: model.predict_proba(frame))
    finally:
        model.fuse_limit, model.forward_rows = limit, step
    sec, _ = best_of(lambda: model.encoder.transform(frame), repeats)
    rows.append({"variant": "encoding only (FeatureEncoder.transform, whole frame)", "seconds": sec,
                 "rows_per_s": n / sec})
    print(f"  {rows[-1]['variant']:60s} {sec:7.2f} s  {n / sec:>12,.0f} rows/s", flush=True)
    enc = {k: v for k, v in model.encoder.transform(frame).items() if k != "y"}

    def network() -> np.ndarray:
        out = []
        with torch.inference_mode(), model.fused_inference():
            for i in range(0, n, step):
                out.append(model.predict_batch({k: v[i: i + step] for k, v in enc.items()}))
        return torch.cat(out).numpy()

    p_net = add("network only (pre-encoded, fused, passes of 2,048)", network)
    diff = max(float(np.abs(ref - p).max()) for p in (p_comp, p_nofuse, p_plain, p_net))
    rows.append({"variant": "max abs difference of the probabilities between the variants above", "seconds": float("nan"), "rows_per_s": diff})
    print(f"  max |dp| between variants: {diff:.2e}")
    return rows


def bench_recommend(repeats: int) -> str:
    """``recommend(k=10)`` for every MovieLens user from a reloaded default checkpoint (see the docstring)."""
    from clm_torch.models.recommender import EmbeddingRecommender
    from clm_torch.train import train

    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose(["experiment=recsys_movielens", "trainer.max_epochs=1", "callbacks.progress_bar=null",
                       "callbacks.model_summary=null", "~logger"], Path(tmp) / "run")
        metrics, objects = train(cfg)
        model = EmbeddingRecommender.load_from_checkpoint(metrics["best_ckpt"])
        model.eval()
        users = list(objects["datamodule"].user_ids[1:])
        recs = model.recommend(users, k=10)  # warm-up
        times = []
        for _ in range(max(repeats, 1)):
            t0 = time.perf_counter()
            recs = model.recommend(users, k=10)
            times.append(time.perf_counter() - t0)
    assert recs.shape == (len(users), 10)
    n_items = model.n_items  # items have no <unk> slot; users do (index 0)
    line = (f"- `recommend(k=10)` for all {len(users):,} MovieLens users over the full catalogue ({n_items:,} items, "
            f"seen items masked), default `recsys_movielens` checkpoint reloaded: median **{np.median(times):.3f} s**, "
            f"best {min(times):.3f} s of {len(times)} calls after a warm-up (target < 1 s)")
    print(line)
    return line


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="customers to score")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--recommend", action="store_true", help="only the MovieLens recommend timing")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    quiet_lightning()
    if args.recommend:
        info = machine_info()
        body = "\n".join([f"- command: `{command_line()}`",
                          f"- {info['date']}; {info['cpu']}, {info['cores']} cores, {args.threads} torch threads; "
                          f"load average at start {info['load_avg_1min_at_start']}", bench_recommend(args.repeats)])
        publish("inference_recommend", body, "Inference: recommend for every MovieLens user", write=not args.no_write)
        return
    from clm_torch.data.synthetic import generate_customer_base

    info = machine_info()
    frame = generate_customer_base(args.n, seed=2, events_per_customer=1).customers.drop(columns=["churn"])
    results: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, overrides, full in (("default: members [64, 64]", [], True),
                                       ("previous default: members [256, 256]", ["model.hidden=[256,256]"], False)):
            print(label, flush=True)
            work = Path(tmp) / str(len(results))
            work.mkdir()
            results[label] = measure(train_checkpoint(overrides, work), frame, args.repeats, full)
    lines = [f"- command: `{command_line()}`",
             f"- {info['date']}; {info['cpu']}, {info['cores']} cores, {args.threads} torch threads; torch {info['torch']}; "
             f"load average at start {info['load_avg_1min_at_start']}",
             f"- {len(frame):,} raw synthetic customers (17 columns: 6 numeric, 10 categorical, id), best of "
             f"{args.repeats} calls after a warm-up; model trained 1 epoch on 20k customers (`experiment=churn_synthetic`)",
             "- target (issue 6): `predict_proba` on 1M customers ≥ 200,000 rows/s on 2 cores", "",
             "| model | variant | seconds | rows/s |", "|---|---|---|---|"]
    for label, rows in results.items():
        for r in rows:
            if np.isnan(r["seconds"]):
                lines.append(f"| {label} | {r['variant']} | | {r['rows_per_s']:.1e} |")
            else:
                lines.append(f"| {label} | {r['variant']} | {r['seconds']:.2f} | {r['rows_per_s']:,.0f} |")
    publish("inference", "\n".join(lines), "Inference: predict_proba on raw customers", write=not args.no_write)


if __name__ == "__main__":
    main()
