"""The streaming loader measured on generated image folders (never downloaded): (a) its images/s against a
plain PyTorch DataLoader over a minimal Pillow Dataset with the same workers, in one process; (b) peak RSS
streaming 10,000 vs 40,000 images; (c) the time from a process's start to its first training step.

    PYTHONPATH=src python benchmarks/streaming.py /scratch/folders            # 10,000 and 40,000 images
    PYTHONPATH=src python benchmarks/streaming.py /tmp/f --sizes 200 400 --batches 3   # a smoke check

Each folder holds SIZE 256x256 RGB JPEGs in 10 class folders (a class: a grating of its own orientation
and frequency, random colours, phase and noise), written once and reused. The measurements run on
--cores CPUs (the process's affinity, inherited by its workers and children).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
import warnings
from multiprocessing import Pool
from pathlib import Path

import numpy as np

CLASSES = 10
SIDE = 256
READY = ".complete"  # written last: a folder without it is generated again


# --- the folders ----------------------------------------------------------------------------------

def _write_image(job: tuple[Path, int, int]) -> None:
    """One JPEG of class `label`: a sinusoidal grating at the class's angle and frequency, in random
    colours and phase, with noise; seeded by the image's index."""
    from PIL import Image

    path, label, index = job
    rng = np.random.default_rng(index)
    angle, cycles = np.pi * label / CLASSES, 3 + 2 * label
    y, x = np.mgrid[0:SIDE, 0:SIDE] / SIDE
    wave = np.sin(2 * np.pi * cycles * (x * np.cos(angle) + y * np.sin(angle)) + rng.uniform(0, 2 * np.pi))
    low, high = rng.uniform(0, 255, size=(2, 3))
    pixels = low + (high - low) * (wave[..., None] + 1) / 2 + rng.normal(0, 12, size=(SIDE, SIDE, 3))
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8), "RGB").save(path, quality=90)


def make_folder(root: Path, size: int, cores: int) -> Path:
    """root/<size>/<class>/<index>.jpg, `size` images in all (made by `cores` processes), unless complete."""
    folder = root / str(size)
    if (folder / READY).is_file():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    jobs = []
    for index in range(size):
        label = index % CLASSES
        (folder / f"class{label}").mkdir(parents=True, exist_ok=True)
        jobs.append((folder / f"class{label}" / f"{index:06d}.jpg", label, index))
    started = time.perf_counter()
    with Pool(cores) as pool:
        pool.map(_write_image, jobs, chunksize=64)
    (folder / READY).write_text("")
    print(f"wrote {size:,} images to {folder} in {time.perf_counter() - started:.1f} s", flush=True)
    return folder


# --- (a) images/s: the streaming loader against a plain DataLoader ----------------------------------

class PlainPillow:
    """The minimal Pillow Dataset: open, RGB, the shorter side to SIDE and the centre square, as a tensor."""

    def __init__(self, files: list[Path], labels: list[int]):
        self.files, self.labels = files, labels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        import torch
        from PIL import Image, ImageOps

        with Image.open(self.files[i]) as img:
            img = ImageOps.fit(img.convert("RGB"), (SIDE, SIDE), Image.Resampling.BILINEAR)
            with warnings.catch_warnings():  # a read-only array (PIL's bytes): the tensor is only read
                warnings.simplefilter("ignore", UserWarning)
                return torch.from_numpy(np.asarray(img)).permute(2, 0, 1), self.labels[i]


def images_per_second(batches) -> float:
    """Images/s over a whole epoch after its first batch (the workers started). A whole epoch, so that
    no worker decodes ahead once it is timed: the other loader's measurement has the CPUs to itself."""
    iterator = iter(batches)
    next(iterator)
    started, seen = time.perf_counter(), 0
    for x, _ in iterator:
        seen += len(x)
    return seen / (time.perf_counter() - started)


