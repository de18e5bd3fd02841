"""Numerics chosen by measurement: for --precision auto and a channels-last left unset, time a few real
training steps of each candidate on this machine, take the fastest and remember it in the user cache.

A capability flag is not a measurement: a CPU that "supports" bf16 may run it slower than fp32. So the
candidates (fp32 and bf16 where oneDNN has native bf16, on a CPU; fp32, bf16 and fp16 on a CUDA GPU;
those MPS trains in on an Apple GPU; each NCHW and NHWC) are timed on the step `fit` builds, with the
model, batch and input size of the run, and the choice is cached per machine (CPU name and ISA, threads,
GPU), torch version, model, input, batch, optimizer and device type: any change measures again.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import math
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from alexnet_lab import files
from alexnet_lab.engine.builders import input_size
from alexnet_lab.engine.config import PRECISIONS, TrainConfig
from alexnet_lab.engine.device import (backend_flags, cpu_has_fast_bf16, cpu_model_and_flags, mps_precisions,
                                       resolve_precision, synchronize)
from alexnet_lab.errors import UserError
from alexnet_lab.models import get_spec

WARMUP_STEPS, TIMED_STEPS = 1, 2  # per candidate: AlexNet at 224 on 2 slow cores, 4 candidates, ~15 s
MIN_TIMED_S, MAX_TIMED_STEPS = 0.25, 200  # short steps are timed until they add up to this (or that many)
CACHE_FORMAT = "alexnet-lab-numerics/1"
CACHE_MAX_BYTES = 1 << 20         # a larger file is not this program's: ignored (and replaced)
CACHE_MAX_ENTRIES = 64            # the newest are kept: machines, models and batch sizes measured
PLAIN = ("fp32", False)           # the book's numerics: fp32, channels-first (NCHW)
_REMEMBERED: dict[str, dict] = {}  # this process's measurements, for a cache file that cannot be written


def label(precision: str, channels_last: bool) -> str:
    return f"{precision} + {'channels-last' if channels_last else 'channels-first'}"


@dataclass(frozen=True)
class Numerics:
    """The precision and memory format a training step runs in, and how they were chosen."""
    precision: str
    channels_last: bool
    how: str = "given"     # given (set, or the device's only candidate), measured (now), cached (earlier),
                           # rule (torchrun: every process must choose alike, so none measures)
    seconds: dict = field(default_factory=dict)  # candidate label -> median seconds of one training step
    machine: str = ""      # what it was measured on, in words
    cache: str | None = None  # the file the choice is remembered in (None: not written)

    @property
    def label(self) -> str:
        return label(self.precision, self.channels_last)

    @property
    def step_seconds(self) -> float | None:
        """The measured seconds of one step in the chosen numerics (None unless measured or cached)."""
        return self.seconds.get(self.label)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def candidates(config: TrainConfig, device: torch.device) -> list[tuple[str, bool]]:
    """(precision, channels_last) pairs worth timing for `config` on `device`: a setting given is the
    only value of its kind; auto precision is what the device trains in (bf16 on a CPU only where oneDNN
    has native bf16: emulated, it only costs measuring time). The plain fp32 NCHW step first, so a tie
    keeps it."""
    if config.precision != "auto":
        precisions = [resolve_precision(config.precision, device)]  # an impossible one is a UserError
    elif device.type == "cpu":
        precisions = ["fp32"] + (["bf16"] if cpu_has_fast_bf16() else [])
    elif device.type == "cuda":
        native_bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
        precisions = ["fp32", *(["bf16"] if native_bf16 else []), "fp16"]
    elif device.type == "mps":
        precisions = mps_precisions()
    else:
        precisions = ["fp32"]
    formats = [False, True] if config.channels_last is None else [config.channels_last]
    return [(p, c) for p in precisions for c in formats]


def rule(config: TrainConfig, device: torch.device) -> Numerics:
    """Numerics without measuring (under torchrun): the capability rule for the precision
    (device.resolve_precision), channels-last unless set otherwise, as the presets had it before."""
    channels_last = True if config.channels_last is None else config.channels_last
    return Numerics(resolve_precision(config.precision, device), channels_last, "rule")


def time_steps(works: dict[str, Callable[[], object]], device: torch.device, steps: int, warmup: int,
               min_seconds: float = 0.0, max_steps: int = 1, clock: Callable[[], float] = time.perf_counter
               ) -> dict[str, float]:
    """Median seconds of each of `works` over `steps` timed calls after `warmup` untimed ones, each call
    between device syncs; more calls (up to `max_steps`) while a work's timed calls add up to less than
    `min_seconds` (a step of a millisecond is noise twice). The works are interleaved, every other round
    in reverse order, so that a machine slowing down or speeding up meanwhile (other work beside it)
    weighs on each alike."""
    names = list(works)
    times: dict[str, list[float]] = {name: [] for name in names}
    round_ = 0
    while round_ < warmup + steps or (round_ < warmup + max_steps
                                       and min(sum(t) for t in times.values()) < min_seconds):
        for name in names if round_ % 2 == 0 else names[::-1]:
            synchronize(device)
            start = clock()
            works[name]()
            synchronize(device)
            if round_ >= warmup:
                times[name].append(clock() - start)
        round_ += 1
    return {name: statistics.median(t) for name, t in times.items()}


def random_batch(batch_size: int, size: int, device: torch.device, channels: int = 1, classes: int = 10):
    """A seeded batch of float images in [0, 1] (B, C, S, S) and labels (B,) on `device`."""
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(batch_size, channels, size, size, generator=gen).to(device)
    return images, torch.randint(0, classes, (batch_size,), generator=gen).to(device)


def model_adaptation(config: TrainConfig, model_kwargs: dict) -> dict:
    """The model's input channels and classes: those given, else its builder's defaults."""
    spec = get_spec(config.model)
    default = inspect.signature(spec.builder).parameters.get("num_classes")
    classes = default.default if default is not None and isinstance(default.default, int) else 10
    return {"in_channels": model_kwargs.get("in_channels") or spec.in_channels,
            "num_classes": model_kwargs.get("num_classes") or classes}


def measure(config: TrainConfig, device: torch.device, model_kwargs: dict, pairs: list[tuple[str, bool]],
            build: Callable[[TrainConfig], object]) -> dict[str, float]:
    """Median seconds of one training step in each of `pairs`, `build(config)` making the step `fit`
    runs for a config with its numerics set (one model and optimizer per memory format, each precision
    an autocast over it). Random data; the global random state is restored after, so the run that
    follows is the one it would have been; the models are thrown away."""
    adapted = model_adaptation(config, model_kwargs)
    rng_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=rng_devices), backend_flags(device, config.deterministic):
        images, labels = random_batch(config.batch_size, input_size(config), device, adapted["in_channels"],
                                      adapted["num_classes"])
        built, works = {}, {}
        for precision, channels_last in pairs:
            if channels_last not in built:  # torch.compile's build would cost more than the measurement
                built[channels_last] = build(config.replace(precision=precision, channels_last=channels_last,
                                                            compile=False))
            step = built[channels_last].with_precision(precision)
            works[label(precision, channels_last)] = functools.partial(step, images, labels)
        return time_steps(works, device, TIMED_STEPS, WARMUP_STEPS, MIN_TIMED_S, MAX_TIMED_STEPS)


def machine_key(device: torch.device) -> dict:
    """What a measurement is valid for: the CPU (name, ISA, threads) and the GPU's name."""
    cpu, isa = cpu_model_and_flags()
    gpu = None
    if device.type == "cuda":
        gpu = torch.cuda.get_device_name(device)
    elif device.type == "mps":
        gpu = "Apple GPU (mps)"
    return {"cpu": cpu, "isa": isa, "threads": torch.get_num_threads(), "gpu": gpu}


