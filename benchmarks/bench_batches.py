"""`bench` at several batch sizes in one process: the book's pipeline against this project's at batch
128 (the book's), then the project's pipeline alone at larger batches, and the book's pipeline again at
the project's fastest batch. Used by gpu_check.py; writes one JSON file.

    PYTHONPATH=src python benchmarks/bench_batches.py --device cuda --json-out bench.json
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from alexnet_lab.analysis.bench import BenchConfig, format_report, run_bench
from alexnet_lab.engine.builders import splits_for
from alexnet_lab.engine.config import make_config


def _rates(result: dict, pipeline: str) -> dict:
    r = result[pipeline]
    return {key: r[key] for key in ("precision", "memory_format", "examples_per_sec", "step_ms", "mfu")
            if key in r}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="alexnet")
    p.add_argument("--batches", default="128,256,512,1024", help="the first is the book's batch")
    p.add_argument("--device", default="auto")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--limit-train", type=int, default=None)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--ref-steps", type=int, default=4, help="steps per window of the book's pipeline "
                   "at the fastest batch (it is data-bound: a few large batches show its rate)")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--peak-size", type=int, default=2048)
    p.add_argument("--json-out", required=True)
    args = p.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    splits = splits_for(make_config("fast", data_dir=args.data_dir, limit_train=args.limit_train, limit_test=1))

    def bench(batch: int, pipelines=("reference", "project"), **timing) -> dict:
        """`alexnet-lab bench` (the `fast` preset's step for the project) at `batch`."""
        config = make_config("fast", model=args.model, batch_size=batch, device=args.device)
        values = dict(warmup=args.warmup, steps=args.steps, repeats=args.repeats, workers=args.workers,
                      peak_size=args.peak_size)
        return run_bench(config, BenchConfig(**{**values, **timing}), splits, pipelines=pipelines)

    first = bench(batches[0])
    print(format_report(first), file=sys.stderr, flush=True)
    out = {"model": args.model, "device": first["device"], "input_size": first["input_size"],
           "flops_per_example": first["flops_per_example"], "peak_flops_per_sec": first["peak_flops_per_sec"],
           f"batch_{batches[0]}": {"reference": _rates(first, "reference"), "project": _rates(first, "project"),
                                   "ratio": first["ratio"]},
           "project_by_batch": {str(batches[0]): _rates(first, "project")}}
    for batch in batches[1:]:
        try:
            result = bench(batch, pipelines=("project",))
        except torch.cuda.OutOfMemoryError:
            out["project_by_batch"][str(batch)] = {"error": "out of memory"}
            torch.cuda.empty_cache()
            continue
        print(format_report(result), file=sys.stderr, flush=True)
        out["project_by_batch"][str(batch)] = _rates(result, "project")
    measured = {int(b): r for b, r in out["project_by_batch"].items() if "examples_per_sec" in r}
    fastest = max(measured, key=lambda b: measured[b]["examples_per_sec"])
    out["fastest_batch"] = fastest
    if fastest == batches[0]:
        out[f"batch_{fastest}"]["note"] = "the book's batch is also the project's fastest"
    else:
        ref = bench(fastest, pipelines=("reference",), warmup=1, steps=args.ref_steps, repeats=2)
        print(format_report(ref), file=sys.stderr, flush=True)
        out[f"batch_{fastest}"] = {"reference": _rates(ref, "reference"), "project": measured[fastest],
                                   "ratio": measured[fastest]["examples_per_sec"] / ref["reference"]["examples_per_sec"]}
    with open(args.json_out, "w") as fh:
        json.dump(out, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
