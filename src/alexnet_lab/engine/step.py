"""The training step, built in one place: `build_training_step(config)` makes everything a step needs
(device, numerics, model, optimizer, schedule, scaler, loss); `book_step` is d2l.train_ch6's step.

Used by `fit`, the speed estimate, `bench` and the d2l API, so that what is timed is what is trained.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from alexnet_lab.engine.builders import build_scheduler, prepare_model
from alexnet_lab.engine.optimizers import build_optimizer, load_optimizer_state
from alexnet_lab.engine.config import TrainConfig
from alexnet_lab.engine.device import autocast, check_compile, resolve_device
from alexnet_lab.engine.ema import WeightEMA
from alexnet_lab.engine.lookahead import Lookahead
from alexnet_lab.engine.numerics import Numerics, choose_numerics
from alexnet_lab.errors import UserError


def correct_count(y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Number of correct predictions as a tensor on y's device (no sync); d2l's `accuracy` semantics:
    class scores are reduced by argmax, a 1-D `y_hat` is taken as the predicted labels."""
    if y_hat.dim() > 1 and y_hat.shape[1] > 1:
        y_hat = y_hat.argmax(dim=1)
    return (y_hat.type(y.dtype) == y).type(y.dtype).sum()


def to_model_input(images: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """A (B, 1, S, S) batch in the memory format the model runs in (NHWC when `channels_last`)."""
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


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


@dataclass
class TrainingStep:
    """A config's training step with its state. `config` is the run's with its numerics resolved
    (`numerics`: which, and how they were chosen); `model` is the unwrapped, uncompiled module that
    checkpoints hold; `step_model` is what the steps run (compiled, DDP-wrapped)."""
    config: TrainConfig
    device: torch.device
    precision: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    loss_fn: nn.Module
    step_model: nn.Module
    ema: WeightEMA | None = None  # an average of the weights that evaluations use (--ema-decay)
    lookahead: Lookahead | None = None  # slow weights the trained ones restart from (--lookahead-every)
    numerics: Numerics | None = field(default=None)  # how precision and memory format were chosen

    @property
    def channels_last(self) -> bool:
        return bool(self.config.channels_last)

    def with_precision(self, precision: str) -> "TrainingStep":
        """The same model, optimizer and schedule stepped in another autocast precision (a GradScaler
        for fp16): how engine/numerics.py times several precisions on one model."""
        return dataclasses.replace(self, precision=precision,
                                   scaler=torch.amp.GradScaler(self.device.type, enabled=precision == "fp16"))

    @property
    def eval_model(self) -> nn.Module:
        """The weights test evaluations use: the EMA when there is one, else the model."""
        return self.ema.module if self.ema is not None else self.model

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step and one schedule step; (summed loss, correct count) stay on the device.
        `images`: float (B, C, S, S) at the model's input size, as the loaders make them."""
        if not images.is_floating_point():  # a dtype check: no host sync
            raise UserError(f"The training step takes float images (B, C, S, S) in [0, 1] at the model's input "
                            f"size, got {images.dtype} {tuple(images.shape)}. Convert uint8 data with "
                            "alexnet_lab.data.to_float_batch(images, size), as the loaders do.")
        out = train_step(self.step_model, self.loss_fn, self.optimizer, self.scaler,
                         to_model_input(images, self.channels_last), labels, self.precision, self.device)
        self.scheduler.step()
        if self.lookahead is not None:
            self.lookahead.update(self.model)
        if self.ema is not None:
            self.ema.update(self.model)
        return out

    def wrap(self, wrap_model: Callable[[nn.Module], nn.Module]) -> None:
        """Run the steps through `wrap_model(model)` (e.g. DDP), compiled when the config says so."""
        self.step_model = _compiled(wrap_model(self.model), self.config.compile)

    def state_dict(self) -> dict:
        return {"model_state": self.model.state_dict(), "optimizer_state": self.optimizer.state_dict(),
                "scheduler_state": self.scheduler.state_dict(), "scaler_state": self.scaler.state_dict(),
                **({"ema_state": self.ema.state_dict()} if self.ema is not None else {}),
                **({"lookahead_state": self.lookahead.state_dict()} if self.lookahead is not None else {})}

    def load_state_dict(self, payload: dict) -> None:
        self.model.load_state_dict(payload["model_state"])
        load_optimizer_state(self.optimizer, payload["optimizer_state"])  # with this device's kernel
        self.scheduler.load_state_dict(payload["scheduler_state"])
        self.scaler.load_state_dict(payload["scaler_state"])
        if self.ema is not None:
            self.ema.load_state_dict(payload["ema_state"])
        if self.lookahead is not None:
            self.lookahead.load_state_dict(payload["lookahead_state"])


MEASURED_STEPS = 64  # the schedule's length for a candidate step timed by engine/numerics.py (more than it takes)


def _compiled(model: nn.Module, compile_: bool) -> nn.Module:
    return torch.compile(model) if compile_ else model  # lazy: compiles at the first step


def build_training_step(config: TrainConfig, total_steps: int = 1, device: torch.device | None = None,
                        model_kwargs: dict | None = None,
                        budget_used: Callable[[], float] | None = None) -> TrainingStep:
    """Everything one training step of `config` needs; `total_steps` sizes the lr schedule;
    `model_kwargs` (e.g. `builders.model_options(splits)`) adapt the model to the data; `budget_used`
    (the share of a --time-budget-s spent) lets time advance the schedule (builders.build_scheduler).
    Numerics left to the machine (--precision auto, channels-last unset) are measured here, or read
    from the cache of earlier measurements (engine/numerics.py)."""
    device = device if device is not None else resolve_device(config.device)
    model_kwargs = model_kwargs or {}
    if config.compile:
        check_compile(device)
    numerics = choose_numerics(config, device, model_kwargs, build=lambda candidate: build_training_step(
        candidate, MEASURED_STEPS, device, model_kwargs))
    config = config.replace(precision=numerics.precision, channels_last=numerics.channels_last)
    model = prepare_model(config, device, **model_kwargs)
    optimizer = build_optimizer(config, model)
    precision = numerics.precision
    return TrainingStep(
        config=config, device=device, precision=precision, model=model, optimizer=optimizer, numerics=numerics,
        scheduler=build_scheduler(config, optimizer, total_steps, budget_used),
        scaler=torch.amp.GradScaler(device.type, enabled=precision == "fp16"),
        loss_fn=nn.CrossEntropyLoss(label_smoothing=config.label_smoothing),
        step_model=_compiled(model, config.compile),
        ema=WeightEMA(model, config.ema_decay) if config.ema_decay else None,
        lookahead=Lookahead(model, config.lookahead_every, config.lookahead_alpha) if config.lookahead_every else None)


def book_step(net: nn.Module, loss: nn.Module, optimizer: torch.optim.Optimizer, X: torch.Tensor,
              y: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """d2l.train_ch6's inner loop body (fp32, NCHW, the caller's optimizer and loss), with the book's
    names. Returns (loss * batch, correct count) as detached tensors on the device: no sync here."""
    optimizer.zero_grad()
    X, y = X.to(device), y.to(device)
    y_hat = net(X)
    l = loss(y_hat, y)  # noqa: E741  (the book's name)
    l.backward()
    optimizer.step()
    with torch.no_grad():
        return l * X.shape[0], correct_count(y_hat, y)
