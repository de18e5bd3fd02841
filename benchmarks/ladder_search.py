"""Candidate recipes for the speed ladder, each trained over a few seeds in one process.

Prints one JSON line per candidate: its overrides, mean/min test accuracy, mean wall seconds.
Accuracies do not depend on machine load; times do (take them with `record` under the CPU lock).
    PYTHONPATH=src python benchmarks/ladder_search.py --seeds 2 'speedrun' 'speedrun:epochs=0.6,tta=flip'
A candidate is PRESET[:key=value,...]; values are parsed as Python literals where they can be.
"""

from __future__ import annotations

import argparse
import ast
import json

from alexnet_lab.analysis.record import run_record
from alexnet_lab.engine.config import make_config
from alexnet_lab.engine.builders import splits_for


def parse_candidate(text: str) -> tuple[str, dict]:
    preset, _, rest = text.partition(":")
    overrides = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        try:
            overrides[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[key] = value
    return preset, overrides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("candidates", nargs="+")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--target", type=float, default=0.9,
                        help="only for the 'reached' fraction (seeds whose final accuracy reached it); runs keep "
                             "their fixed schedule")
    args = parser.parse_args()
    splits = splits_for(make_config("speedrun"))  # the whole Fashion-MNIST, shared by the candidates
    for text in args.candidates:
        preset, overrides = parse_candidate(text)
        config = make_config(preset, **overrides)
        result = run_record(config, args.seeds, target=args.target, splits=splits)
        print(json.dumps({"candidate": text, "mean_acc": round(result["mean_acc"], 4),
                          "min_acc": round(result["min_acc"], 4),
                          "mean_time_s": round(result["mean_time_s"], 2),
                          "reached": result["reached"]}), flush=True)


if __name__ == "__main__":
    main()
