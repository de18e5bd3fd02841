#!/usr/bin/env bash
# The speed ladder's records (docs/RECORDS.md): every rung with `record`, 5 seeds each, one at a
# time under the shared CPU lock, nothing else running:
#   flock /tmp/alexnet-lab-cpu.lock benchmarks/records.sh runs/records [SEEDS] [RUNGS...]
# Writes each rung's output (table + JSON line) to OUT/<preset>.txt and prints the load average.
set -euo pipefail
OUT=${1:-runs/records}
SEEDS=${2:-5}
shift $(( $# > 2 ? 2 : $# ))
RUNGS=${*:-speedrun speedrun-90 speedrun-92 speedrun-94}
PY=${PYTHON:-python}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
for preset in $RUNGS; do
    echo "== $preset ($(date -u +%FT%TZ); load average: $(cut -d' ' -f1-3 /proc/loadavg))"
    $PY -m alexnet_lab record --preset "$preset" --seeds "$SEEDS" --device cpu --json | tee "$OUT/$preset.txt"
done
echo "== done ($(date -u +%FT%TZ); load average: $(cut -d' ' -f1-3 /proc/loadavg))"
