#!/usr/bin/env bash
# alexnet-lab on a CUDA GPU, verified in one command (issue 11). Finishes in under 8 minutes and
# prints ONE JSON object at the end (stdout; progress on stderr). In order: the CUDA tests
# (pytest -m cuda), `bench` (the book's pipeline vs the project's, batch 128 and the fastest batch),
# the `d2l` preset in full (10 epochs, 224x224, fp32: the chapter's two closing lines and the wall
# clock), the `fast` preset to 0.883, the speed ladder with `record --seeds 3`, and --compile on/off.
# Each stage has its own time cap; a failed stage is recorded in the JSON, not fatal. Exit status 0
# when every stage passed, else 1.
#
# Runs from the working tree: PYTHONPATH=src, no virtual environment, no network. Needs python3 with
# torch (2.11 or later, CUDA build), numpy, matplotlib, tqdm, pillow, pytest and hypothesis, and the
# four Fashion-MNIST .gz files in a git-ignored folder of the repository (.data/ is ignored).
#
# On the project's device machine (the `run` tool), from the repository root:
#   1. here:   mkdir -p .data/fashion-mnist && cp /usr/share/datasets/fashion-mnist/*.gz .data/fashion-mnist/
#   2. run:    carry [".data"], timeout_s 560, command
#              bash benchmarks/gpu_check.sh --data-dir .data/fashion-mnist --out $OUT
#   The JSON comes back as $OUT/gpu_check.json, with each stage's log in $OUT/logs/ and the run
#   summaries (no checkpoints) in $OUT/runs/.
# Anywhere else with a CUDA GPU:
#   bash benchmarks/gpu_check.sh --data-dir /path/to/fashion-mnist [--out DIR]
# On a CPU, every stage with tiny limits (what tests/test_gpu_check.py runs, ~30 s):
#   bash benchmarks/gpu_check.sh --smoke --data-dir DIR --out DIR
# Options: --budget-s S (default 470), --device D, --python PATH; see benchmarks/gpu_check.py --help.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
exec "$PY" benchmarks/gpu_check.py --python "$PY" "$@"