def cache_key(config: TrainConfig, device: torch.device, model_kwargs: dict, pairs: list) -> dict:
    return {"machine": machine_key(device), "torch": torch.__version__, "device": device.type,
            "model": config.model, "model_kwargs": model_adaptation(config, model_kwargs),
            "input_size": input_size(config), "batch_size": config.batch_size, "optimizer": config.optimizer,
            "candidates": [label(*pair) for pair in pairs]}


def cache_file() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "alexnet-lab" / "numerics.json"


def describe_machine(key: dict) -> str:
    machine = key["machine"]
    if machine["gpu"]:
        return machine["gpu"]
    threads = machine["threads"]
    return f"{machine['cpu']}, {'+'.join(machine['isa']) or 'no AVX2'}, {threads} thread{'s' * (threads != 1)}"


def _entries(path: Path) -> list[dict]:
    """The cache's well-formed entries; [] for a missing, damaged, foreign or linked file (never followed)."""
    raw = files.head(path, CACHE_MAX_BYTES + 1)
    if not raw or len(raw) > CACHE_MAX_BYTES:
        return []
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return []
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT or not isinstance(data.get("entries"), list):
        return []
    return [entry for entry in data["entries"] if _valid(entry)]


def _valid(entry) -> bool:
    if not (isinstance(entry, dict) and isinstance(entry.get("key"), dict)
            and entry.get("precision") in PRECISIONS[1:] and isinstance(entry.get("channels_last"), bool)):
        return False
    seconds = entry.get("seconds")
    return (isinstance(seconds, dict) and label(entry["precision"], entry["channels_last"]) in seconds
            and all(isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
                    and math.isfinite(v) and v > 0 for k, v in seconds.items()))


