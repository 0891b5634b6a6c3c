"""Sharded tables (``data=parquet_shards``): what one rank holds and pays, by the number of ranks.

A synthetic customer table (``generate_customer_base(n)``'s customers, with its stale duplicate
rows) is written as ``--shards`` Parquet files by a hash of the customer id. Then, each in its own
subprocess (so its peak RSS, ``VmHWM``, is its own):

* ``whole``: ``data=parquet`` on the same rows in one file, as every rank reads it without sharding
  (``TableDataModule``: read, clean, split, encode all rows);
* ``W = 1, 2, 4, ...``: rank 0 of ``W`` with ``ShardedTableDataModule``: the preprocessing fitted on
  the sample (``setup``), then its own shards read, cleaned, split and encoded (``tensors``).

Rank 0 of ``W`` keeps ``ceil(shards / W)`` shards. The sample (``--sample-rows``) is drawn from every
shard on every rank (the shards written here are one row group each, so each is read whole), one
shard in memory at a time, so it costs time that does not shrink with ``W`` but bounded memory. Command::

    python experiments/bench_shards.py --n 1000000 --shards 8 --ranks 1 2 4

Writes ``experiments/results/perf_shards.json`` and the "Sharded tables" section of performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _tensor_mb(tensors: dict) -> float:
    return sum(t.element_size() * t.nelement() for split in tensors.values() for t in split.values()) / 2**20


def run_one(kind: str, workdir: Path, world: int, sample_rows: int) -> dict[str, Any]:
    """One measurement, in this process."""
    import torch

    torch.set_num_threads(int(os.environ.get("CLM_BENCH_THREADS", "2")))
    rss0 = _status_mb("VmRSS")
    t0 = time.perf_counter()
    if kind == "whole":
        from clm_torch.data.datamodules import table_from_file

        dm = table_from_file(str(workdir / "whole.parquet"), target="churn", id_col="customer_id")
        dm.setup()
        t_fit = time.perf_counter()
        tensors = dm.tensors
    else:
        from clm_torch.data.sharded import ShardedTableDataModule

        dm = ShardedTableDataModule(str(workdir / "shards"), target="churn", id_col="customer_id", rank=0,
                                    world_size=world, sample_rows=sample_rows)
        dm.setup()
        t_fit = time.perf_counter()
        tensors = dm.tensors
    t1 = time.perf_counter()
    return {"kind": kind, "world": world, "seconds": round(t1 - t0, 2), "setup_s": round(t_fit - t0, 2),
            "local_s": round(t1 - t_fit, 2), "rows": {k: len(v["row"]) for k, v in tensors.items()},
            "tensor_mb": round(_tensor_mb(tensors), 1), "peak_rss_mb": round(_status_mb("VmHWM"), 1),
            "rss_before_mb": round(rss0, 1)}


def prepare(workdir: Path, n: int, shards: int) -> dict[str, Any]:
    import pandas as pd

    from clm_torch.data.synthetic import generate_customer_base

    t0 = time.perf_counter()
    customers = generate_customer_base(n, seed=0).customers
    customers.to_parquet(workdir / "whole.parquet", index=False)
    (workdir / "shards").mkdir(exist_ok=True)
    h = pd.util.hash_pandas_object(customers["customer_id"], index=False).to_numpy() % shards
    for k in range(shards):
        customers[h == k].to_parquet(workdir / "shards" / f"part-{k:03d}.parquet", index=False)
    return {"rows": len(customers), "customers": int(customers["customer_id"].nunique()),
            "whole_mb": round((workdir / "whole.parquet").stat().st_size / 2**20, 1),
            "prepare_s": round(time.perf_counter() - t0, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000, help="customers of the synthetic base")
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--sample-rows", type=int, default=200_000)
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--no-write", action="store_true", help="print only; do not touch experiments/results")
    p.add_argument("--one", nargs=2, metavar=("KIND", "WORLD"), help=argparse.SUPPRESS)  # internal
    args = p.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one[0], args.workdir, int(args.one[1]), args.sample_rows)))
        return
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="clm_shards_"))
    workdir.mkdir(parents=True, exist_ok=True)
    data = prepare(workdir, args.n, args.shards)
    print(f"[shards] {data}", flush=True)
    runs = []
    for kind, world in [("whole", 1), *[("sharded", w) for w in args.ranks]]:
        proc = subprocess.run([sys.executable, __file__, "--one", kind, str(world), "--workdir", str(workdir),
                               "--sample-rows", str(args.sample_rows)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(proc.stderr[-3000:])
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"[shards] {runs[-1]}", flush=True)
    lines = [f"`python experiments/bench_shards.py --n {args.n} --shards {args.shards} --ranks "
             f"{' '.join(map(str, args.ranks))} --sample-rows {args.sample_rows}` "
             f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}): {data['rows']:,} table rows "
             f"({data['customers']:,} customers; {data['whole_mb']} MB of Parquet) in {args.shards} shards. "
             "Each row is one process (peak RSS = its VmHWM, imports included).", "",
             "| data | rank 0 of | own shards | train / val / test rows held | tensors MB | set-up s "
             "(preprocessing) | own rows s | total s | peak RSS MB |", "|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        shards = "1 file" if r["kind"] == "whole" else str(-(-args.shards // r["world"]))
        held = " / ".join(f"{r['rows'][k]:,}" for k in ("train", "val", "test"))
        name = "`data=parquet` (whole)" if r["kind"] == "whole" else "`data=parquet_shards`"
        local = "-" if r["kind"] == "whole" else r["local_s"]
        lines.append(f"| {name} | {r['world']} | {shards} | {held} | {r['tensor_mb']} | {r['setup_s']} | {local} | "
                     f"{r['seconds']} | {r['peak_rss_mb']:,.0f} |")
    body = "\n".join(lines)
    from bench_throughput import command_line, machine_info, publish

    publish("shards", body, "Sharded tables: one rank's share (data=parquet_shards)", write=not args.no_write,
            json_name="perf_shards.json", result={"command": command_line(), "machine": machine_info(), "data": data,
                                                  "runs": runs, "args": vars(args) | {"workdir": None}})


if __name__ == "__main__":
    main()