def throughput(folder: Path, workers: int, batch: int, repeats: int) -> dict:
    """Both loaders over the same training files (one epoch each), the same workers and batch, alternated
    `repeats` times; the plain loader's batches made [0, 1] floats in this process as ours are."""
    from torch.utils.data import DataLoader

    from alexnet_lab.data.imagefolder import load_image_folder
    from alexnet_lab.data.streaming import StreamingLoader

    data = load_image_folder(folder, SIDE, 3, stream=True)
    files = [data.train.path(i) for i in range(len(data.train))]
    ours = StreamingLoader(data.train, data.train_labels, batch, shuffle=True, seed=0, workers=workers)
    plain = DataLoader(PlainPillow(files, data.train.labels.tolist()), batch_size=batch, shuffle=True,
                       num_workers=workers, persistent_workers=True, prefetch_factor=2)

    def plain_batches():  # the main process's share of the work, as a training loop has it: to [0, 1] floats
        for x, y in plain:
            yield x.float().div_(255), y

    rates = {"streaming": [], "plain": []}
    for _ in range(repeats):
        rates["streaming"].append(images_per_second(ours))
        rates["plain"].append(images_per_second(plain_batches()))
    best = {name: max(r) for name, r in rates.items()}
    return {"images_per_s": rates, "best": best, "ratio": best["streaming"] / best["plain"]}


# --- (b) peak RSS, (c) time to the first step: each in a child process ----------------------------

def child_rss(folder: Path, workers: int, batch: int, n_batches: int) -> dict:
    """Stream `n_batches` training batches of `folder` through the engine's data door (--data-regime
    stream) with random crops and flips; peak RSS of this process and of its largest worker, in MiB
    (ru_maxrss: KiB on Linux). PCA lighting (--augment's third kind) would add a fixed sample of 2,000
    to 4,000 decoded images to this process, whatever the folder's size."""
    from alexnet_lab.data.streaming import StreamingLoader
    from alexnet_lab.engine.builders import splits_for
    from alexnet_lab.engine.config import make_config

    config = make_config("d2l", model="alexnet-2012", data=f"imagefolder:{folder}", channels=3, augment=True,
                         data_regime="stream", batch_size=batch)
    splits = splits_for(config)
    loader = StreamingLoader(splits.train_images, splits.train_labels, batch, shuffle=True, resize=224,
                             augment="crop+flip", workers=workers)
    for _, _ in zip(range(n_batches), loader):
        pass
    del loader  # the workers exit and are waited for: RUSAGE_CHILDREN counts them
    import gc
    gc.collect()
    return {"images": len(splits.train_images) + len(splits.test_images),
            "main_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "worker_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def child_first_step(folder: Path, model: str, batch: int) -> dict:
    """Train `model` on `folder` as `train` does (run.load_data, then fit) until its first step is done;
    seconds from this process's start (its import of torch included) to the training start and to step 1."""
    from alexnet_lab.engine import run
    from alexnet_lab.engine.config import make_config
    from alexnet_lab.engine.trainer import Callback, fit

    marks = {}

    class FirstStep(Callback):
        def on_train_start(self, info):
            marks["train_start_s"] = time.time() - START
            marks["data"] = info["data_source"].rsplit(", ", 1)[-1]  # decoded in memory, or streamed

        def on_step(self, step):
            marks["first_step_s"] = time.time() - START
            print(json.dumps(marks), flush=True)
            os._exit(0)  # enough: nothing more is measured

    config = make_config("d2l", model=model, data=f"imagefolder:{folder}", channels=3, augment=True,
                         batch_size=batch, epochs=1, device="auto")
    fit(config, [FirstStep()], splits=run.load_data(config))
    return marks


def in_child(mode: str, *args: str, env: dict | None = None) -> dict:
    """Run this script's `mode` in a fresh process; its last stdout line is the JSON result."""
    started = time.time()
    result = subprocess.run([sys.executable, __file__, f"--child={mode}", *args], capture_output=True, text=True,
                            env={**os.environ, **(env or {}), "STREAMING_BENCH_START": repr(started)})
    if result.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def machine() -> str:
    """lscpu's model name and the vector instructions the training step uses, and the load average."""
    from alexnet_lab.analysis.machine import ISA_FLAGS, cpu_model_and_flags

    model, isa = cpu_model_and_flags()
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines()
        model = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("Model name"))
        flags = next(line.split(":", 1)[1].split() for line in lines if line.startswith("Flags"))
        isa = [f for f in ("sse4_2", "avx", *ISA_FLAGS) if f in flags]
    except (OSError, subprocess.CalledProcessError, StopIteration):
        pass
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    return f"{model} ({' '.join(isa) or 'no AVX'}), {os.cpu_count()} CPUs, load average {load}"


