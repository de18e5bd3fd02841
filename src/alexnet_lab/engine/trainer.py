"""The training engine: `fit` runs a config end to end (the step: engine.step; the test pass: engine.evaluation).

No printing here: progress, files and plots are callbacks supplied by the caller (the CLI).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, fields

import torch

from alexnet_lab.engine import checkpoint as ckpt
from alexnet_lab.engine.config import TrainConfig, log_every, target_check_due, tests_at_epoch_end
from alexnet_lab.engine.distributed import agree_to_stop, seed_per_rank
from alexnet_lab.engine.device import backend_flags, resolve_device, synchronize
from alexnet_lab.engine.builders import Splits, make_loaders, model_options, splits_for, whitening_images
from alexnet_lab.engine.evaluation import evaluate
from alexnet_lab.engine.step import TrainingStep, build_training_step
from alexnet_lab.errors import UserError
from alexnet_lab.models.whitening import whitening_layers


class Callback:
    """Hooks the engine calls; every method is optional. Rows are plain dicts of numbers."""

    def on_prepared(self, run) -> None: ...              # engine.run.Prepared: config, data, folder, resume
    def on_train_start(self, info: dict) -> None: ...
    def on_step(self, step: int) -> None: ...            # host-side only; must not sync
    def on_log(self, row: dict) -> None: ...             # a point of the training curves
    def on_test_start(self, examples: int, final: bool) -> None: ...  # final: the pass after the last step
    def on_test(self, result: dict) -> None: ...         # a test pass: evaluation.evaluate's dict, step, model
    def on_checkpoint(self, payload: dict, is_best: bool) -> None: ...  # is_best: a new best before the last state
    def on_train_end(self, summary: dict) -> None: ...
    def on_exit(self, taken_back: bool) -> None: ...     # however the run ended (taken_back: its new folder is undone)
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
    """Everything needed to continue a run (saved in every checkpoint), plus the few values that live
    only while this process trains (`transient`). The one mutable object of a run."""
    epoch: int = 0              # current epoch (0-based)
    batch: int = 0              # batches of the current epoch already done
    step: int = 0               # optimizer steps done in total
    examples: int = 0           # training examples seen in total (all processes)
    step_seconds: float = 0.0   # time in training steps (data + fwd + bwd + update), no evaluation
    wall_seconds: float = 0.0   # wall clock since the first step, evaluation included
    epoch_loss_sum: float = 0.0  # running sums of the current epoch (d2l's Accumulator), as of the last save
    epoch_correct: float = 0.0
    epoch_examples: int = 0
    best_test_acc: float = -1.0
    time_to_target_s: float | None = None
    metrics: list = field(default_factory=list)
    # Not saved: this epoch's running sums on the device (read only at log points: no per-step sync),
    # when the current stretch of timed steps began, whether the target accuracy was reached and
    # whether the time budget ran out (read again from the saved wall_seconds on resume).
    loss_on_device: torch.Tensor | None = field(default=None, repr=False, metadata={"transient": True})
    correct_on_device: torch.Tensor | None = field(default=None, repr=False, metadata={"transient": True})
    chunk_start: float = field(default=0.0, metadata={"transient": True})
    reached: bool = field(default=False, metadata={"transient": True})
    out_of_time: bool = field(default=False, metadata={"transient": True})  # --time-budget-s spent

    def saved(self) -> dict:
        """The part a checkpoint holds (plain Python values)."""
        return {f.name: list(self.metrics) if f.name == "metrics" else getattr(self, f.name)
                for f in fields(self) if not f.metadata.get("transient")}


@dataclass
class Stopwatch:
    """A run's wall clock: seconds since its first step, continued across resumes (`start` is set back
    by the time already trained). perf_counter() only: no device sync, cheap enough for every step."""
    start: float | None = None  # None until the first step: the clock reads 0

    def elapsed(self) -> float:
        return 0.0 if self.start is None else time.perf_counter() - self.start


@dataclass
class Run:
    """What stays fixed while a run trains: its config, step, data, callbacks and sizes."""
    config: TrainConfig
    step: TrainingStep
    splits: Splits
    train_loader: object  # BatchLoader
    test_loader: object
    callbacks: list[Callback]
    rank: int
    world_size: int
    steps_per_epoch: int
    total_steps: int
    clock: Stopwatch = field(default_factory=Stopwatch)  # the run's wall clock (evaluations included)

    @property
    def device(self) -> torch.device:
        return self.step.device

    @property
    def log_every(self) -> int:
        return log_every(self.config, self.steps_per_epoch, self.total_steps)

    def emit(self, hook: str, *args) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(*args)

    def elapsed(self) -> float:
        return self.clock.elapsed()

    def time_is_up(self) -> bool:
        """Whether --time-budget-s has passed since the first step (a clock read, no device sync)."""
        budget = self.config.time_budget_s
        return budget is not None and self.elapsed() >= budget


def fit(config: TrainConfig, callbacks: list[Callback] | None = None, *, splits: Splits | None = None,
        resume: dict | None = None, rank: int = 0, world_size: int = 1, wrap_model=None) -> dict:
    """Train `config` to the end (or to its target accuracy) and return the summary dict.

    `resume` is a checkpoint payload to continue from. `wrap_model` (e.g. DDP) wraps the model used
    for the steps; checkpoints always hold the unwrapped, uncompiled module's state_dict. With
    --time-budget-s training ends at the planned steps or when the time is up, whichever comes first.
    """
    if config.time_budget_s is not None and world_size > 1:  # each process's clock would set its own lr
        raise UserError("--time-budget-s is for one process: under torchrun each process's clock would "
                        "move its learning rate differently. Leave it out, or set --epochs to fit the time.")
    device = resolve_device(config.device)
    splits = splits or splits_for(config)
    splits.fingerprint  # noqa: B018  (hashed once, here, outside the timed steps; saved with every checkpoint)
    train_loader, test_loader = make_loaders(config, splits, device, rank, world_size)
    steps_per_epoch = len(train_loader)
    total_steps = max(1, math.ceil(config.epochs * steps_per_epoch))
    clock = Stopwatch()  # started at the first step (below); the schedule reads it from then on
    budget_used = None if config.time_budget_s is None else lambda: clock.elapsed() / config.time_budget_s
    step = build_training_step(config, total_steps, device, model_options(splits), budget_used)
    state = restore(step, resume) if resume is not None else RunState()
    if world_size > 1:
        seed_per_rank(config.seed, rank, state.step)
    if wrap_model is not None:
        step.wrap(wrap_model)  # after restoring: DDP broadcasts rank 0's weights when it wraps
    run = Run(config, step, splits, train_loader, test_loader, callbacks or [], rank, world_size,
              steps_per_epoch, total_steps, clock)
    run.emit("on_train_start", start_info(run, state))
    clock.start = time.perf_counter() - state.wall_seconds
    state.out_of_time = run.time_is_up()  # a resumed run whose time was up trains no further
    if state.step == 0:
        fit_whitening(run)
    with backend_flags(device, config.deterministic):
        step.model.train()
        while state.step < total_steps and not state.reached and not state.out_of_time:
            train_one_epoch(run, state)
    synchronize(device)
    state.wall_seconds = run.elapsed()
    summary = summarize(run, state)
    run.emit("on_train_end", summary)
    return summary


def fit_whitening(run: Run) -> None:
    """Whitening layers (models/whitening.py) take their filters from the first training images, on
    the clock as airbench counts it; a resumed run has them in its checkpoint."""
    layers = whitening_layers(run.step.model)
    if layers:
        images = whitening_images(run.config, run.splits)
        for layer in layers:
            layer.fit(images)
        if run.step.lookahead is not None:  # its slow weights start from the fitted layers
            run.step.lookahead.reset(run.step.model)


def restore(step: TrainingStep, resume: dict) -> RunState:
    """Load a checkpoint payload into `step` (weights, optimizer, schedule, scaler) and the RNGs."""
    damaged = [name for part in ("model_state", "optimizer_state", "ema_state", "lookahead_state")
               for name in _non_finite(resume.get(part), part)]
    if damaged:  # else the first log point would blame the learning rate for the file's NaNs
        more = f" and {len(damaged) - 3} more" if len(damaged) > 3 else ""
        raise UserError(f"The checkpoint to resume from holds non-finite (NaN or inf) values in "
                        f"{', '.join(damaged[:3])}{more}, so no training can continue from it. alexnet-lab "
                        "never saves a diverged state: the file was changed, or written by another tool. "
                        "Restore checkpoint.pt from a copy, or retrain (best.pt holds weights for predicting only).")
    try:
        step.load_state_dict(resume)
        state = RunState(**resume["run_state"])
        # Last, after model init consumed the seeded generator: dropout continues where it was.
        ckpt.set_rng_state(resume["rng"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise UserError(f"The checkpoint to resume from does not fit this run "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
                        "It was written for another model, recipe or version.") from None
    return state


def _non_finite(value, name: str) -> list[str]:
    """Names of the floating-point tensors in a (nested) state dict that hold a NaN or an inf."""
    if isinstance(value, torch.Tensor):
        return [name] if value.is_floating_point() and not bool(value.isfinite().all()) else []
    if isinstance(value, dict):
        return [n for key, v in value.items() for n in _non_finite(v, f"{name}.{key}")]
    if isinstance(value, (list, tuple)):
        return [n for i, v in enumerate(value) for n in _non_finite(v, f"{name}.{i}")]
    return []


def start_info(run: Run, state: RunState) -> dict:
    """What `on_train_start` receives: the resolved run (device, precision, sizes, data source)."""
    return {"device": str(run.device), "precision": run.step.precision, "channels_last": run.step.channels_last,
            "numerics": run.step.numerics.as_dict(), "steps_per_epoch": run.steps_per_epoch,
            "total_steps": run.total_steps, "num_epochs": math.ceil(run.total_steps / run.steps_per_epoch),
            "train_examples": len(run.splits.train_images), "test_examples": len(run.splits.test_images),
            "data_source": run.splits.source, "input_size": run.train_loader.resize, "start_step": state.step,
            "start_examples": state.examples, "world_size": run.world_size, "params": sum(p.numel() for p in run.step.model.parameters())}


def train_one_epoch(run: Run, state: RunState) -> None:
    """Train from `state.batch` to the epoch's end (or the target accuracy, or the end of the time
    budget: the run's last point), logging, evaluating and checkpointing on the way; checks for a stop
    request at every other step boundary."""
    if state.batch >= run.steps_per_epoch:  # resumed at the end of an epoch under another world size
        state.epoch, state.batch = state.epoch + 1, 0
    run.train_loader.set_epoch(state.epoch)
    if state.batch == 0:
        state.epoch_loss_sum = state.epoch_correct = 0.0
        state.epoch_examples = 0
    # The device sums are all-reduced, so a resumed epoch's saved (global) sums start on rank 0 only.
    own = run.rank == 0
    state.loss_on_device = torch.tensor(state.epoch_loss_sum if own else 0.0, device=run.device)
    state.correct_on_device = torch.tensor(round(state.epoch_correct) if own else 0, dtype=torch.int64,
                                           device=run.device)
    state.chunk_start = time.perf_counter()
    for images, labels in run.train_loader.iterate(state.batch):
        batch_loss, batch_correct = run.step(images, labels)
        state.loss_on_device += batch_loss
        state.correct_on_device += batch_correct
        n = labels.shape[0] * run.world_size
        state.epoch_examples += n
        state.examples += n
        state.step += 1
        state.batch += 1
        run.emit("on_step", state.step)
        state.out_of_time = run.time_is_up()  # read once a step: the stop and the last point agree
        end_of_epoch = state.batch == run.steps_per_epoch or state.step == run.total_steps or state.out_of_time
        saved = False
        if state.batch % run.log_every == 0 or end_of_epoch:
            saved = log_point(run, state, end_of_epoch)
            if state.reached or end_of_epoch:
                return
        if not saved and run.config.checkpoint_every and state.step % run.config.checkpoint_every == 0:
            state.wall_seconds = run.elapsed()
            save(run, state)
        stop_if_requested(run, state)


def log_point(run: Run, state: RunState, end_of_epoch: bool) -> bool:
    """A point of the training curves: the epoch's running means (a sync point: they are shown), the
    test accuracy at the epoch ends --eval-every asks for and after the last step (at every point with
    a target accuracy), and the checkpoints due. True if it saved one."""
    train_loss, train_acc = epoch_means(run, state)
    state.step_seconds += time.perf_counter() - state.chunk_start
    if not math.isfinite(train_loss):
        raise _diverged(state.step, run.steps_per_epoch, run.config)
    row = {"epoch": state.epoch + state.batch / run.steps_per_epoch, "step": state.step,
           "examples": state.examples, "train_loss": train_loss, "train_acc": train_acc,
           "lr": run.step.scheduler.get_last_lr()[0]}
    is_best = False
    if (run.config.target_accuracy is not None and (end_of_epoch or target_check_due(
            run.config, state.batch, run.steps_per_epoch, run.total_steps))) or (
            end_of_epoch and tests_at_epoch_end(run.config, state.epoch + 1,
                                                state.step == run.total_steps or state.out_of_time)):
        is_best = evaluate_point(run, state, row)
    state.wall_seconds = run.elapsed()
    row["elapsed_s"] = state.wall_seconds
    state.metrics.append(row)
    run.emit("on_log", row)
    if end_of_epoch:
        state.epoch, state.batch = state.epoch + 1, 0
    saving = end_of_epoch or is_best or state.reached
    if saving:  # a best at the run's last state is in checkpoint.pt: best.pt would be a copy of it
        save(run, state, is_best and not (state.reached or state.out_of_time or state.step == run.total_steps))
    state.chunk_start = time.perf_counter()
    return saving


def evaluate_point(run: Run, state: RunState, row: dict) -> bool:
    """Evaluate on the test set into `row` (and `on_test`: the last one, after the last step, is the run's
    final test pass); note the best accuracy and the target. True: a new best."""
    run.emit("on_test_start", len(run.splits.test_images), state.step == run.total_steps or state.out_of_time)
    result = evaluate(run.step.eval_model, run.test_loader, run.device, run.step.precision,
                      run.step.channels_last, len(run.splits.class_names), run.world_size, tta=run.config.tta)
    run.emit("on_test", {**result, "step": state.step, "model": run.step.eval_model})
    row["test_acc"] = test_acc = result["accuracy"]
    is_best = test_acc > state.best_test_acc
    state.best_test_acc = max(state.best_test_acc, test_acc)
    target = run.config.target_accuracy
    if target is not None and test_acc >= target:
        state.reached = True
        state.time_to_target_s = run.elapsed()
    return is_best


def epoch_means(run: Run, state: RunState) -> tuple[float, float]:
    """Mean training loss and accuracy of the epoch so far, over all processes (a sync point)."""
    totals = _all_reduce(torch.stack([state.loss_on_device, state.correct_on_device.float()]), run.world_size)
    return float(totals[0]) / state.epoch_examples, float(totals[1]) / state.epoch_examples


def save(run: Run, state: RunState, is_best: bool = False) -> dict:
    """Checkpoint the state at this step boundary (through the callbacks) and return the payload.

    A diverged model is never saved, so the last good checkpoint is never overwritten by one."""
    totals = _all_reduce(torch.stack([state.loss_on_device, state.correct_on_device.float()]), run.world_size)
    state.epoch_loss_sum, state.epoch_correct = float(totals[0]), float(totals[1])
    finite = torch.stack([p.detach().isfinite().all() for p in run.step.model.parameters()]).all()
    if not (math.isfinite(state.epoch_loss_sum) and bool(finite)):  # one sync, at saves only
        raise _diverged(state.step, run.steps_per_epoch, run.config)
    payload = {"model_name": run.config.model, "config": run.config.to_dict(),
               "model_kwargs": model_options(run.splits), "class_names": list(run.splits.class_names),
               **run.step.state_dict(),
               "run_state": state.saved(), "rng": ckpt.rng_state(), "world_size": run.world_size,
               "data_fingerprint": run.splits.fingerprint, "evaluated_with": evaluated_with(run)}
    run.emit("on_checkpoint", payload, is_best)
    return payload


def evaluated_with(run: Run) -> dict:
    """How this run's test evaluations ran, beyond its config (whose --tta they follow): the device, the
    resolved precision and memory format, the batch of test images per process, the processes. `evaluate` reproduces a
    checkpoint's accuracy to the last digit with the same (bf16 sums depend on the batch's shape)."""
    return {"device": str(run.device), "precision": run.step.precision, "channels_last": run.step.channels_last,
            "batch_size": run.test_loader.batch_size, "world_size": run.world_size}


def stop_if_requested(run: Run, state: RunState) -> None:
    """If a callback asks to stop (Ctrl-C, SIGTERM), save as usual and raise `StopRequested`.
    Under DDP every rank stops at the same step (see agree_to_stop)."""
    stop = any(cb.should_stop() for cb in run.callbacks)
    if run.world_size > 1:
        stop = agree_to_stop(stop, state.step, run.device)
    if stop:
        synchronize(run.device)
        state.wall_seconds = run.elapsed()
        raise StopRequested(save(run, state))


def summarize(run: Run, state: RunState) -> dict:
    """The run's results: the last logged train/test numbers, throughput and timings."""
    trained = [r for r in state.metrics if "train_loss" in r]
    tested = [r for r in state.metrics if "test_acc" in r]
    return {
        "model": run.config.model, "preset": run.config.preset, "device": str(run.device),
        "precision": run.step.precision, "epochs": state.examples / max(1, len(run.splits.train_images)),
        "steps": state.step,
        "train_loss": trained[-1]["train_loss"] if trained else float("nan"),
        "train_acc": trained[-1]["train_acc"] if trained else float("nan"),
        "test_acc": tested[-1]["test_acc"] if tested else float("nan"),
        "best_test_acc": state.best_test_acc,
        "best_step": next((r["step"] for r in tested if r["test_acc"] == state.best_test_acc), None),
        # examples/sec as d2l defines it: training examples over time spent in training steps.
        "examples_per_sec": state.examples / max(state.step_seconds, 1e-9),
        "step_seconds": state.step_seconds, "wall_seconds": state.wall_seconds,
        "train_examples": state.examples, "target_accuracy": run.config.target_accuracy,
        "reached_target": state.reached, "time_to_target_s": state.time_to_target_s,
        "time_budget_s": run.config.time_budget_s, "stopped_at_time_budget": state.out_of_time,
    }


def _diverged(step: int, steps_per_epoch: int, config: TrainConfig) -> TrainingDiverged:
    epoch = (step - 1) // steps_per_epoch + 1
    decay = config.lr * config.weight_decay  # SGD's decay multiplies the weights by (1 - lr * wd) a step
    if decay > 1:
        cause = (f"The weight decay ({config.weight_decay:g}) is too high for the learning rate ({config.lr:g}): "
                 f"each step multiplies the weights by 1 - lr x weight decay = {1 - decay:g}, so they "
                 "oscillate and grow without bound: lower --weight-decay.")
    else:
        cause = (f"The learning rate ({config.lr:g}) is probably too high for this model and recipe: lower --lr"
                 + (f" (or --weight-decay, {config.weight_decay:g})." if config.weight_decay else "."))
    return TrainingDiverged(
        f"The training loss became non-finite (NaN or inf) by step {step} (epoch {epoch}). {cause} "
        "Checkpoints already written were kept: a diverged state is never saved.")


def _all_reduce(values: torch.Tensor, world_size: int) -> torch.Tensor:
    if world_size > 1:
        import torch.distributed as dist
        dist.all_reduce(values)
    return values
