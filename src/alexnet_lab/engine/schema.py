"""Schemas of what the program reads back from files (a checkpoint, an exported model's metadata, a run
folder's JSON): each field checked by engine/config.value_problem before use; sizes bounded before allocation.
"""

from __future__ import annotations

import json
import random
import typing
from dataclasses import fields

import torch

from alexnet_lab.engine import checkpoint as ckpt
from alexnet_lab.engine.builders import input_size
from alexnet_lab.engine.config import KINDS, TrainConfig, augment_value, field_types, hint_kind, value_problem
from alexnet_lab.engine.optimizers import parameter_groups
from alexnet_lab.engine.trainer import RunState
from alexnet_lab.errors import UserError, describe
from alexnet_lab.models import build_model, check_input_size, list_models

METADATA_FORMAT = "alexnet-lab-model/1"  # the exported model's metadata (engine/inference.py writes it)

COUNT = (0, 2**62, "")       # steps, examples, epochs: far beyond any run, and every one fits an int64
CLASSES = (2, 100_000, "")   # a classifier needs two classes; 100,000 bounds the output layer
CHANNELS = (1, 3)            # the data give gray or RGB images (--channels)
SIDE_MAX = 4096              # the largest input side, as --resize allows (its range in config.py)
STORED_FACTOR = 4            # image-folder models decode at most 4x their input side (2012 crops: 256/224)
NAME_MAX = 255               # a class name is a folder name: at most 255 bytes on common file systems
LR = (0, 1e4, "")            # a learning rate or decay as an optimizer group holds it (config.py's bounds)
# What LambdaLR.load_state_dict copies into the scheduler's attributes (any other key would overwrite
# one of its working attributes, such as its optimizer); `verbose` from older torch versions.
SCHEDULER_KEYS = {"base_lrs", "last_epoch", "_step_count", "_is_initial", "_get_lr_called_within_step",
                  "_last_lr", "lr_lambdas", "verbose"}
SGD_GROUP = ("params", "lr", "momentum", "dampening", "weight_decay")  # what SGD.step reads with no default
RESUME_KEYS = ("model_name", "config", "model_state", "optimizer_state", "scheduler_state", "scaler_state",
               "run_state", "rng")  # what fit(resume=...) reads
RESUME_RUN_STATE = ("epoch", "batch", "step", "examples", "metrics")


class Fields:
    """Checks of one file's fields; each failure is a UserError naming the file, the field and the fix."""

    def __init__(self, where: str, advice: str):
        self.where, self.advice = where, advice

    def fail(self, name: str, problem: str):
        raise UserError(f"{self.where} is damaged or was not written by alexnet-lab: {name} {problem}. "
                        f"{self.advice}")

    def check(self, name: str, value, kind: type, range: tuple | None = None, *, optional: bool = False,
              choices=None, longest: int = 10_000):
        """`value` if it is a `kind` in `range` among `choices` (engine/config.value_problem); text at most
        `longest` characters."""
        problem = value_problem(value, kind, optional, range, choices)
        if problem is None and isinstance(value, str) and len(value) > longest:
            problem = f"must be at most {longest:,} characters, got {len(value):,}"
        if problem:
            self.fail(name, problem)
        return value

    def mapping(self, name: str, value) -> dict:
        if not all(isinstance(key, str) for key in self.check(name, value, dict)):
            self.fail(name, "must have text keys only")
        return value

    def keys(self, name: str, value: dict, *, required=(), allowed=None) -> None:
        missing = [key for key in required if key not in value]
        if missing:
            self.fail(name, f"lacks {', '.join(missing)}")
        unknown = sorted(str(key) for key in value if key not in allowed) if allowed is not None else []
        if unknown:
            shown = ", ".join(describe(key) for key in unknown[:4]) + (" ..." if len(unknown) > 4 else "")
            self.fail(name, f"has unknown key(s) {shown}")

    def sequence(self, name: str, value, low: int = 0, high: int = COUNT[1]) -> list | tuple:
        if not isinstance(value, (list, tuple)):
            self.fail(name, f"must be a list, got {describe(value)}")
        if not low <= len(value) <= high:
            self.fail(name, f"must have {low if low == high else f'{low} to {high}'} item(s), got {len(value)}")
        return value

    def typed(self, name: str, value, hint) -> None:
        """`value` as a dataclass field annotated `hint` (`int`, `float | None`, ...) takes it."""
        kind, optional = hint_kind(hint)
        if kind in KINDS:
            self.check(name, value, kind, (-COUNT[1], COUNT[1], "") if kind is int else None, optional=optional)


