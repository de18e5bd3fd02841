"""The test pass (`evaluate`: every image's prediction and confidence, the accuracy, the one confusion
matrix), and a checkpoint's test split scored as its run scored it: for `evaluate` and the few images
`visualize`, `export`'s check and the report show.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from alexnet_lab.data.sources import image_folder_of
from alexnet_lab.engine.builders import Splits, make_test_loader, splits_for_model
from alexnet_lab.engine.checkpoint import class_names, model_kwargs
from alexnet_lab.engine.config import TrainConfig
from alexnet_lab.engine.device import autocast, backend_flags, resolve_precision
from alexnet_lab.engine.step import to_model_input
from alexnet_lab.engine.tta import tta_logits
from alexnet_lab.errors import UserError


def confusion_matrix(labels: torch.Tensor, predicted: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(classes, classes) int64 counts, rows: the true class, columns: the predicted one. The one
    confusion matrix: of a test pass, of a run's predictions.csv, of the report and `evaluate`."""
    cells = labels.long() * num_classes + predicted.long()
    return torch.bincount(cells, minlength=num_classes * num_classes).view(num_classes, num_classes)


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, precision: str = "fp32",
             channels_last: bool = False, num_classes: int = 10, world_size: int = 1, tta: str = "none") -> dict:
    """The test pass over a loader of an unshuffled split: accuracy, mean loss, the confusion matrix and,
    in the split's order, every image's `labels`, `predicted` class and `confidence` (the softmax
    probability of the predicted class, from the logits the accuracy counts; int64 / float32 (N,) on the
    CPU). `tta` averages the logits over flipped/shifted views of each image (engine/tta.py). One sync,
    at the end; under DDP each process tests its shard and every process gets every image's result."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=device)
    kept: list[tuple[torch.Tensor, torch.Tensor]] = []
    for images, labels in loader:
        with autocast(precision, device):
            logits = tta_logits(model, to_model_input(images, channels_last), tta).float()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum")
        kept.append((logits.argmax(dim=1), logits.softmax(dim=1).amax(dim=1)))  # on the device: no sync
    model.train(was_training)
    predicted = torch.cat([k[0] for k in kept]) if kept else torch.zeros(0, dtype=torch.int64, device=device)
    confidence = torch.cat([k[1] for k in kept]) if kept else torch.zeros(0, device=device)
    if world_size > 1:
        predicted, confidence, loss_sum = _from_every_process(loader, predicted, confidence, loss_sum)
    labels = loader.labels.cpu()  # the whole split's, in its order (the sync point of evaluation)
    predicted, confidence = predicted.cpu(), confidence.cpu()
    correct, n = int((predicted == labels).sum()), len(labels)
    return {"accuracy": correct / max(n, 1), "loss": float(loss_sum) / max(n, 1), "examples": n,
            "correct": correct, "confusion": confusion_matrix(labels, predicted, num_classes),
            "labels": labels, "predicted": predicted, "confidence": confidence}


def _from_every_process(loader, predicted: torch.Tensor, confidence: torch.Tensor, loss_sum: torch.Tensor):
    """Each process's results put at its images' places in the split, zeros elsewhere, summed across the
    processes (every image is tested by exactly one): the whole split's predictions on every process."""
    import torch.distributed as dist

    both = torch.zeros(2, len(loader.labels), dtype=torch.float64, device=predicted.device)
    positions = loader.positions().to(predicted.device)
    both[0, positions], both[1, positions] = predicted.double(), confidence.double()  # exact: classes < 2**53
    dist.all_reduce(both)
    dist.all_reduce(loss_sum)
    return both[0].long(), both[1].float(), loss_sum


def checkpoint_test_split(config: TrainConfig, payload: dict, *, data_dir: str | None = None,
                          limit: int | None = None, few: bool = False, **data) -> Splits:
    """The test split of a checkpoint's run, the one way every command that reads a checkpoint gets it
    (evaluate, visualize, export's check, the report): the run's data and split (its --data,
    --val-fraction and --seed, its --limit-test) read with the model's input channels. `data_dir`: where
    the files are now (default: the run's); `limit`: the first N test images instead of the run's
    limit; `few`: for a command that shows a few images, an image folder's files are listed, none
    decoded (`data.imagefolder.pixels` decodes those it takes); `data`: other data settings (data,
    val_fraction, strict). Other classes are a UserError."""
    spec = data.get("data", config.data)
    config = config.replace(limit_train=1, limit_test=limit if limit is not None else config.limit_test,
                            data_dir=data_dir or config.data_dir, **data,
                            **({"data_regime": "stream" if image_folder_of(spec) else "memory"} if few else {}))
    splits = splits_for_model(config, model_kwargs(payload)["in_channels"])
    names = class_names(payload)
    if tuple(splits.class_names) != names:
        raise UserError(f"The data's classes ({', '.join(splits.class_names)}) are not the ones the checkpoint's "
                        f"model was trained on ({', '.join(names)}).")
    return splits


def evaluate_checkpoint(model: nn.Module, config: TrainConfig, splits: Splits, device: torch.device) -> dict:
    """Test accuracy of a loaded checkpoint's `model` (`load_trained`: the weights its run evaluated)
    on `splits`, measured as the run's own evaluations measured it (engine/trainer.py
    `evaluate_point`): `config.precision` resolved for `device` as training resolves it, `config.tta`,
    the memory format and the evaluation batch size of training. A `config` with another tta or
    precision overrides those. Returns `evaluate`'s dict with `settings`: what was used.

    On a CUDA GPU cuDNN autotunes its kernels (as in training) unless the run was --deterministic, and
    may pick other ones than the run's process did: there the last digit can differ."""
    precision = resolve_precision(config.precision, device)
    if config.channels_last:  # as prepare_model placed the trained (and the EMA) model
        model.to(memory_format=torch.channels_last)
    loader = make_test_loader(config, splits, device)
    with backend_flags(device, config.deterministic):  # training's cuDNN settings (autotuning unless deterministic)
        result = evaluate(model, loader, device, precision, config.channels_last, len(splits.class_names),
                          tta=config.tta)
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
