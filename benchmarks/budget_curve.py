"""Test accuracy of a budget recipe after N training images: the curve behind `make run`'s CPU budget.

Accuracy per training image is a property of the recipe, not of the machine, so this runs anywhere (a
busy machine only takes longer): each point is its own run of the chapter's AlexNet at 224x224 over the
first N training images, one-cycle over exactly those N (as the budget plans it), tested on the first
2,000 test images. Each candidate is a preset plus `train` flags:

    python benchmarks/budget_curve.py --images 2500,10000 --seeds 0,1 \\
        --candidate 'one-epoch:' --candidate 'muon:--optimizer muon --muon-lr 0.02' --out runs/curve

Prints one line per run and appends it as JSON to OUT/curve.jsonl (a rerun skips the points it has).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from alexnet_lab.cli import main  # noqa: E402


def one_run(preset: str, flags: list[str], images: int, seed: int, out: Path) -> dict:
    argv = ["train", "--preset", preset, "--epochs", "1", "--limit-train", str(images), "--limit-test", "2000",
            "--seed", str(seed), "--device", "cpu", "--eval-every", "0", "--progress", "none", "--no-report",
            "--no-tensorboard", *flags, "--out", str(out)]
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    if code != 0:
        raise SystemExit(f"train failed ({code}): {shlex.join(argv)}")
    summary = json.loads((out / "summary.json").read_text())
    return {"test_acc": summary["test_acc"], "train_examples": summary["train_examples"],
            "steps": summary["steps"], "seconds": round(time.perf_counter() - started, 1)}


def main_(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", default="1000,2500,5000,10000,20000")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--candidate", action="append", required=True,
                   help="NAME:FLAGS, NAME a preset (one-epoch, fast) or NAME@PRESET, FLAGS train's flags")
    p.add_argument("--out", default="runs/budget-curve")
    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "curve.jsonl"
    done = {(r["candidate"], r["images"], r["seed"]) for r in map(json.loads, log.read_text().splitlines())} \
        if log.exists() else set()
    print(f"machine: {os.uname().nodename}, load average {os.getloadavg()[0]:.2f} at the start", flush=True)
    for spec in a.candidate:
        name, _, flags = spec.partition(":")
        label, _, preset = name.partition("@")
        for images in map(int, a.images.split(",")):
            for seed in map(int, a.seeds.split(",")):
                if (label, images, seed) in done:
                    continue
                result = one_run(preset or label, shlex.split(flags), images, seed,
                                 out / f"{label}-{images}-s{seed}-{time.strftime('%H%M%S')}")
                row = {"candidate": label, "preset": preset or label, "flags": flags, "images": images,
                       "seed": seed, **result, "load": round(os.getloadavg()[0], 2)}
                with open(log, "a") as fh:
                    fh.write(json.dumps(row) + "\n")
                print(f"{label:<24} {images:>6} images  seed {seed}  test acc {result['test_acc']:.4f}  "
                      f"({result['steps']} steps, {result['seconds']} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main_())