# --- checkpoints ---------------------------------------------------------------------------------

def check_checkpoint(payload: dict, path, *, for_resume: bool = False, advice: str = ckpt.LOAD_ADVICE) -> TrainConfig:
    """Check every field a command reads from a loaded checkpoint and return its training config: the
    model's name, options, weights, config, class names, average of the weights, run state, versions and data fingerprint. `for_resume`
    (train --resume): also every part fit() restores. `advice` ends each message."""
    c = Fields(f"Checkpoint '{path}'", advice)
    c.keys("the checkpoint", payload, required=RESUME_KEYS if for_resume else ("model_name", "model_state", "config"))
    name = c.check("model_name", payload["model_name"], str, choices=list_models())
    kwargs = _model_kwargs(c, payload.get("model_kwargs"))
    with torch.device("meta"):  # no memory, no compute
        model = build_model(name, **kwargs)
    problem = weights_problem(model, payload["model_state"])
    if problem:
        raise UserError(f"Checkpoint '{path}' does not match model '{name}' ({problem}). It was written for another "
                        "model or version.")
    config = _train_config(c, payload["config"])
    if config.model != name:
        c.fail("config", f"names model {config.model!r} but model_name is {name!r}")
    if config.channels not in (None, kwargs["in_channels"]):
        c.fail("config.channels", f"is {config.channels} but the model takes {kwargs['in_channels']} channel(s)")
    try:
        check_input_size(name, input_size(config))
    except UserError as exc:
        c.fail("config.resize", f"does not fit the model ({exc})")
    _class_names(c, "class_names", payload.get("class_names"), kwargs["num_classes"])
    _ema_state(c, payload.get("ema_state"), config, model, for_resume)
    if "run_state" in payload:
        _run_state(c, payload["run_state"], for_resume)
    for key, value in c.mapping("versions", payload.get("versions", {})).items():
        c.check(f"versions.{key}", value, str, longest=200)
    if payload.get("data_fingerprint") is not None:  # evaluate and a resume compare it with the data
        _fingerprint(c, payload["data_fingerprint"])
    if for_resume:
        _resume_parts(c, payload, config, model)
    return config


def _resume_parts(c: Fields, payload: dict, config: TrainConfig, model: torch.nn.Module) -> None:
    """What only a resume restores, where a damaged value would pass `load_state_dict` and fail only at
    the first step: the optimizer's groups and buffers, the schedule, the scaler, Lookahead, the RNGs."""
    groups = parameter_groups(config, model)  # the order the run's optimizer lists the parameters in
    _optimizer_state(c, payload["optimizer_state"], [tuple(p.shape) for g in groups for p in g["params"]])
    trained = {id(p) for g in groups for p in g["params"] if p.requires_grad}
    _lookahead_state(c, payload.get("lookahead_state"), config,
                     [tuple(p.shape) for p in model.parameters() if id(p) in trained])
    _scheduler_state(c, payload["scheduler_state"], len(payload["optimizer_state"]["param_groups"]))
    scaler = c.mapping("scaler_state", payload["scaler_state"])  # fp16's grad scaler: empty when it was off
    if scaler:
        c.keys("scaler_state", scaler, required=("scale", "growth_factor", "backoff_factor", "growth_interval",
                                                 "_growth_tracker"))
        for key in ("scale", "growth_factor", "backoff_factor"):
            c.check(f"scaler_state.{key}", scaler[key], float, (0, 2.0**128, "low"))
        c.check("scaler_state.growth_interval", scaler["growth_interval"], int, (1, COUNT[1], ""))
        c.check("scaler_state._growth_tracker", scaler["_growth_tracker"], int, COUNT)
    _rng_state(c, payload["rng"])
    if "world_size" in payload:
        c.check("world_size", payload["world_size"], int, (1, 2**20, ""))