START = float(os.environ.get("STREAMING_BENCH_START", time.time()))  # a child: when its parent started it


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", type=Path, nargs="?", help="where the generated folders are (made once, then reused)")
    p.add_argument("--sizes", type=int, nargs=2, default=(10_000, 40_000), help="the two folder sizes")
    p.add_argument("--cores", type=int, default=2, help="CPUs the measurements may use (0: all)")
    p.add_argument("--workers", type=int, default=2, help="worker processes of both loaders")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--batches", type=int, default=50, help="(b): batches streamed")
    p.add_argument("--repeats", type=int, default=3, help="(a): epochs of each loader, alternated")
    p.add_argument("--model", default="alexnet-2012", help="(c): the model of the first step")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--folder", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child == "rss":
        print(json.dumps(child_rss(args.folder, args.workers, args.batch_size, args.batches)))
        return 0
    if args.child == "first-step":
        print(json.dumps(child_first_step(args.folder, args.model, args.batch_size)))
        return 0
    if args.root is None:
        p.error("the folder ROOT is required")
    if args.cores:
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.cores])
    print(machine(), flush=True)
    small, large = (make_folder(args.root, size, args.cores or os.cpu_count()) for size in args.sizes)
    common = ["--workers", str(args.workers), "--batch-size", str(args.batch_size), "--batches", str(args.batches)]

    a = throughput(small, args.workers, args.batch_size, args.repeats)
    print(f"(a) {args.workers} workers, batch {args.batch_size}, {args.repeats} epochs each: streaming "
          f"{a['best']['streaming']:.0f} images/s, plain DataLoader {a['best']['plain']:.0f} images/s, "
          f"ratio {a['ratio']:.3f} (best of each; all: {json.dumps(a['images_per_s'])})", flush=True)

    rss = {size: in_child("rss", "--folder", str(folder), *common) for size, folder in zip(args.sizes, (small, large))}
    for key in ("main_mib", "worker_mib"):
        growth = rss[args.sizes[1]][key] / rss[args.sizes[0]][key] - 1
        print(f"(b) peak RSS, {key[:-4]}: {rss[args.sizes[0]][key]:.0f} MiB at {args.sizes[0]:,} images, "
              f"{rss[args.sizes[1]][key]:.0f} MiB at {args.sizes[1]:,}: {growth:+.1%}", flush=True)

    for cache in ("cold", "warm"):  # the first run makes the manifest, the second reuses it
        env = {"XDG_CACHE_HOME": str(args.root / "cache")}
        if cache == "cold":
            shutil.rmtree(args.root / "cache", ignore_errors=True)
        c = in_child("first-step", "--folder", str(large), "--model", args.model, "--batch-size",
                     str(args.batch_size), env=env)
        print(f"(c) {args.sizes[1]:,} images, {cache} manifest: training starts {c['train_start_s']:.1f} s after the "
              f"process started, its first step ({args.model}, batch {args.batch_size}) ends at "
              f"{c['first_step_s']:.1f} s ({c['data']})", flush=True)
    print(machine(), flush=True)  # the load again, after the measurements
    return 0


if __name__ == "__main__":
    sys.exit(main())
