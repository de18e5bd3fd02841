"""A checkpoint's test split and its test accuracy as its run measured it: the one way `evaluate`,
`visualize`, `export`'s check and the report read a checkpoint's test data and score it.
"""

from __future__ import annotations

import torch
from torch import nn

from alexnet_lab.engine.builders import Splits, make_test_loader, splits_for_model
from alexnet_lab.engine.checkpoint import class_names, model_kwargs
from alexnet_lab.engine.config import TrainConfig
from alexnet_lab.engine.device import backend_flags, resolve_precision
from alexnet_lab.engine.trainer import evaluate
from alexnet_lab.errors import UserError


def checkpoint_test_split(config: TrainConfig, payload: dict, *, data_dir: str | None = None,
                          limit: int | None = None, **data) -> Splits:
    """The test split of a checkpoint's run, the one way every command that reads a checkpoint gets it
    (evaluate, visualize, export's check, the report): the run's data and split (its --data,
    --val-fraction and --seed, its --limit-test) read with the model's input channels. `data_dir`: where
    the files are now (default: the run's); `limit`: the first N test images instead of the run's
    limit; `data`: other data settings (data, val_fraction, strict). Other classes are a UserError."""
    config = config.replace(limit_train=1, limit_test=limit if limit is not None else config.limit_test,
                            data_dir=data_dir or config.data_dir, **data,
                            # the first `limit` images (export's check, visualize) as tensors, decoded here
                            **({"data_regime": "memory"} if limit is not None else {}))
    splits = splits_for_model(config, model_kwargs(payload)["in_channels"])
    names = class_names(payload)
    if tuple(splits.class_names) != names:
        raise UserError(f"The data's classes ({', '.join(splits.class_names)}) are not the ones the checkpoint's "
                        f"model was trained on ({', '.join(names)}).")
    return splits


def evaluate_checkpoint(model: nn.Module, config: TrainConfig, splits: Splits, device: torch.device, *,
                        keep_logits: bool = False) -> dict:
    """Test accuracy of a loaded checkpoint's `model` (`load_trained`: the weights its run evaluated)
    on `splits`, measured as the run's own evaluations measured it (engine/trainer.py
    `evaluate_point`): `config.precision` resolved for `device` as training resolves it, `config.tta`,
    the memory format and the evaluation batch size of training. A `config` with another tta or
    precision overrides those. Returns `trainer.evaluate`'s dict with `settings`: what was used.

    On a CUDA GPU cuDNN autotunes its kernels (as in training) unless the run was --deterministic, and
    may pick other ones than the run's process did: there the last digit can differ."""
    precision = resolve_precision(config.precision, device)
    if config.channels_last:  # as prepare_model placed the trained (and the EMA) model
        model.to(memory_format=torch.channels_last)
    loader = make_test_loader(config, splits, device)
    with backend_flags(device, config.deterministic):  # training's cuDNN settings (autotuning unless deterministic)
        result = evaluate(model, loader, device, precision, config.channels_last, len(splits.class_names),
                          tta=config.tta, keep_logits=keep_logits)
    result["settings"] = {"device": str(device), "precision": precision, "batch_size": loader.batch_size,
                          "world_size": 1, "tta": config.tta}
    return result


def run_test_record(payload: dict) -> dict | None:
    """The run's own test evaluation of this checkpoint's weights: the metrics row of the checkpoint's
    step when that row holds a test accuracy (None: the run saved this state without testing it)."""
    state = payload.get("run_state") or {}
    tested = [row for row in state.get("metrics", ()) if row.get("test_acc") is not None]
    return tested[-1] if tested and tested[-1]["step"] == state.get("step") else None


def _recorded_settings(payload: dict) -> dict | None:
    """The checkpoint's `evaluated_with` (engine/trainer.py) if well-formed; None for an older file."""
    ran = payload.get("evaluated_with")
    if not (isinstance(ran, dict) and isinstance(ran.get("device"), str)
            and ran.get("precision") in ("fp32", "bf16", "fp16")
            and all(isinstance(ran.get(k), int) and not isinstance(ran.get(k), bool) and ran[k] >= 1
                    for k in ("batch_size", "world_size"))):
        return None
    return ran


def why_it_differs(payload: dict, run_config: TrainConfig, settings: dict, splits: Splits) -> list[str]:
    """Why `evaluate_checkpoint`'s number may differ from the run's own (`run_test_record`): each
    setting and input that is not the run's, in words. Empty: the same settings on the same test images,
    so the same number to the last digit on the same machine and software."""
    reasons = []
    if settings["tta"] != run_config.tta:
        reasons.append(f"TTA {settings['tta']} (the run's: {run_config.tta})")
    ran = _recorded_settings(payload)
    if ran is None:
        reasons.append("the run's device, precision and test batch, which a checkpoint of an older version "
                       "does not record")
    else:
        if settings["precision"] != ran["precision"]:
            reasons.append(f"precision {settings['precision']} (the run's: {ran['precision']})")
        if settings["device"].split(":")[0] != ran["device"].split(":")[0]:  # cuda:0 and cuda:1: one kind
            reasons.append(f"device {settings['device']} (the run's: {ran['device']})")
        if settings["batch_size"] != ran["batch_size"]:
            reasons.append(f"test batches of {settings['batch_size']} (the run's: {ran['batch_size']})")
        if ran["world_size"] > 1:
            reasons.append(f"one process (the run evaluated its test set across {ran['world_size']})")
    fingerprint = payload.get("data_fingerprint")  # checked only for a resume (engine/schema.py): read with care
    saved = fingerprint.get("test") if isinstance(fingerprint, dict) else None
    if isinstance(saved, dict) and isinstance(saved.get("blake2b"), str):
        now = splits.fingerprint["test"]
        if now["blake2b"] != saved["blake2b"]:
            then = saved.get("examples")
            reasons.append(f"other test images ({now['examples']:,}; the run tested "
                           + (f"{then:,}" if isinstance(then, int) and then != now["examples"] else "others") + ")")
    return reasons