def _cached(path: Path, key: dict) -> dict | None:
    """The remembered choice for `key`: the cache file's entry, else this process's own measurement."""
    found = next((entry for entry in _entries(path) if entry["key"] == key), None)
    if found is not None and set(found["seconds"]) == set(key["candidates"]):
        return {**found, "cache": str(path)}
    return _REMEMBERED.get(json.dumps(key, sort_keys=True))


def _remember(path: Path, key: dict, entry: dict) -> bool:
    """Add `entry` to the cache file (through files.py; a damaged file is replaced, the oldest entries
    dropped beyond CACHE_MAX_ENTRIES). False where it cannot be written (a read-only home, a link)."""
    _REMEMBERED[json.dumps(key, sort_keys=True)] = {**entry, "cache": None}
    kept = [e for e in _entries(path) if e["key"] != key][-(CACHE_MAX_ENTRIES - 1):]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        files.write_text(path, json.dumps({"format": CACHE_FORMAT, "entries": [*kept, {"key": key, **entry}]},
                                          indent=1) + "\n")
    except (OSError, UserError):  # files.WriteError, or a target refused (a symlink, a folder)
        return False
    return True


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() \
        and torch.distributed.get_world_size() > 1


def choose_numerics(config: TrainConfig, device: torch.device, model_kwargs: dict,
                    build: Callable[[TrainConfig], object]) -> Numerics:
    """The numerics a step of `config` runs in on `device`: as given where `config` sets them (or the
    device has one candidate); else the fastest candidate as remembered for this machine and run, or
    measured now (`measure`, with `build`) and remembered. Under torchrun by `rule`, unmeasured."""
    pairs = candidates(config, device)
    if len(pairs) == 1:
        return Numerics(*pairs[0])
    if _distributed():
        return rule(config, device)
    key = cache_key(config, device, model_kwargs, pairs)
    path = cache_file()
    machine = describe_machine(key)
    hit = _cached(path, key)
    if hit is not None:
        return Numerics(hit["precision"], hit["channels_last"], "cached", hit["seconds"], machine, hit["cache"])
    seconds = measure(config, device, model_kwargs, pairs, build)
    best = min(pairs, key=lambda pair: seconds[label(*pair)])  # the first of equals: fp32 NCHW
    entry = {"precision": best[0], "channels_last": best[1], "seconds": seconds}
    saved = _remember(path, key, entry)
    return Numerics(*best, "measured", seconds, machine, str(path) if saved else None)


def as_evaluated(config: TrainConfig, ran, device: torch.device) -> TrainConfig:
    """`config` with the numerics it left to the machine set as its run resolved them (`ran`: a
    checkpoint's "evaluated_with"), so that evaluating on `device` measures as the run did: the memory
    format always, the precision on the same kind of device. What `ran` does not record stays."""
    ran = ran if isinstance(ran, dict) else {}
    same_kind = isinstance(ran.get("device"), str) and ran["device"].split(":")[0] == device.type
    changes = {}
    if config.channels_last is None and isinstance(ran.get("channels_last"), bool):
        changes["channels_last"] = ran["channels_last"]
    if config.precision == "auto" and same_kind and ran.get("precision") in PRECISIONS[1:]:
        changes["precision"] = ran["precision"]
    return config.replace(**changes) if changes else config


def numerics_line(numerics: dict | None) -> str | None:
    """One line saying which numerics a run chose and by how much (None where they were given)."""
    if not numerics or numerics.get("how") not in ("measured", "cached", "rule"):
        return None
    chosen = label(numerics["precision"], numerics["channels_last"])
    if numerics["how"] == "rule":
        return (f"Numerics: {chosen}, by rule, not measured (under torchrun every process must choose alike); "
                "set --precision and --channels-last/--no-channels-last to choose yourself.")
    seconds = numerics["seconds"]
    plain = label(*PLAIN) if label(*PLAIN) in seconds else next(iter(seconds))
    when = "measured" if numerics["how"] == "measured" else "measured earlier"
    if chosen == plain:
        runner_up = min((s, name) for name, s in seconds.items() if name != plain)
        how = (f"{when} the fastest of {len(seconds)} (the next, {runner_up[1]}, "
               f"{seconds[plain] / runner_up[0]:.2f}x as fast)")
    else:
        how = f"{when} {seconds[plain] / seconds[chosen]:.2f}x as fast as {plain}"
    where = "not cached (the cache file could not be written)"
    if numerics["cache"]:
        where = f"cached in {_shown(numerics['cache'])}" + (" (delete it to measure again)"
                                                             if numerics["how"] == "cached" else "")
    return f"Numerics: {chosen}, {how}, on this machine ({numerics['machine']}); {where}"


def _shown(path: str) -> str:
    home = str(Path.home())
    return "~" + path[len(home):] if home != "/" and path.startswith(home + os.sep) else path
