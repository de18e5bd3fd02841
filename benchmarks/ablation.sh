#!/usr/bin/env bash
# The ablation table of docs/RECORDS.md: the speedrun rung's tricks added one at a time (rows A0-A4,
# A4 is the `speedrun` preset), then tricks tried on top and not kept (B1-B4), 5 seeds each, in one
# process, under the shared CPU lock with nothing else running:
#   flock /tmp/alexnet-lab-cpu.lock benchmarks/ablation.sh [SEEDS]
# Prints one JSON line per row (mean/min test accuracy, mean seconds per run) and the load average.
set -euo pipefail
SEEDS=${1:-5}
PY=${PYTHON:-python}
cd "$(dirname "$0")/.."
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
echo "== ablation ($(date -u +%FT%TZ); load average: $(cut -d' ' -f1-3 /proc/loadavg))"
$PY benchmarks/ladder_search.py --seeds "$SEEDS" --target 0.883 \
    'speedrun:precision=fp32,channels_last=False,nesterov=False,schedule=constant,lr=0.05' \
    'speedrun:precision=fp32,channels_last=False,nesterov=False' \
    'speedrun:precision=fp32,channels_last=False' \
    'speedrun:channels_last=False' \
    'speedrun' \
    'speedrun:label_smoothing=0.1' \
    'speedrun:ema_decay=0.99' \
    'speedrun:tta=translate' \
    'speedrun:augment=True,tta=flip-translate'
echo "== done ($(date -u +%FT%TZ); load average: $(cut -d' ' -f1-3 /proc/loadavg))"
