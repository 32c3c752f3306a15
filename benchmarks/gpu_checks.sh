#!/usr/bin/env bash
# The GPU checks of issues 3 and 7 in one call, for a lent H100/H200 (the device tool) or any CUDA machine:
#   1. batched Real-ESRGAN degradation on the GPU vs the per-sample loop, 16 × 512² (target ≥ 500 images/s)
#   2. `ctsr bench --size sd21`: upscale path vs the bare diffusers graph, eager and compiled, the tiled 2048² row
#      with shared vs per-tile norms and its peak memory, the Table 8 row (targets: ratio ≤ 1.15, ≥ 60 images/s)
#   3. the t-sweep cost at SD 2.1 size: 6 values of t vs one t (one velocity: 2 UNet passes either way)
# Wheels the machine lacks travel in .whl/ (`make gpu-wheels` fetches them here); each step's output is written to
# $OUT (the device tool's folder) or results/gpu/, so a step cut off by its timeout keeps the earlier ones.
#
#   device run:  bash benchmarks/gpu_checks.sh        (carry: [".whl"], timeout_s 600)
#   anywhere:    make gpu-checks
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then
    SITE=$(mktemp -d)
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
        || exit 1
    export PYTHONPATH=$SITE
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
OUT=${OUT:-results/gpu}
mkdir -p "$OUT"
{
    date -u +%F
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    "$PY" -c "import torch, diffusers, kornia; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'kornia', kornia.__version__)"
} 2>&1 | tee "$OUT/machine.txt"
# batch 16 as the issue's CPU figure; batch 64 amortises the ≈ 65 ms of host-side work a batch costs (docs/benchmarks.md)
for batch in 16 64; do
    timeout "${DEGRADE_TIMEOUT:-120}" "$PY" benchmarks/bench_degrade.py --device cuda --batch $batch --size 512 \
        --repeats 5 2>&1 | tee -a "$OUT/degrade.txt"
done
timeout "${BENCH_TIMEOUT:-420}" "$PY" -m ctsr.cli bench --size sd21 --repeats 10 2>&1 | tee "$OUT/bench.txt"
timeout "${SWEEP_TIMEOUT:-90}" "$PY" benchmarks/bench_sweep.py --size sd21 --device cuda --batch 4 --lr-size 128 \
    --batches 2 2>&1 | tee "$OUT/sweep.txt"
