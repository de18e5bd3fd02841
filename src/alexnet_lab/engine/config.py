"""Training configuration: one frozen dataclass, and presets that are just named configs.

Unknown keys and impossible values raise `UserError`; nothing is silently corrected.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field, fields

from alexnet_lab.data.loader import AUGMENT_KINDS, EXCLUSIVE_KINDS, MODEL_AUGMENTS, NO_AUGMENT
from alexnet_lab.data.sources import check_data_spec
from alexnet_lab.engine.tta import TTA_MODES
from alexnet_lab.errors import UserError, describe, nearest
from alexnet_lab.models import get_spec, list_models

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda", "mps")
INDEXED_DEVICE = re.compile(r"(cuda|mps):\d{1,3}")  # one GPU of several (torchrun's ranks): not a flag choice
SCHEDULES = ("constant", "onecycle", "cosine")
INITS = ("xavier", "default", "dirac")
OPTIMIZERS = ("sgd", "muon")
COMPARE = ("always", "if different", "never")


def setting(default, help: str, *, range: tuple | None = None, choices=None, resumable: bool = False,
            group: str | None = "recipe", bench: bool = False, compare: str = "if different",
            flag: dict | None = None):
    """A config field that is also the flag `--field-name` (type: the annotation; bool: --x/--no-x), described
    once: range (low, high[, open ends "low", "high" or "low high"]: the sane values, outside is a typo) or
    choices (a tuple, or a function returning them); resumable: `train --resume` takes it; group: its --help
    section; bench: `bench` takes it; compare: when `compare` shows it; flag: more argparse options (e.g.
    nargs, const, a parse `type` raising UserError), and under "no" the value of `--no-field-name`."""
    if range is not None:
        low, high, *ends = range
        open_ends = ends[0] if ends else ""
        if not set(open_ends.split()) <= {"low", "high"} or low > high:
            raise ValueError(f"bad range {range!r}")
        range = (low, high, open_ends)
    if compare not in COMPARE:
        raise ValueError(f"compare must be one of {COMPARE}, got {compare!r}")
    return field(default=default, metadata={"help": help, "range": range, "choices": choices,
                                            "resumable": resumable, "group": group, "bench": bench,
                                            "compare": compare, "flag": flag or {}})


def augment_choices() -> list[str]:
    """Every value of --augment: none, and each combination of AUGMENT_KINDS in their order."""
    combos = [[]]
    for kind in AUGMENT_KINDS:
        combos += [c + [kind] for c in combos]
    allowed = [c for c in combos[1:] if not any(set(pair) <= set(c) for pair in EXCLUSIVE_KINDS)]
    return [NO_AUGMENT] + ["+".join(c) for c in allowed]


def parse_augment(text: str) -> str:
    """--augment's text -> its canonical value: none, or kinds joined by '+' (',' too) in AUGMENT_KINDS's order."""
    parts = [part.strip() for part in text.replace(",", "+").split("+")]
    if parts == [NO_AUGMENT]:
        return NO_AUGMENT
    unknown = [part for part in parts if part not in AUGMENT_KINDS]
    if unknown:
        raise UserError(f"Invalid configuration: --augment must be one of {NO_AUGMENT} or kinds joined by '+' "
                        f"({', '.join(AUGMENT_KINDS)}; e.g. flip+translate), got {describe(text)}.")
    for pair in EXCLUSIVE_KINDS:
        if set(pair) <= set(parts):
            raise UserError(f"Invalid configuration: --augment {describe(text)} names both {pair[0]} and {pair[1]}, "
                            "two ways of flipping: keep one.")
    return "+".join(kind for kind in AUGMENT_KINDS if kind in parts)


def augment_value(value, model: str):
    """A config's `augment` in canonical form; True/False (older versions' switch) as the kinds it turned on
    for `model` / none; anything else unchanged, for check_setting to refuse."""
    if isinstance(value, bool):
        if not value:
            return NO_AUGMENT
        known = model in list_models()  # an unknown model is refused by check_config
        return MODEL_AUGMENTS[get_spec(model).augmentation if known else "shift"]
    return parse_augment(value) if isinstance(value, str) else value


@dataclass(frozen=True)
class TrainConfig:
    model: str = setting("alexnet", "model from the registry", choices=list_models, group=None, bench=True)
    epochs: float = setting(10, "epochs to train (fractions allowed)",
                            range=(0, 100_000, "low"),  # 100,000 epochs of Fashion-MNIST: 47 M steps at batch 128
                            resumable=True, compare="always")
    batch_size: int = setting(128, "global batch size: under torchrun each of the N processes takes "
                                   "batch-size/N examples per step (must divide evenly)", range=(1, 2**24),
                              bench=True, compare="always")
    lr: float = setting(0.01, "(peak) learning rate", range=(0, 1e4, "low"),  # above 1e4 SGD only diverges
                        compare="always")
    momentum: float = setting(0.0, "SGD momentum", range=(0, 1, "high"))
    nesterov: bool = setting(False, "Nesterov momentum (with --momentum > 0)")
    weight_decay: float = setting(0.0, "L2 weight decay", range=(0, 1e4))
    optimizer: str = setting("sgd", "sgd: SGD for every parameter; muon: Muon (torch.optim.Muon's momentum "
                                    "orthogonalised by Newton-Schulz iterations) for the convolution filters, "
                                    "viewed as out x in*k*k matrices, at its own learning rate, and SGD for the rest",
                             choices=OPTIMIZERS, bench=True)
    muon_lr: float = setting(0.02, "--optimizer muon: the filters' (peak) learning rate, on --lr's schedule",
                             range=(0, 1e4, "low"))
    muon_momentum: float = setting(0.95, "--optimizer muon: the filters' (Nesterov) momentum", range=(0, 1, "high"))
    muon_ns_steps: int = setting(5, "--optimizer muon: Newton-Schulz iterations per step (airbench: 3)",
                                 range=(1, 99))  # torch.optim.Muon refuses 100 or more
    muon_renorm: bool = setting(False, "--optimizer muon: rescale each filter to norm sqrt(its output channels) "
                                       "before every step (airbench's; for models with BatchNorm after it)")
    bn_momentum: float | None = setting(None, "BatchNorm's running-statistics momentum, PyTorch's convention: "
                                              "the weight of each new batch (default: the model's, 0.1)",
                                        range=(0, 1, "low"))
    freeze_bn_weights: bool = setting(False, "BatchNorm scales stay at 1, untrained (airbench's)")
    bn_bias_lr_scale: float = setting(1.0, "BatchNorm biases train at this multiple of --lr (airbench: 64, "
                                           "with --freeze-bn-weights)", range=(0, 1e4, "low"))
    head_scale: float = setting(1.0, "scale the logits by this (airbench's smaller head) as an exact "
                                     "reparametrisation of the last linear layer (weights x s, lr x s^2, decay "
                                     "/ s^2), so the saved model is the plain architecture",
                                     range=(1e-3, 1e3))  # lr x s^2 and decay / s^2: within 1e6 of --lr, --weight-decay
    lookahead_every: int = setting(0, "Lookahead: every N steps the slow weights move --lookahead-alpha of the "
                                      "way to the trained ones, which restart from them (0: off)",
                                   range=(0, 1_000_000))
    lookahead_alpha: float = setting(0.5, "Lookahead's step towards the trained weights", range=(0, 1, "low"))
    schedule: str = setting("constant", "learning-rate schedule, per step", choices=SCHEDULES)
    warmup_frac: float = setting(0.25, "onecycle schedule: fraction of the steps spent warming up", range=(0, 1))
    label_smoothing: float = setting(0.0, "cross-entropy label smoothing", range=(0, 1, "high"))
    init: str = setting("xavier", "weight init: xavier (d2l's xavier_uniform_ on Conv2d/Linear weights), "
                                  "default (the model's own; alexnet-2012: the paper's) or dirac (the model's "
                                  "own, then each convolution the identity on its first outputs: airbench's)",
                        choices=INITS)
    resize: int | None = setting(None, "input side in pixels (default: the model's)", range=(1, 4096), bench=True)
    augment: str = setting(NO_AUGMENT, "augmentation on the device, kinds joined by '+': crop (random "
                                       "224/256 crops; tested on the centre crop), flip (mirror images: not "
                                       "for digits or text), translate (shifts of up to 2/28 of the side), "
                                       "jitter (brightness, contrast), lighting (the 2012 paper's PCA "
                                       "lighting), altflip (instead of flip: each image mirrored in every "
                                       "other epoch, airbench's); alone: the model's own, flip+translate+jitter "
                                       "(alexnet-2012: crop+flip+lighting); --no-augment: none",
                           choices=augment_choices,
                           flag=dict(nargs="?", const=True, metavar="KINDS", type=parse_augment,
                                     no=NO_AUGMENT))
    ema_decay: float = setting(0.0, "evaluate an exponential moving average of the weights with this "
                                    "decay per step (0: off)", range=(0, 1, "high"))
    tta: str = setting("none", "test-time augmentation at every test evaluation (flip only helps a model "
                               "trained with flips, --augment flip)", choices=TTA_MODES)
    precision: str = setting("fp32", "autocast precision (auto: the fastest of this device's precisions, "
                                     "measured on a few real training steps and remembered per machine in "
                                     "the user cache, engine/numerics.py)", choices=PRECISIONS,
                             group="numerics", bench=True)
    channels_last: bool | None = setting(False, "NHWC memory format (--no-channels-last: NCHW; None, as the "
                                                 "presets but d2l have it: the faster of the two, measured "
                                                 "as for --precision auto)", group="numerics", bench=True)
    compile: bool = setting(False, "torch.compile", group="numerics", bench=True)
    device: str = setting("auto", "auto prefers cuda, then mps, then cpu (default: auto)", choices=DEVICES,
                          resumable=True, group="numerics", bench=True)  # or cuda:N (INDEXED_DEVICE)
    seed: int = setting(0, "seed for init, data order and augmentation",
                        range=(0, 2**32 - 1),  # numpy's seed range; data-order seeds derive from it
                        bench=True)
    deterministic: bool = setting(False, "deterministic kernels (bit-exact resume)", group="numerics")
    ddp_timeout: float = setting(300, "torchrun: seconds a process waits for the others in a collective before "
                                      "the job fails (one stopped answering); longer than a checkpoint save",
                                 range=(1, 86_400),  # seconds: a day at most
                                 resumable=True, group="numerics", compare="never")
    limit_train: int | None = setting(None, "use the first N training examples", range=(1, 2**40), group="data",
                                      bench=True)
    limit_test: int | None = setting(None, "use the first N test examples", range=(1, 2**40), group="data")
    log_points_per_epoch: int = setting(5, "points of the training curves per epoch (the chapter's figure "
                                           "has 5)", range=(1, 10_000), group="data", compare="never")
    eval_every: int = setting(1, "evaluate the test set every N epochs and after the last step (0: only "
                                 "after the last step, as the speed ladder's records do)", range=(0, 100_000),
                              group="data")
    target_accuracy: float | None = setting(
        None, "stop at the first test accuracy >= this, testing at every log point (and each epoch's end) "
              "instead of once per epoch", range=(0, 1, "low"), group="data")
    time_budget_s: float | None = setting(
        None, "stop training this many seconds after its first step (evaluations during training included, "
              "the last one not) or at the planned steps if sooner; the lr schedule follows the steps or the "
              "time, whichever is further along (one-cycle still ends at lr 0); reruns are not bit-exact",
        range=(0.01, 1e7),  # 1e7 s: 116 days; the schedule's place is the time spent / this
        group="data")
    checkpoint_every: int | None = setting(None, "also checkpoint every N steps", range=(1, 2**40), resumable=True,
                                           group="data", compare="never")
    data_dir: str | None = setting(
        None, "folder with the Fashion-MNIST IDX files (else $ALEXNET_LAB_DATA, the user cache, "
              "/usr/share/datasets/fashion-mnist, then a download)", resumable=True, group="data", bench=True,
        compare="never")
    data: str = setting("fashion-mnist", "the data: fashion-mnist, or imagefolder:DIR with DIR/<class>/<image> "
                                         "(any format, size and mode Pillow reads; DIR/train/... and "
                                         "DIR/val/... if present)", group="data")  # checked by check_data_spec
    channels: int | None = setting(None, "input channels, 1 or 3 (default: the data's; image folders: 3 "
                                         "unless every image is gray)", choices=(1, 3), group="data")
    val_fraction: float = setting(0.2, "image folder without train/val folders: share of each class held "
                                       "out for validation (stratified, seeded by the run's seed)",
                                  range=(0, 1, "low high"), group="data")
    strict: bool = setting(False, "image folders: refuse unreadable image files instead of listing and "
                                  "skipping them", group="data")
    data_regime: str = setting("auto", "image folders: memory (decoded once, held in memory or on the GPU), "
                                       "stream (decoded by worker processes as batches need them) or auto "
                                       "(stream beyond half the free host or GPU memory, or 4 GiB); the same "
                                       "batches either way",
                               choices=("auto", "memory", "stream"), resumable=True, group="data",
                               compare="never")
    preset: str = "custom"        # the preset this config started from (not a flag: --preset picks it)

    def __post_init__(self):
        object.__setattr__(self, "augment", augment_value(self.augment, self.model))
        check_config(self)

    @classmethod
    def flag_fields(cls) -> list[dataclasses.Field]:
        """The fields that are command-line flags, in declaration order."""
        return [f for f in fields(cls) if "help" in f.metadata]

    @classmethod
    def resumable_fields(cls) -> tuple[str, ...]:
        """Fields that `train --resume` may change; every other one is the run's recipe or data order."""
        return tuple(f.name for f in cls.flag_fields() if f.metadata["resumable"])

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(f"Unknown configuration keys: {', '.join(unknown)}.")
        return cls(**values)

    def replace(self, **changes) -> "TrainConfig":
        return TrainConfig.from_dict({**self.to_dict(), **changes})