def weights_problem(model: torch.nn.Module, state) -> str | None:
    """How a state_dict differs from `model`'s in names and shapes (the first two differences), or None."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)} if isinstance(state, dict) else {}
    problems = ([f"missing {k}" for k in expected if k not in got] + [f"unexpected {k}" for k in got if k not in expected]
                + [f"{k} has shape {got[k]}, the model needs {expected[k]}" for k in expected
                   if k in got and got[k] != expected[k]])
    more = f" and {len(problems) - 2} more" if len(problems) > 2 else ""
    return f"{'; '.join(problems[:2])}{more}" if problems else None


def _model_kwargs(c: Fields, value) -> dict:
    """The model's build options (older checkpoints: none, i.e. Fashion-MNIST's 1 channel, 10 classes)."""
    value = {} if value is None else c.mapping("model_kwargs", value)
    c.keys("model_kwargs", value, allowed=("in_channels", "num_classes"))
    kwargs = {"in_channels": 1, "num_classes": 10, **value}
    c.check("model_kwargs.in_channels", kwargs["in_channels"], int, choices=CHANNELS)
    c.check("model_kwargs.num_classes", kwargs["num_classes"], int, CLASSES)
    return kwargs


def _train_config(c: Fields, value) -> TrainConfig:
    """The saved TrainConfig, checked by TrainConfig itself (each field's type, range and choices)."""
    values = c.mapping("config", value)
    c.keys("config", values, required=("model",), allowed=field_types())
    try:
        return TrainConfig.from_dict(values)
    except UserError as exc:
        c.fail("config", f"is not a valid configuration ({str(exc).removeprefix('Invalid configuration: ').rstrip('.')})")


def _class_names(c: Fields, name: str, value, num_classes: int) -> None:
    if value is None:  # older checkpoints: Fashion-MNIST's ten
        if num_classes != 10:
            c.fail(name, f"is missing, and the model has {num_classes} outputs (not Fashion-MNIST's 10)")
        return
    names = c.sequence(name, value)
    if len(names) != num_classes:
        c.fail(name, f"holds {len(names)} name(s) for the model's {num_classes} outputs")
    for i, item in enumerate(names):
        if not c.check(f"{name}[{i}]", item, str, longest=NAME_MAX):
            c.fail(f"{name}[{i}]", "is empty")
    if len(set(names)) != len(names):
        c.fail(name, "holds the same name twice")


def _ema_state(c: Fields, value, config: TrainConfig, model: torch.nn.Module, for_resume: bool) -> None:
    """The average of the weights that evaluations use: present exactly when the run kept one."""
    if value is None:
        if for_resume and config.ema_decay:
            c.fail("ema_state", f"is missing, but the run keeps an average of the weights (ema_decay "
                                f"{config.ema_decay:g})")
        return
    if not config.ema_decay:
        c.fail("ema_state", "is present, but the run kept no average of the weights (config.ema_decay is 0)")
    ema = c.mapping("ema_state", value)
    c.keys("ema_state", ema, required=("module", "updates", "decay"))
    problem = weights_problem(model, ema["module"])
    if problem:
        c.fail("ema_state.module", f"does not fit model '{config.model}' ({problem})")
    c.check("ema_state.updates", ema["updates"], int, COUNT)
    c.check("ema_state.decay", ema["decay"], float, (0, 1, "low high"))


def _float_tensor(c: Fields, name: str, tensor, shape: tuple) -> None:
    if not (isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and tuple(tensor.shape) == shape):
        c.fail(name, f"must be a float tensor of shape {shape}, got {describe(tensor)}")


def _lookahead_state(c: Fields, value, config: TrainConfig, shapes: list[tuple]) -> None:
    """Lookahead's slow weights (engine/lookahead.py): present exactly when the run uses Lookahead, one
    float tensor per trained parameter (the shapes given, in the model's order)."""
    if not config.lookahead_every:
        if value is not None:
            c.fail("lookahead_state", "is present, but the run uses no Lookahead (config.lookahead_every is 0)")
        return
    if value is None:
        c.fail("lookahead_state", f"is missing, but the run uses Lookahead (lookahead_every {config.lookahead_every})")
    state = c.mapping("lookahead_state", value)
    c.keys("lookahead_state", state, required=("slow", "steps", "every", "alpha"))
    for i, (tensor, shape) in enumerate(zip(c.sequence("lookahead_state.slow", state["slow"], len(shapes),
                                                       len(shapes)), shapes)):
        _float_tensor(c, f"lookahead_state.slow[{i}]", tensor, shape)
    c.check("lookahead_state.steps", state["steps"], int, COUNT)
    c.check("lookahead_state.every", state["every"], int, (1, COUNT[1], ""))
    c.check("lookahead_state.alpha", state["alpha"], float, (0, 1, "low"))


def _run_state(c: Fields, value, for_resume: bool) -> None:
    """The run's position and sums (engine.trainer.RunState), typed as RunState declares them."""
    state = c.mapping("run_state", value)
    hints = typing.get_type_hints(RunState)
    c.keys("run_state", state, required=RESUME_RUN_STATE if for_resume else (),
           allowed=[f.name for f in fields(RunState) if not f.metadata.get("transient")])
    for key, item in state.items():
        c.typed(f"run_state.{key}", item, hints[key])
    counts = {key: c.check(f"run_state.{key}", state[key], int, COUNT)
              for key in ("epoch", "batch", "step", "examples", "epoch_examples") if key in state}
    for key in ("epoch", "batch"):  # every epoch and every batch is at least one step
        if counts.get(key, 0) > counts.get("step", COUNT[1]):
            c.fail(f"run_state.{key}", f"is {counts[key]}, more than the {counts['step']} steps done")
    for key, bounds in (("step_seconds", (0, 1e30, "")), ("wall_seconds", (0, 1e30, "")),
                        ("epoch_loss_sum", (0, 1e30, "")),  # becomes a float32 tensor
                        ("epoch_correct", (0, counts.get("epoch_examples", COUNT[1]), "")),  # at most those counted
                        ("best_test_acc", (-1, 1, ""))):  # -1: not tested yet
        if key in state:
            c.check(f"run_state.{key}", state[key], float, bounds)
    for i, row in enumerate(state.get("metrics", ())):
        _metrics_row(c, f"run_state.metrics[{i}]", row)


def _optimizer_state(c: Fields, value, params: list[tuple]) -> None:
    """SGD's state: groups listing the optimizer's parameters (`params`: their shapes, in the order of
    engine/optimizers.parameter_groups) in order, numbers where the step reads them, momentum buffers shaped
    like their parameters (a wrong shape or type would load, and fail only at the first step)."""
    state = c.mapping("optimizer_state", value)
    c.keys("optimizer_state", state, required=("state", "param_groups"))
    order = []
    for i, group in enumerate(c.sequence("optimizer_state.param_groups", state["param_groups"], 1, len(params))):
        name = f"optimizer_state.param_groups[{i}]"
        c.keys(name, c.mapping(name, group), required=SGD_GROUP)
        for key in ("lr", "momentum", "dampening", "weight_decay", "initial_lr"):
            if key in group:
                c.check(f"{name}.{key}", group[key], float, LR)
        for key in ("nesterov", "maximize", "differentiable", "foreach", "fused", "muon", "renorm"):
            if key in group:
                c.check(f"{name}.{key}", group[key], bool, optional=key in ("foreach", "fused"))
        if group.get("muon"):  # engine/optimizers.MuonSGD's groups
            c.check(f"{name}.ns_steps", group.get("ns_steps"), int, (1, 99, ""))
        order += [c.check(f"{name}.params[{j}]", p, int, (0, len(params) - 1, ""))
                  for j, p in enumerate(c.sequence(f"{name}.params", group["params"]))]
    if order != list(range(len(params))):
        c.fail("optimizer_state.param_groups", f"do not list the run's {len(params)} trained parameters in order")
    for key, entry in c.check("optimizer_state.state", state["state"], dict).items():
        name = f"optimizer_state.state[{describe(key)}]"
        index = c.check(name, key, int, (0, len(params) - 1, ""))
        buffer = c.check(name, entry, dict).get("momentum_buffer")
        if buffer is not None:
            _float_tensor(c, f"{name}.momentum_buffer", buffer, params[index])


def _scheduler_state(c: Fields, value, groups: int) -> None:
    state = c.mapping("scheduler_state", value)
    c.keys("scheduler_state", state, required=("lr_lambdas", "last_epoch"), allowed=SCHEDULER_KEYS)
    if any(item is not None for item in c.sequence("scheduler_state.lr_lambdas", state["lr_lambdas"], groups, groups)):
        c.fail("scheduler_state.lr_lambdas", "must hold nothing (the schedule is a function of the step)")
    c.check("scheduler_state.last_epoch", state["last_epoch"], int, (-1, COUNT[1], ""))
    for key in ("base_lrs", "_last_lr"):
        for i, lr in enumerate(c.sequence(f"scheduler_state.{key}", state.get(key, [0] * groups), groups, groups)):
            c.check(f"scheduler_state.{key}[{i}]", lr, float, LR)
    if "_step_count" in state:
        c.check("scheduler_state._step_count", state["_step_count"], int, COUNT)
    for key in ("_is_initial", "_get_lr_called_within_step"):
        if key in state:
            c.check(f"scheduler_state.{key}", state[key], bool)
    if "verbose" in state and not isinstance(state["verbose"], (bool, str)):
        c.fail("scheduler_state.verbose", f"must be true, false or text, got {describe(state['verbose'])}")


def _rng_state(c: Fields, value) -> None:
    """Python's, NumPy's and torch's generator states, shaped as checkpoint.rng_state() saves them."""
    rng = c.mapping("rng", value)
    c.keys("rng", rng, required=("python", "numpy", "torch"), allowed=("python", "numpy", "torch", "cuda"))
    version, internal, gauss = c.sequence("rng.python", rng["python"], 3, 3)
    c.check("rng.python[0]", version, int, choices=(random.Random.VERSION,))
    for i, word in enumerate(c.sequence("rng.python[1]", internal, 625, 625)):  # 624 words of state, the index
        c.check(f"rng.python[1][{i}]", word, int, (0, 624 if i == 624 else 2**32 - 1, ""))
    c.check("rng.python[2]", gauss, float, optional=True)
    numpy_state = c.mapping("rng.numpy", rng["numpy"])
    c.keys("rng.numpy", numpy_state, required=("key", "pos", "has_gauss", "cached_gaussian"))
    key = numpy_state["key"]
    if not (isinstance(key, torch.Tensor) and key.dtype == torch.int64 and tuple(key.shape) == (624,)
            and int(key.min()) >= 0 and int(key.max()) < 2**32):
        c.fail("rng.numpy.key", f"must be 624 unsigned 32-bit words as an int64 tensor, got {describe(key)}")
    c.check("rng.numpy.pos", numpy_state["pos"], int, (0, 624, ""))
    c.check("rng.numpy.has_gauss", numpy_state["has_gauss"], int, (0, 1, ""))
    c.check("rng.numpy.cached_gaussian", numpy_state["cached_gaussian"], float)
    for name, tensor in [("rng.torch", rng["torch"]),
                         *((f"rng.cuda[{i}]", t) for i, t in enumerate(c.sequence("rng.cuda", rng.get("cuda", ()))))]:
        if not (isinstance(tensor, torch.Tensor) and tensor.dtype == torch.uint8 and tensor.dim() == 1):
            c.fail(name, f"must be a uint8 tensor (a generator state), got {describe(tensor)}")
    if rng["torch"].shape != torch.get_rng_state().shape:
        c.fail("rng.torch", f"must have {torch.get_rng_state().numel()} bytes, got {rng['torch'].numel()}")


def _fingerprint(c: Fields, value) -> None:
    for split, part in c.mapping("data_fingerprint", value).items():
        if split in ("train", "test"):
            name = f"data_fingerprint.{split}"
            c.keys(name, c.mapping(name, part), required=("examples", "blake2b"))
            c.check(f"{name}.examples", part["examples"], int, COUNT)
            c.check(f"{name}.blake2b", part["blake2b"], str, longest=128)


# --- exported models -----------------------------------------------------------------------------

def check_model_metadata(text, path) -> dict:
    """The metadata of an exported model file (JSON text or bytes) as a checked dict. The sizes are bounded
    (input side at most SIDE_MAX, the stored side STORED_FACTOR times it), so a forged number cannot make
    `predict` decode images at an impossible size; `engine.export.ModelFile` checks they fit the graph."""
    try:
        meta = json.loads(text or "{}")
    except (ValueError, RecursionError) as exc:  # ValueError: JSONDecodeError, UnicodeDecodeError, ...
        raise UserError(f"Model file '{path}' has metadata that is not JSON ({str(exc).splitlines()[0][:80]}). "
                        "Export the model again with alexnet-lab export.") from None
    if not isinstance(meta, dict) or meta.get("format") != METADATA_FORMAT:
        raise UserError(f"'{path}' was not written by alexnet-lab export (no {METADATA_FORMAT} metadata).")
    c = Fields(f"Model file '{path}'", "Export the model again with alexnet-lab export.")
    c.keys("its metadata", meta, required=("model", "class_names", "input_size", "in_channels", "data",
                                           "stored_size", "center_crop"))
    c.check("model", meta["model"], str, longest=200)
    names = c.sequence("class_names", meta["class_names"], *CLASSES[:2])
    _class_names(c, "class_names", names, len(names))
    size = c.check("input_size", meta["input_size"], int, (1, SIDE_MAX, ""))
    c.check("in_channels", meta["in_channels"], int, choices=CHANNELS)
    data = c.check("data", meta["data"], str)
    if data != "fashion-mnist" and not data.startswith("imagefolder:"):
        c.fail("data", f"must be 'fashion-mnist' or 'imagefolder:...', got {describe(data)}")
    c.check("stored_size", meta["stored_size"], int, (size, min(SIDE_MAX, STORED_FACTOR * size), ""))
    c.check("center_crop", meta["center_crop"], bool)
    for key in ("input", "normalization"):
        c.check(key, meta.get(key), str, optional=True)
    return meta


def check_model_build(meta: dict, path) -> tuple[str, dict]:
    """(model name, build options) of a weights-only model file (safetensors), from its checked metadata:
    a registered model, options agreeing with the declared channels and classes, an input size the model
    takes. `engine.export.ModelFile` checks the weights against the model built on the meta device."""
    c = Fields(f"Model file '{path}'", "Export the model again with alexnet-lab export.")
    c.keys("its metadata", meta, required=("model_kwargs",))
    name = c.check("model", meta["model"], str, choices=list_models())
    c.keys("model_kwargs", c.mapping("model_kwargs", meta["model_kwargs"]), required=("in_channels", "num_classes"))
    kwargs = _model_kwargs(c, meta["model_kwargs"])
    if kwargs["in_channels"] != meta["in_channels"]:
        c.fail("model_kwargs.in_channels", f"is {kwargs['in_channels']} but in_channels is {meta['in_channels']}")
    if kwargs["num_classes"] != len(meta["class_names"]):
        c.fail("model_kwargs.num_classes", f"is {kwargs['num_classes']} but class_names has "
                                           f"{len(meta['class_names'])} names")
    try:
        check_input_size(name, meta["input_size"])
    except UserError as exc:
        c.fail("input_size", f"does not fit the model ({exc})")
    return name, kwargs


# --- run folders ---------------------------------------------------------------------------------

RUN_ADVICE = "Restore it, or leave this run out."
# config.json's "resolved" part (engine.trainer.start_info) and summary.json (engine.trainer.summarize):
# the fields the report and compare format. Other keys are shown as text.
RESOLVED = {"device": str, "precision": str, "channels_last": bool, "steps_per_epoch": int, "total_steps": int,
            "num_epochs": int, "train_examples": int, "test_examples": int, "input_size": int, "start_step": int,
            "start_examples": int, "world_size": int, "params": int}
SUMMARY = {"model": str, "preset": str, "device": str, "precision": str, "epochs": float, "steps": int,
           "train_loss": float | None, "train_acc": float | None, "test_acc": float | None,
           "best_test_acc": float | None, "examples_per_sec": float | None, "step_seconds": float | None,
           "wall_seconds": float | None, "train_examples": int, "target_accuracy": float | None,
           "reached_target": bool, "time_to_target_s": float | None, "best_step": int | None,
           "best_weights": str | None, "predictions": str | None}
# A metrics row (engine.trainer.log_point); JSON has no NaN, so the writer stores null for one.
ROW = {"epoch": float, "step": int, "examples": int, "train_loss": float | None, "train_acc": float | None,
       "test_acc": float | None, "lr": float | None, "elapsed_s": float | None}


def check_run_config(value: dict, path) -> dict:
    """config.json: the recipe's fields typed as TrainConfig declares them (a run of another version
    may lack some or have others), and "resolved" with its environment as objects."""
    c = Fields(f"'{path}'", RUN_ADVICE)
    config = c.mapping("the file", value)
    if isinstance(config.get("augment"), bool):  # an older version's switch, shown as the kinds it meant
        config = {**config, "augment": augment_value(config["augment"], str(config.get("model")))}
    hints = typing.get_type_hints(TrainConfig)
    for key, item in config.items():
        if key in hints:
            c.typed(key, item, hints[key])
    if "resolved" in config:
        resolved = c.mapping("resolved", config["resolved"])
        for key, item in resolved.items():
            if key in RESOLVED:
                c.typed(f"resolved.{key}", item, RESOLVED[key])
        if "environment" in resolved:
            c.mapping("resolved.environment", resolved["environment"])
    return config


def check_summary(value: dict, path) -> dict:
    """summary.json: the results the report and compare format, each of its type."""
    c = Fields(f"'{path}'", RUN_ADVICE)
    summary = c.mapping("the file", value)
    for key, item in summary.items():
        if key in SUMMARY:
            c.typed(key, item, SUMMARY[key])
    if "steps" in summary:
        c.check("steps", summary["steps"], int, COUNT)
    return summary


def check_metrics_row(row, path, line: int) -> dict:
    """One line of metrics.jsonl: an object with the row's epoch and step, every known field typed."""
    return _metrics_row(Fields(f"'{path}' line {line}", "Delete the line, or leave this run out."), "the row", row)


def _metrics_row(c: Fields, name: str, row) -> dict:
    row = c.mapping(name, row)
    c.keys(name, row, required=("epoch", "step"))
    for key, item in row.items():
        if key in ROW:
            c.typed(f"{name}.{key}", item, ROW[key])
        elif item is not None and not isinstance(item, (bool, int, float, str)):  # rows are written as JSON
            c.fail(f"{name}.{key}", f"must be a number, text, true, false or null, got {describe(item)}")
    c.check(f"{name}.epoch", row["epoch"], float, COUNT)
    c.check(f"{name}.step", row["step"], int, COUNT)
    return row
