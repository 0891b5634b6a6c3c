"""Load: scoring 1M customers and recommending for 100k users in bounded memory (issue 7, point 6).

Each measurement runs in its own subprocess so its peak RSS (``VmHWM``) is its own:

* ``score``: a ChurnClassifier trained for one epoch on 20k synthetic customers (``churn_synthetic``
  config), saved, reloaded with ``load_from_checkpoint``; then ``predict_proba`` on ``--n-score``
  (default 1,000,000) raw synthetic customers. Reported: rows/s, the RSS with the frame loaded, the
  peak during scoring (VmHWM reset just before it), and what scoring added on top of the inputs.
* ``recommend``: an EmbeddingRecommender trained for one epoch on the event log of ``--n-users``
  (default 100,000) synthetic customers (~20 events each), reloaded; then ``recommend(k=10)`` for
  every user over the full catalogue with seen items masked. Same RSS figures.

Memory is bounded because both APIs work in chunks (``predict_proba``: chunks of 65,536 rows encoded, forward passes of 2,048; ``recommend``:
user chunks of at most 2^24 scores); the table below shows the peak growing far less than the
output. Writes ``experiments/results/load.md`` and ``load.json``.

    python experiments/bench_load.py
    python experiments/bench_load.py --n-score 200000 --n-users 20000 --no-write   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]


def _mb(key: str) -> float:
    from bench_throughput import status_mb  # this folder is on sys.path (the script's own folder)

    return status_mb(key)


def _reset_peak() -> None:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux ≥ 4.0), so the next peak is
    the measured step's own, not the training's before it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _trainer(tmp: str) -> Any:
    import lightning as L

    return L.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                     default_root_dir=tmp, accelerator="cpu", devices=1, use_distributed_sampler=False,
                     enable_checkpointing=False)


def stage_score(n: int, workdir: Path) -> dict[str, Any]:
    import hydra

    from clm_torch.config import compose_config
    from clm_torch.data.sources import FrameSource
    from clm_torch.data.synthetic import generate_customer_base
    from clm_torch.models.churn import ChurnClassifier
    from clm_torch.train import build_model

    cfg = compose_config(["experiment=churn_synthetic"], output_dir=workdir / "run")
    small = generate_customer_base(20_000, seed=1).customers
    dm = hydra.utils.instantiate(cfg.data, source=FrameSource(small, target="churn", id_col="customer_id"),
                                 _convert_="partial")
    model = build_model(cfg, dm)
    trainer = _trainer(str(workdir))
    trainer.fit(model, datamodule=dm)
    ckpt = workdir / "churn.ckpt"
    trainer.save_checkpoint(ckpt)
    del model, trainer, dm, small
    frame = generate_customer_base(n, seed=2, events_per_customer=1).customers.drop(columns=["churn"])
    loaded = ChurnClassifier.load_from_checkpoint(ckpt)
    import gc

    gc.collect()
    _reset_peak()
    rss_in = _mb("VmRSS")
    t0 = time.perf_counter()
    p = loaded.predict_proba(frame)
    wall = time.perf_counter() - t0
    return {"rows": len(frame), "seconds": wall, "rows_per_s": len(frame) / wall, "rss_inputs_mb": rss_in,
            "peak_rss_mb": _mb("VmHWM"), "output_mb": p.nbytes / 2**20, "finite": bool((p == p).all())}


def stage_recommend(n: int, workdir: Path) -> dict[str, Any]:
    import numpy as np

    from clm_torch.data.interactions import InteractionDataModule
    from clm_torch.data.sources.interactions import SyntheticInteractionsSource
    from clm_torch.models.recommender import EmbeddingRecommender

    dm = InteractionDataModule(SyntheticInteractionsSource(n_customers=n, seed=3, events_per_customer=20),
                               protocol="temporal", batch_size=1024)
    dm.setup()
    model = EmbeddingRecommender(**dm.model_kwargs(), d=64)
    model.set_preprocessing(dm.preprocessing_state())
    trainer = _trainer(str(workdir))
    trainer.fit(model, datamodule=dm)
    ckpt = workdir / "rec.ckpt"
    trainer.save_checkpoint(ckpt)
    users = list(dm.user_ids[1:])  # index 0 is <unk>
    del model, trainer, dm
    loaded = EmbeddingRecommender.load_from_checkpoint(ckpt)
    loaded.eval()
    import gc

    gc.collect()
    _reset_peak()
    rss_in = _mb("VmRSS")
    t0 = time.perf_counter()
    recs = loaded.recommend(users, k=10)
    wall = time.perf_counter() - t0
    return {"users": len(users), "items": int(loaded.n_items), "seconds": wall, "users_per_s": len(users) / wall,
            "rss_inputs_mb": rss_in, "peak_rss_mb": _mb("VmHWM"),
            "full_score_matrix_mb": len(users) * int(loaded.n_items) * 4 / 2**20,
            "shape": list(np.shape(recs))}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-score", type=int, default=1_000_000)
    ap.add_argument("--n-users", type=int, default=100_000)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--stage", choices=["score", "recommend"], help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.stage:
        import torch

        torch.set_num_threads(int(os.environ.get("CLM_BENCH_THREADS", "2")))
        fn = stage_score if args.stage == "score" else stage_recommend
        print("RESULT " + json.dumps(fn(args.n, args.workdir)), flush=True)
        return
    out: dict[str, Any] = {"command": "python experiments/bench_load.py " + " ".join(argv or sys.argv[1:]),
                           "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                           "load_avg_at_start": os.getloadavg()[0]}
    for stage, n in (("score", args.n_score), ("recommend", args.n_users)):
        with tempfile.TemporaryDirectory(prefix="clm_load_") as tmp:
            proc = subprocess.run([sys.executable, __file__, "--stage", stage, "--n", str(n), "--workdir", tmp],
                                  capture_output=True, text=True, cwd=ROOT)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        out[stage] = json.loads(lines[-1][7:]) if lines else {"error": proc.stderr[-2000:]}
        print(stage, out[stage], flush=True)
    s, r = out["score"], out["recommend"]
    md = ["# Load: scoring and recommending in bounded memory", "",
          f"- command: `{out['command'].strip()}`; {out['date']}; 2 torch threads; load average at start "
          f"{out['load_avg_at_start']:.1f} (shared machine: times are pessimistic)", ""]
    if "error" not in s:
        md.append(f"- `predict_proba` on {s['rows']:,} raw customers: {s['seconds']:.1f} s "
                  f"({s['rows_per_s']:,.0f} rows/s); RSS with the frame loaded {s['rss_inputs_mb']:,.0f} MB, peak "
                  f"{s['peak_rss_mb']:,.0f} MB (+{max(0.0, s['peak_rss_mb'] - s['rss_inputs_mb']):,.0f} MB for scoring, in "
                  "chunks of 65,536 rows, forward passes of 2,048 with fused categorical embeddings; freed heap "
                  "from building the frame is reused, so the peak can equal the RSS before).")
    else:
        md.append(f"- score: failed: `{s['error'].strip().splitlines()[-1]}`")
    if "error" not in r:
        md.append(f"- `recommend(k=10)` for {r['users']:,} users over the full catalogue of {r['items']:,} items: "
                  f"{r['seconds']:.1f} s ({r['users_per_s']:,.0f} users/s); RSS with the model loaded "
                  f"{r['rss_inputs_mb']:,.0f} MB, peak {r['peak_rss_mb']:,.0f} MB "
                  f"(+{r['peak_rss_mb'] - r['rss_inputs_mb']:,.0f} MB; the full user × item score matrix would "
                  f"be {r['full_score_matrix_mb']:,.0f} MB).")
    else:
        md.append(f"- recommend: failed: `{r['error'].strip().splitlines()[-1]}`")
    text = "\n".join(md) + "\n"
    print(text)
    if not args.no_write:
        (RESULTS / "load.md").write_text(text)
        (RESULTS / "load.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