def unused_settings(config: TrainConfig) -> set[str]:
    """The fields that change nothing in this config (Muon's without Muon, Lookahead's step without Lookahead):
    a printed recipe leaves them out."""
    unused = set()
    if config.optimizer != "muon":
        unused |= {"muon_lr", "muon_momentum", "muon_ns_steps", "muon_renorm"}
    if not config.lookahead_every:
        unused.add("lookahead_alpha")
    return unused


def tests_at_epoch_end(config: TrainConfig, epochs_done: int, last: bool) -> bool:
    """Whether `fit` evaluates the test set when its `epochs_done`-th epoch ends (`last`: the run's last step)."""
    return last or (config.eval_every > 0 and epochs_done % config.eval_every == 0)


MIN_CURVE_POINTS = 20  # every run's curves get at least this many points (a 0.55-epoch speedrun too)


def target_check_every(config: TrainConfig, steps_per_epoch: int) -> int:
    """Steps between two test evaluations of a run with --target-accuracy: --log-points-per-epoch a epoch."""
    return max(1, steps_per_epoch // config.log_points_per_epoch)


def target_check_due(config: TrainConfig, batch: int, steps_per_epoch: int, total_steps: int) -> bool:
    """With --target-accuracy: whether the log point after `batch` batches evaluates the test set (the first at
    or after each multiple of target_check_every)."""
    every = log_every(config, steps_per_epoch, total_steps)
    return batch % target_check_every(config, steps_per_epoch) < every


def log_every(config: TrainConfig, steps_per_epoch: int, total_steps: int) -> int:
    """Steps between two points of the training curves (each a host sync): --log-points-per-epoch per epoch,
    more often in a short run, so that any run draws at least MIN_CURVE_POINTS points."""
    return min(target_check_every(config, steps_per_epoch), max(1, total_steps // MIN_CURVE_POINTS))


def flag_name(field_name: str) -> str:
    """The command-line flag of a TrainConfig field: `batch_size` -> `--batch-size`."""
    return "--" + field_name.replace("_", "-")


def hint_kind(hint) -> tuple[type, bool]:
    """A type hint's value type and whether it may be None: `int | None` -> (int, True)."""
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    (kind,) = [a for a in args if a is not type(None)]
    return kind, type(None) in args


@functools.cache
def field_types() -> dict[str, tuple[type, bool]]:
    """Each TrainConfig field's value type and whether it may be None, from its annotation."""
    return {name: hint_kind(hint) for name, hint in typing.get_type_hints(TrainConfig).items()}


@functools.cache
def _fields_by_name() -> dict[str, dataclasses.Field]:
    return {f.name: f for f in fields(TrainConfig)}


def field_range(name: str) -> tuple:
    """TrainConfig field `name`'s declared range: (low, high, open ends)."""
    return _fields_by_name()[name].metadata["range"]


def choices_of(field: dataclasses.Field) -> tuple | None:
    """A setting's allowed values (its `choices`, called if a function), or None if it declares none."""
    choices = field.metadata.get("choices")
    return tuple(choices() if callable(choices) else choices) if choices else None


KINDS = {int: "a whole number", float: "a number", bool: "true or false", str: "text",
         dict: "a dict (a JSON object)", list: "a list"}


def value_problem(value, kind: type, optional: bool = False, range: tuple | None = None,
                  choices=None) -> str | None:
    """What is wrong with `value` as a `kind` (a key of KINDS; None too if `optional`) inside `range` (low,
    high, open ends) and among `choices` ("must be ..., got ..."), or None: the one check of settings and
    of the files read back (engine/schema.py). A float takes a whole number, bool is no number, a number
    is finite, text can be a file name (no NUL, no lone surrogate: os.stat raises on either)."""
    if value is None and optional:
        return None
    wrong = (isinstance(value, bool) and kind is not bool) or not isinstance(value, (int, float) if kind is float else kind)
    if choices is not None and (wrong or value not in choices):
        return f"must be one of {', '.join(map(str, choices))}, got {describe(value)}"
    if wrong:
        return f"must be {KINDS[kind]}, got {describe(value)}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number, got {value}"
    if kind is str and not _os_text(value):
        return f"must be text without NUL characters or lone surrogates (a \\ud800 escape), got {describe(value)}"
    if range is not None:
        low, high, ends = range
        if (value <= low if "low" in ends else value < low) or (value >= high if "high" in ends else value > high):
            show = lambda x: describe(x) if isinstance(x, int) else f"{x:g}"  # noqa: E731
            span = f"{'(' if 'low' in ends else '['}{show(low)}, {show(high)}{')' if 'high' in ends else ']'}"
            return f"must be in {span}, got {show(value)}"
    return None


def _os_text(value: str) -> bool:
    try:
        os.fsencode(value)
    except UnicodeEncodeError:
        return False
    return "\0" not in value


def check_setting(name: str, value) -> None:
    """Raise a UserError unless `value` may be TrainConfig field `name` (value_problem with the field's
    annotation, range and choices; a device may also be cuda:N)."""
    field = _fields_by_name()[name]
    choices = choices_of(field)
    if name == "device" and isinstance(value, str) and INDEXED_DEVICE.fullmatch(value):
        choices = None
    problem = value_problem(value, *field_types()[name], field.metadata.get("range"), choices)
    if problem:
        if name == "device":
            problem = problem.replace(", got", " (or cuda:N), got", 1)
        raise UserError(f"Invalid configuration: {flag_name(name)} {problem}.")


def check_config(config: TrainConfig) -> None:
    """Every field's type, range and choices (check_setting), then the data spec."""
    for f in fields(TrainConfig):
        check_setting(f.name, getattr(config, f.name))
    check_data_spec(config.data)


def per_rank_batch(config: TrainConfig, world_size: int) -> int:
    """Examples each of `world_size` processes takes per step: --batch-size is the global batch, split evenly."""
    if config.batch_size % world_size:
        raise UserError(f"--batch-size {config.batch_size} (the global batch) must be divisible by the "
                        f"number of processes ({world_size}).")
    return config.batch_size // world_size


# Presets: named configs over the defaults. A rung of the speed ladder also holds its `target` (not a
# setting): the mean test accuracy `alexnet-lab record` judges it by. Measurements: docs/RECORDS.md only.
_ONE_CYCLE = dict(momentum=0.9, nesterov=True, schedule="onecycle", warmup_frac=0.2, precision="auto",
                  channels_last=None)
_TESTED_AT_END = dict(eval_every=0, log_points_per_epoch=1)  # one test evaluation, after the last step
PRESETS: dict[str, dict] = {
    # the book's train_ch6 recipe unchanged
    "d2l": dict(model="alexnet", epochs=10, batch_size=128, lr=0.01, momentum=0.0, schedule="constant",
                init="xavier", precision="fp32", channels_last=False),
    # the chapter's AlexNet at 224x224 in the fewest training examples to the book's 0.883
    "fast": dict(_ONE_CYCLE, model="alexnet", epochs=2, batch_size=128, lr=0.02, weight_decay=5e-4,
                 label_smoothing=0.1, init="xavier"),
    # `fast` at batch 32 (4x the steps): the book's 0.883 in one epoch
    "one-epoch": dict(_ONE_CYCLE, model="alexnet", epochs=1, batch_size=32, lr=0.02, weight_decay=5e-4,
                      label_smoothing=0.1, init="xavier", log_points_per_epoch=4),
    # `one-epoch` with Muon for the convolution filters and no label smoothing: the most test accuracy per
    # training image measured (docs/RECORDS.md, make run's budget curve); make run's CPU budget trains with it
    "one-epoch-muon": dict(_ONE_CYCLE, model="alexnet", epochs=1, batch_size=32, lr=0.02, weight_decay=5e-4,
                           optimizer="muon", muon_lr=0.05, init="xavier", log_points_per_epoch=4),
    # the speed ladder: the least wall-clock time to each target, any registered model
    "speedrun": dict(_ONE_CYCLE, target=0.883, model="speednet", epochs=0.55, batch_size=192, lr=0.1,
                     init="default", log_points_per_epoch=1),
    "speedrun-90": dict(_ONE_CYCLE, **_TESTED_AT_END, target=0.90, model="speednet", epochs=1.1, batch_size=256,
                        lr=0.1, optimizer="muon", muon_lr=0.05, label_smoothing=0.1, init="default"),
    "speedrun-92": dict(_ONE_CYCLE, **_TESTED_AT_END, target=0.92, model="speednet", epochs=4, batch_size=256,
                        lr=0.2, optimizer="muon", muon_lr=0.05, init="default"),
    "speedrun-94": dict(_ONE_CYCLE, **_TESTED_AT_END, target=0.94, model="fmnist-net-s", epochs=7, batch_size=256,
                        lr=0.2, weight_decay=5e-4, label_smoothing=0.2, init="default"),
    "speedrun-95": dict(_ONE_CYCLE, **_TESTED_AT_END, target=0.95, model="fmnist-net-s", epochs=40, batch_size=256,
                        lr=0.2, weight_decay=5e-4, label_smoothing=0.2, init="default",
                        augment="flip+translate+jitter", tta="flip-translate"),
    # the most accurate recipe known here
    "best": dict(_ONE_CYCLE, **_TESTED_AT_END, model="fmnist-net", epochs=30, batch_size=256, lr=0.2,
                 weight_decay=5e-4, label_smoothing=0.2, init="default", augment="flip+translate+jitter",
                 tta="flip-translate"),
}
RECORD_TARGETS = {name: preset["target"] for name, preset in PRESETS.items() if "target" in preset}


def preset_names() -> list[str]:
    return sorted(PRESETS)


def preset_record(name) -> dict:
    """Preset `name`'s settings (and `target`); the one "unknown preset" error, naming the nearest one."""
    if name not in PRESETS:
        raise UserError(f"Unknown preset {describe(name)}.{nearest(name, preset_names())}")
    return PRESETS[name]


def make_config(preset: str = "d2l", **overrides) -> TrainConfig:
    """The preset's config with `overrides` (None values ignored) applied on top."""
    values = {key: value for key, value in preset_record(preset).items() if key != "target"}
    values.update({"preset": preset}, **{k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.from_dict(values)
