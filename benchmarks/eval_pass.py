"""Seconds of one full test-set evaluation (with the preset's test-time augmentation) for each preset,
repeated in one process: what each extra `--eval-every` pass costs a run (docs/RECORDS.md).

    flock /tmp/alexnet-lab-cpu.lock env PYTHONPATH=src python benchmarks/eval_pass.py speedrun-94 speedrun-92
"""

from __future__ import annotations

import argparse
import time

from alexnet_lab.engine.builders import make_loaders, model_options, splits_for
from alexnet_lab.engine.config import make_config
from alexnet_lab.engine.step import build_training_step
from alexnet_lab.engine.trainer import evaluate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("presets", nargs="+")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    splits = splits_for(make_config("d2l"))  # the whole Fashion-MNIST, shared by the presets
    for preset in args.presets:
        config = make_config(preset, device=args.device)
        step = build_training_step(config, model_kwargs=model_options(splits))
        _, test_loader = make_loaders(config, splits, step.device)
        seconds = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            evaluate(step.eval_model, test_loader, step.device, step.precision, config.channels_last,
                     len(splits.class_names), tta=config.tta)  # ends in a sync: the confusion matrix
            seconds.append(time.perf_counter() - start)
        print(f"{preset}: {len(splits.test_images):,} test images ({config.model}, {step.precision}, "
              f"tta {config.tta}): " + " / ".join(f"{s:.3f}" for s in seconds) + " s")


if __name__ == "__main__":
    main()
