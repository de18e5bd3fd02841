#!/usr/bin/env bash
# The measurements behind docs/PERFORMANCE.md, run under the shared CPU lock by the caller:
#   flock /tmp/alexnet-lab-cpu.lock benchmarks/measure_cpu.sh runs/measure
# Writes bench JSON lines and speedrun run folders under the given folder.
set -euo pipefail
OUT=${1:-runs/measure}
PY=${PYTHON:-python}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
# On a CPU shared with other jobs, run with OMP_WAIT_POLICY=PASSIVE: spinning OpenMP threads
# collapse the throughput of two-thread PyTorch there. On a quiet machine the default is faster
# (see docs/PERFORMANCE.md).

# 1. The book's pipeline vs this project's: AlexNet, batch 128, 224x224.
$PY -m alexnet_lab bench --model alexnet --batch-size 128 --warmup 3 --steps 5 --repeats 3 --json \
    | tee "$OUT/bench-alexnet.txt"

# 2. Time to 0.883 test accuracy of the speedrun preset, three runs (different seeds).
for seed in 0 1 2; do
    $PY -m alexnet_lab train --preset speedrun --target-accuracy 0.883 --seed $seed \
        --out "$OUT/speedrun-seed$seed" 2>/dev/null | tail -3
done

# 3. Does torch.compile pay on this CPU? The speedrun model's step, eager vs compiled.
for flag in --no-compile --compile; do
    $PY -m alexnet_lab bench --model speednet --batch-size 256 --pipelines project --warmup 3 --steps 20 \
        --repeats 3 $flag --json | tail -1 > "$OUT/bench-speednet$flag.json"
done
