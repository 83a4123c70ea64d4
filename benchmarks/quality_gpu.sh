#!/usr/bin/env bash
# The quality benchmark's GPU share, in one call of a lent GPU (issue 21, points 4 and 5):
#     bash benchmarks/quality_gpu.sh LOGS DATA [SECONDS]
# Three lanes share the GPU at once, each a quality.py process with its own results file, run cache and log:
#   64px   DCGAN+DiffAugment+EMA and fastgan, seed 0 then seed 1, to 300k images; then seed 0 on to 1M
#   120px  DCGAN+DiffAugment+EMA to 1M images
#   120px  fastgan to 1M images
# Batch 64 leaves most of the GPU idle, so the lanes overlap rather than queue. Each lane stops at SECONDS
# (default 500); every budget it measured is already in its results file (quality.py writes after each).
# Then merge the parts: python benchmarks/quality.py --merge benchmarks/results/quality-*px*.json
set -u
LOGS=${1:?LOGS folder}; DATA=${2:?the Pokemon images folder}; SECONDS_LEFT=${3:-500}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$LOGS"
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}

lane() {   # lane NAME SIZE CONFIG SEEDS BUDGETS [CONFIG SEEDS BUDGETS ...]: quality.py calls, one after another
    local name=$1 size=$2; shift 2
    local home=/tmp/quality-$name; mkdir -p "$home"
    while (($#)) && ((SECONDS_LEFT - SECONDS > 10)); do
        HOME=$home timeout $((SECONDS_LEFT - SECONDS)) "$PY" "$ROOT/benchmarks/quality.py" --device "$DEVICE" \
            --data "$DATA" --image-size "$size" --configs "$1" --seeds "$2" --budgets "$3" --set batch_size=64 \
            --out "$ROOT/benchmarks/results/quality-$name.json" || echo "lane $name: $1 seeds $2 stopped ($?)"
        shift 3
    done
}

lane 64px 64 dcgan_diffaugment_ema 0 50000,100000,200000,300000 fastgan 0 50000,100000,200000,300000 \
    dcgan_diffaugment_ema 1 50000,100000,200000,300000 fastgan 1 50000,100000,200000,300000 \
    dcgan_diffaugment_ema 0 600000,1000000 fastgan 0 600000,1000000 >"$LOGS/lane-64px.log" 2>&1 &
lane 120px-dcgan 120 dcgan_diffaugment_ema 0 100000,300000,600000,1000000 >"$LOGS/lane-120px-dcgan.log" 2>&1 &
lane 120px-fastgan 120 fastgan 0 100000,300000,600000,1000000 >"$LOGS/lane-120px-fastgan.log" 2>&1 &
wait
