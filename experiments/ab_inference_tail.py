"""A/B of the inference tail (issue 6, point 4), one process, interleaved calls.

``FusedFirstLayer._rest`` (in place: ReLU in place, dropout skipped, one-output read-outs as a multiply
and a sum) against the previous tail (the head's own modules, ``head.net[1:](x)``): ``predict_proba`` of
the ``bench_inference.py`` checkpoint on 1M raw synthetic customers, 3 calls each after a warm-up.
The result is recorded by hand in ``results/performance.md`` (session 21 note).

    python experiments/ab_inference_tail.py
"""
import sys, tempfile, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np, torch
from bench_inference import train_checkpoint
from bench_throughput import quiet_lightning
from clm_torch.models.churn import ChurnClassifier
from clm_torch.models.components import tabular
from clm_torch.data.synthetic import generate_customer_base
quiet_lightning()
wd = Path(tempfile.mkdtemp()); wd.mkdir(parents=True, exist_ok=True)
ck = train_checkpoint([], wd)
m = ChurnClassifier.load_from_checkpoint(ck).eval()
frame = generate_customer_base(1_000_000, seed=2).customers
n = len(frame)
new_rest = tabular.FusedFirstLayer._rest
def old_rest(self, x):
    return self.head.net[1:](x) if len(self.head.net) > 1 else x
def run(rest):
    tabular.FusedFirstLayer._rest = rest
    t = time.perf_counter(); p = m.predict_proba(frame); return time.perf_counter() - t, p
run(new_rest); run(old_rest)
res = {"old": [], "new": []}
for _ in range(3):
    for name, f in (("old", old_rest), ("new", new_rest)):
        dt, p = run(f); res[name].append(dt); res[name + "_p"] = p
for name in ("old", "new"):
    best = min(res[name]); print(f"{name}: best {best:.2f} s = {n / best:,.0f} rows/s; all {[round(x, 2) for x in res[name]]}")
print("max |dp|", float(np.abs(res["old_p"] - res["new_p"]).max()), "rows", n, "threads", torch.get_num_threads())
