"""The training engine: `fit` runs a config end to end; `train_step` and `evaluate` are the math.

No printing here: progress, files and plots are callbacks supplied by the caller (the CLI).
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from alexnet_lab.engine import checkpoint as ckpt
from alexnet_lab.engine.config import TrainConfig
from alexnet_lab.engine.distributed import agree_to_stop, seed_per_rank
from alexnet_lab.engine.device import autocast, resolve_device, resolve_precision, synchronize
from alexnet_lab.engine.setup import (Splits, build_optimizer, build_scheduler, load_splits,
                                      make_loaders, prepare_model)
from alexnet_lab.errors import UserError


class Callback:
    """Hooks the engine calls; every method is optional. Rows are plain dicts of numbers."""

    def on_train_start(self, info: dict) -> None: ...
    def on_step(self, step: int) -> None: ...            # host-side only; must not sync
    def on_log(self, row: dict) -> None: ...             # a point of the training curves
    def on_checkpoint(self, payload: dict, is_best: bool) -> None: ...
    def on_train_end(self, summary: dict) -> None: ...
    def should_stop(self) -> bool: return False          # checked at every step boundary


class TrainingDiverged(UserError):
    pass


class StopRequested(Exception):
    """Raised out of `fit` after the state at a step boundary was checkpointed."""

    def __init__(self, payload: dict):
        super().__init__("training stopped on request")
        self.payload = payload


@dataclass
class RunState:
    """Everything needed to continue a run; saved in every checkpoint."""
    epoch: int = 0              # current epoch (0-based)
    batch: int = 0              # batches of the current epoch already done
    step: int = 0               # optimizer steps done in total
    examples: int = 0           # training examples seen in total (all processes)
    step_seconds: float = 0.0   # time in training steps (data + fwd + bwd + update), no evaluation
    wall_seconds: float = 0.0   # wall clock since the first step, evaluation included
    epoch_loss_sum: float = 0.0  # running sums of the current epoch (d2l's Accumulator)
    epoch_correct: float = 0.0
    epoch_examples: int = 0
    best_test_acc: float = -1.0
    time_to_target_s: float | None = None
    metrics: list = field(default_factory=list)


def _to_input(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def train_step(model: nn.Module, loss_fn: nn.Module, optimizer: torch.optim.Optimizer, scaler,
               images: torch.Tensor, labels: torch.Tensor, precision: str, device: torch.device):
    """One SGD step; returns the (detached, on-device) summed loss and correct count."""
    with autocast(precision, device):
        logits = model(images)                       # (B, 10)
        loss = loss_fn(logits, labels)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    n = labels.shape[0]
    return loss.detach().float() * n, (logits.argmax(dim=1) == labels).sum()


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, precision: str = "fp32",
             channels_last: bool = False, num_classes: int = 10, world_size: int = 1) -> dict:
    """Accuracy, mean loss and per-class counts over a loader (one sync at the end)."""
    was_training = model.training
    model.eval()
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    loss_sum = torch.zeros((), device=device)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    for images, labels in loader:
        with autocast(precision, device):
            logits = model(_to_input(images, channels_last))
        loss_sum += loss_fn(logits.float(), labels)
        pred = logits.argmax(dim=1)
        confusion += torch.bincount(labels * num_classes + pred,
                                    minlength=num_classes * num_classes).view(num_classes, num_classes)
    model.train(was_training)
    loss_sum = _all_reduce(loss_sum, world_size)
    confusion = _all_reduce(confusion, world_size).cpu()  # the sync point of evaluation
    n = int(confusion.sum())
    correct = int(confusion.diag().sum())
    return {"accuracy": correct / max(n, 1), "loss": float(loss_sum) / max(n, 1), "examples": n,
            "correct": correct, "confusion": confusion}


@contextmanager
def _backend_flags(device: torch.device, deterministic: bool):
    """cudnn autotuning / determinism only for the duration of training, restored after."""
    saved = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
             torch.are_deterministic_algorithms_enabled())
    torch.backends.cudnn.benchmark = device.type == "cuda" and not deterministic
    torch.backends.cudnn.deterministic = deterministic
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[:2]
        torch.use_deterministic_algorithms(saved[2])


def fit(config: TrainConfig, callbacks: list[Callback] | None = None, *, splits: Splits | None = None,
        resume: dict | None = None, rank: int = 0, world_size: int = 1, wrap_model=None) -> dict:
    """Train `config` to the end (or to its target accuracy) and return the summary dict.

    `resume` is a checkpoint payload to continue from. `wrap_model` (e.g. DDP) wraps the model used
    for the steps; checkpoints always hold the unwrapped, uncompiled module's state_dict.
    """
    callbacks = callbacks or []
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)
    splits = splits or load_splits(config.data_dir, config.limit_train, config.limit_test)
    train_loader, test_loader = make_loaders(config, splits, device, rank, world_size)
    steps_per_epoch = len(train_loader)
    total_steps = max(1, math.ceil(config.epochs * steps_per_epoch))
    num_epochs = math.ceil(total_steps / steps_per_epoch)

    model = prepare_model(config, device)
    optimizer = build_optimizer(config, model)
    scheduler = build_scheduler(config, optimizer, total_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    state = RunState()
    if resume is not None:
        try:
            model.load_state_dict(resume["model_state"])
            optimizer.load_state_dict(resume["optimizer_state"])
            scheduler.load_state_dict(resume["scheduler_state"])
            scaler.load_state_dict(resume["scaler_state"])
            state = RunState(**resume["run_state"])
            # Last, after model init consumed the seeded generator: dropout continues where it was.
            ckpt.set_rng_state(resume["rng"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise UserError(f"The checkpoint to resume from does not fit this run "
                            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
                            "It was written for another model, recipe or version.") from None
    if world_size > 1:
        seed_per_rank(config.seed, rank, state.step)
    step_model = wrap_model(model) if wrap_model else model
    if config.compile:
        step_model = torch.compile(step_model)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    log_every = max(1, steps_per_epoch // config.log_points_per_epoch)

    sums = {}  # per-epoch running sums, on the device

    def payload() -> dict:
        totals = _all_reduce(torch.stack([sums["loss"], sums["correct"].float()]), world_size)
        state.epoch_loss_sum, state.epoch_correct = float(totals[0]), float(totals[1])
        # Never overwrite the last good checkpoint with a diverged model (one sync, at saves only).
        finite = torch.stack([p.detach().isfinite().all() for p in model.parameters()]).all()
        if not (math.isfinite(state.epoch_loss_sum) and bool(finite)):
            raise _diverged(state.step, steps_per_epoch, config.lr)
        return {"model_name": config.model, "config": config.to_dict(),
                "model_state": model.state_dict(), "optimizer_state": optimizer.state_dict(),
                "scheduler_state": scheduler.state_dict(), "scaler_state": scaler.state_dict(),
                "run_state": {**state.__dict__, "metrics": list(state.metrics)},
                "rng": ckpt.rng_state(), "world_size": world_size}

    def save(is_best: bool = False) -> None:
        data = payload()
        for cb in callbacks:
            cb.on_checkpoint(data, is_best)

    info = {"device": str(device), "precision": precision, "steps_per_epoch": steps_per_epoch,
            "total_steps": total_steps, "num_epochs": num_epochs, "train_examples": len(splits.train_images),
            "test_examples": len(splits.test_images), "data_source": splits.source,
            "input_size": train_loader.resize, "start_step": state.step, "start_examples": state.examples,
            "world_size": world_size,
            "params": sum(p.numel() for p in model.parameters())}
    for cb in callbacks:
        cb.on_train_start(info)

    reached = False
    last_train = [r for r in state.metrics if "train_loss" in r]
    train_loss = last_train[-1]["train_loss"] if last_train else float("nan")
    train_acc = last_train[-1]["train_acc"] if last_train else float("nan")
    tested = [r for r in state.metrics if "test_acc" in r]
    test_acc = tested[-1]["test_acc"] if tested else float("nan")
    wall_start = time.perf_counter() - state.wall_seconds
    with _backend_flags(device, config.deterministic):
        model.train()
        while state.step < total_steps and not reached:
            if state.batch >= steps_per_epoch:  # resumed at the end of an epoch under another world size
                state.epoch, state.batch = state.epoch + 1, 0
            epoch = state.epoch
            train_loader.set_epoch(epoch)
            if state.batch == 0:
                state.epoch_loss_sum = state.epoch_correct = 0.0
                state.epoch_examples = 0
            # Running sums stay on the device; read only at log points (no per-step sync).
            # They are all-reduced, so a resumed epoch's saved (global) sums start on rank 0 only.
            own = rank == 0
            sums["loss"] = torch.tensor(state.epoch_loss_sum if own else 0.0, device=device)
            sums["correct"] = torch.tensor(round(state.epoch_correct) if own else 0, dtype=torch.int64,
                                           device=device)
            chunk_start = time.perf_counter()
            for images, labels in train_loader.iterate(state.batch):
                batch_loss, batch_correct = train_step(step_model, loss_fn, optimizer, scaler,
                                                       _to_input(images, config.channels_last), labels,
                                                       precision, device)
                scheduler.step()
                sums["loss"] += batch_loss
                sums["correct"] += batch_correct
                n = labels.shape[0] * world_size
                state.epoch_examples += n
                state.examples += n
                state.step += 1
                state.batch += 1
                for cb in callbacks:
                    cb.on_step(state.step)
                end_of_epoch = state.batch == steps_per_epoch or state.step == total_steps
                if state.batch % log_every == 0 or end_of_epoch:
                    # A host-device sync point: the numbers must be shown.
                    totals = _all_reduce(torch.stack([sums["loss"], sums["correct"].float()]), world_size)
                    train_loss = float(totals[0]) / state.epoch_examples
                    train_acc = float(totals[1]) / state.epoch_examples
                    now = time.perf_counter()
                    state.step_seconds += now - chunk_start
                    if not math.isfinite(train_loss):
                        raise _diverged(state.step, steps_per_epoch, config.lr)
                    row = {"epoch": epoch + state.batch / steps_per_epoch, "step": state.step,
                           "examples": state.examples, "train_loss": train_loss, "train_acc": train_acc,
                           "lr": scheduler.get_last_lr()[0]}
                    is_best = False
                    if config.target_accuracy is not None or end_of_epoch:
                        test_acc = evaluate(model, test_loader, device, precision, config.channels_last,
                                            world_size=world_size)["accuracy"]
                        row["test_acc"] = test_acc
                        is_best = test_acc > state.best_test_acc
                        state.best_test_acc = max(state.best_test_acc, test_acc)
                        if config.target_accuracy is not None and test_acc >= config.target_accuracy:
                            reached = True
                            state.time_to_target_s = time.perf_counter() - wall_start
                    state.wall_seconds = time.perf_counter() - wall_start
                    row["elapsed_s"] = state.wall_seconds
                    state.metrics.append(row)
                    for cb in callbacks:
                        cb.on_log(row)
                    if end_of_epoch:
                        state.epoch, state.batch = epoch + 1, 0
                    if end_of_epoch or is_best or reached:
                        save(is_best)
                    chunk_start = time.perf_counter()
                    if reached or end_of_epoch:
                        break
                elif config.checkpoint_every and state.step % config.checkpoint_every == 0:
                    state.wall_seconds = time.perf_counter() - wall_start
                    save()
                stop = any(cb.should_stop() for cb in callbacks)
                if world_size > 1:  # all ranks must stop at the same step (see agree_to_stop)
                    stop = agree_to_stop(stop, state.step, device)
                if stop:
                    synchronize(device)
                    state.wall_seconds = time.perf_counter() - wall_start
                    data = payload()
                    for cb in callbacks:
                        cb.on_checkpoint(data, False)
                    raise StopRequested(data)

    synchronize(device)
    state.wall_seconds = time.perf_counter() - wall_start
    summary = {
        "model": config.model, "preset": config.preset, "device": str(device), "precision": precision,
        "epochs": state.examples / max(1, len(splits.train_images)), "steps": state.step,
        "train_loss": train_loss, "train_acc": train_acc, "test_acc": test_acc,
        "best_test_acc": state.best_test_acc,
        # examples/sec as d2l defines it: training examples over time spent in training steps.
        "examples_per_sec": state.examples / max(state.step_seconds, 1e-9),
        "step_seconds": state.step_seconds, "wall_seconds": state.wall_seconds,
        "train_examples": state.examples, "target_accuracy": config.target_accuracy,
        "reached_target": reached, "time_to_target_s": state.time_to_target_s,
    }
    for cb in callbacks:
        cb.on_train_end(summary)
    return summary


def _diverged(step: int, steps_per_epoch: int, lr: float) -> TrainingDiverged:
    epoch = (step - 1) // steps_per_epoch + 1
    return TrainingDiverged(
        f"The training loss became non-finite (NaN or inf) by step {step} (epoch {epoch}). "
        f"The learning rate ({lr}) is probably too high for this model and recipe: lower --lr. "
        "Checkpoints already written were kept: a diverged state is never saved.")


def _all_reduce(values: torch.Tensor, world_size: int) -> torch.Tensor:
    if world_size > 1:
        import torch.distributed as dist
        dist.all_reduce(values)
    return values
