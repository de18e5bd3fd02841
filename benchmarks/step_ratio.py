"""Training-step time of several presets/models in one process, interleaved, and each one's ratio to the
first: the clean way to price a change of model or numerics on a machine whose speed wanders between
calls (docs/RECORDS.md, the 94 % ablation). Random data, the project's own training step.

    flock /tmp/alexnet-lab-cpu.lock env PYTHONPATH=src python benchmarks/step_ratio.py \
        speedrun-94 speedrun-94:model=fmnist-net-sw
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from alexnet_lab.analysis.record import candidate_config
from alexnet_lab.engine.builders import input_size
from alexnet_lab.engine.device import synchronize
from alexnet_lab.engine.step import build_training_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("candidates", nargs="+",
                        help="PRESET[:key=value,...], as `alexnet-lab record --candidate` takes")
    parser.add_argument("--steps", type=int, default=10, help="steps per timed window")
    parser.add_argument("--repeats", type=int, default=5, help="windows per candidate, interleaved")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    steps = {}
    for text in args.candidates:
        config = candidate_config(text, {"device": args.device})
        step = build_training_step(config, total_steps=10_000)
        side = input_size(config)
        images = torch.rand(config.batch_size, 1, side, side, device=step.device)  # Fashion-MNIST: 1 channel
        batch = (images, torch.randint(0, 10, (config.batch_size,), device=step.device))
        steps[text] = (step, batch, config.batch_size)
    times = {text: [] for text in steps}
    for _ in range(2):  # warm-up: allocator, oneDNN primitives
        for step, batch, _ in steps.values():
            step(*batch)
    for _ in range(args.repeats):
        for text, (step, batch, _) in steps.items():
            synchronize(step.device)
            start = time.perf_counter()
            for _ in range(args.steps):
                step(*batch)
            synchronize(step.device)
            times[text].append((time.perf_counter() - start) / args.steps)
    first = statistics.median(times[args.candidates[0]])
    for text, (step, _, batch_size) in steps.items():
        median = statistics.median(times[text])
        print(f"{text}: {median * 1e3:.1f} ms/step at batch {batch_size} ({batch_size / median:,.0f} examples/s, "
              f"{step.precision}), {median / first:.3f}x the first  [median of {args.repeats} windows of "
              f"{args.steps} steps]")


if __name__ == "__main__":
    main()
