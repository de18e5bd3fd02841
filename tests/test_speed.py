"""Speed features: fast numerics agree with fp32, --target-accuracy stops at the first evaluation at
or above the target, and `bench` times both pipelines.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import fakedata
from alexnet_lab import UserError
from alexnet_lab.analysis.bench import BenchConfig, flops_per_example, matmul_peak, run_bench
from alexnet_lab.analysis.reference_pipeline import PILFashionMNIST, reference_loader, to_tensor
from alexnet_lab.cli import main
from alexnet_lab.data.loader import to_float_batch
from alexnet_lab.engine.config import make_config
from alexnet_lab.engine.device import autocast, resolve_precision
from alexnet_lab.engine.builders import Splits, prepare_model
from alexnet_lab.engine.step import to_model_input
from alexnet_lab.engine.trainer import Callback, fit

# bf16 keeps 8 significant bits (relative rounding 2^-9 per value); a few layers of it move the
# logits of these small models by well under 3% of their range. Where fp32's top-2 margin is larger
# than twice that, the predicted class must not change.
BF16_LOGIT_TOL = 0.03
FP32_LOGIT_TOL = 1e-4


def _bar_images(labels: np.ndarray, rng) -> np.ndarray:
    images = rng.integers(0, 40, (len(labels), 28, 28)).astype(np.uint8)
    for i, label in enumerate(labels):  # a bright bar whose row encodes the class
        images[i, 2 + 2 * label: 4 + 2 * label, 4:24] = 250
    return images


@pytest.fixture
def bar_data_dir(tmp_path):
    """A Fashion-MNIST-shaped folder (IDX .gz files) whose labels are visible in the pixels."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 256), ("test", 64)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = _bar_images(labels, rng), labels
    return fakedata.make_dataset(tmp_path / "fmnist", **arrays)


def _bar_splits(n_train: int, n_test: int, noisy_test: bool = False) -> Splits:
    rng = np.random.default_rng(1)
    train_y = rng.integers(0, 10, n_train)
    test_y = rng.integers(0, 10, n_test)
    test_x = _bar_images(test_y, rng)
    if noisy_test:  # labels unrelated to the pixels: accuracy stays near chance
        test_y = rng.integers(0, 10, n_test)
    return Splits(torch.from_numpy(_bar_images(train_y, rng)), torch.from_numpy(train_y),
                  torch.from_numpy(test_x), torch.from_numpy(test_y), "synthetic")


# --- fast numerics give fp32's predictions --------------------------------------------------------

def _logits(model_name, precision, channels_last, compile_, images):
    config = make_config("d2l", model=model_name, precision=precision, channels_last=channels_last,
                         compile=compile_, device="cpu", init="default")
    device = torch.device("cpu")
    model = prepare_model(config, device).eval()  # same seed: same weights for every variant
    run = torch.compile(model) if compile_ else model
    with torch.no_grad(), autocast(resolve_precision(precision, device), device):
        return run(to_model_input(images, channels_last)).float()


# Every precision x memory format without compile on two models; torch.compile (seconds per
# variant on 2 cores) on the BatchNorm model in each precision, NCHW and NHWC across the two.
VARIANTS = [(m, p, cl, False) for m in ("speednet", "lenet") for p in ("fp32", "bf16") for cl in (False, True)
            if (p, cl) != ("fp32", False)]
VARIANTS += [("speednet", "fp32", False, True), ("speednet", "bf16", True, True)]


@pytest.mark.parametrize("model_name,precision,channels_last,compile_", VARIANTS)
def test_numerics_variants_predict_like_fp32(model_name, precision, channels_last, compile_):
    torch.manual_seed(0)
    images = torch.rand(32, 1, 28, 28)
    reference = _logits(model_name, "fp32", False, False, images)
    logits = _logits(model_name, precision, channels_last, compile_, images)
    scale = reference.abs().max()
    tol = (BF16_LOGIT_TOL if precision == "bf16" else FP32_LOGIT_TOL) * scale
    assert (logits - reference).abs().max() <= tol
    top2 = reference.topk(2, dim=1).values
    confident = (top2[:, 0] - top2[:, 1]) > 2 * tol
    assert torch.equal(logits.argmax(1)[confident], reference.argmax(1)[confident])


def test_alexnet_bf16_channels_last_predicts_like_fp32():
    torch.manual_seed(0)
    images = torch.rand(2, 1, 224, 224)
    reference = _logits("alexnet", "fp32", False, False, images)
    logits = _logits("alexnet", "bf16", True, False, images)
    assert (logits - reference).abs().max() <= BF16_LOGIT_TOL * reference.abs().max()


def test_precision_choice_per_device(monkeypatch):
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", cuda) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("auto", cuda) == "fp16"
    assert resolve_precision("fp16", cuda) == "fp16"
    with pytest.raises(UserError, match="fp16"):
        resolve_precision("fp16", torch.device("cpu"))


# --- --target-accuracy ----------------------------------------------------------------------------

@pytest.mark.parametrize("eval_every, tested_steps", [(1, [10, 20, 25]), (2, [20, 25]), (0, [25])])
def test_eval_every_picks_the_tested_epoch_ends(one_thread, eval_every, tested_steps):
    """--eval-every N tests at every Nth epoch end and always after the last step (the ladder's
    presets use 0: one evaluation, at the end), as the time estimate counts them."""
    from alexnet_lab.engine import estimate

    config = make_config("d2l", model="lenet", epochs=2.5, batch_size=10, lr=0.1, device="cpu",
                         eval_every=eval_every)
    summary = fit(config, [rows := Rows()], splits=_bar_splits(100, 20, noisy_test=True))
    tested = [r["step"] for r in rows.rows if "test_acc" in r]
    assert tested == tested_steps and len(tested) == estimate.evaluations(config, 100)
    assert summary["test_acc"] == rows.rows[-1]["test_acc"]


class Rows(Callback):
    def __init__(self):
        self.rows = []

    def on_log(self, row):
        self.rows.append(row)


def test_target_accuracy_stops_at_first_evaluation_reaching_it():
    splits = _bar_splits(256, 64)
    config = make_config("speedrun", epochs=6, batch_size=32, log_points_per_epoch=4,
                         target_accuracy=0.9, device="cpu", compile=False)
    rows = Rows()
    summary = fit(config, [rows], splits=splits)
    evaluated = [r for r in rows.rows if "test_acc" in r]
    assert len(evaluated) == len(rows.rows)  # with a target, every log point evaluates
    assert summary["reached_target"] and evaluated[-1]["test_acc"] >= 0.9
    assert all(r["test_acc"] < 0.9 for r in evaluated[:-1])
    assert summary["steps"] == evaluated[-1]["step"] < 6 * 8  # stopped before the last step
    assert 0 < summary["time_to_target_s"] <= summary["wall_seconds"]
    # measured at the reaching evaluation: after the previous log point, before this row's timestamp
    assert evaluated[-2]["elapsed_s"] < summary["time_to_target_s"] <= evaluated[-1]["elapsed_s"]


def test_unreachable_target_runs_every_step():
    splits = _bar_splits(256, 64, noisy_test=True)
    config = make_config("speedrun", epochs=1, batch_size=64, log_points_per_epoch=2,
                         target_accuracy=0.95, device="cpu", compile=False)
    summary = fit(config, splits=splits)
    assert summary["steps"] == 4 and not summary["reached_target"] and summary["time_to_target_s"] is None


def test_train_cli_reports_time_to_target(bar_data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--preset", "speedrun", "--epochs", "6", "--batch-size", "32", "--no-compile",
                 "--target-accuracy", "0.5", "--data-dir", str(bar_data_dir), "--device", "cpu",
                 "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["reached_target"] and summary["time_to_target_s"] > 0
    printed = capsys.readouterr().out
    assert f"in {summary['time_to_target_s']:.1f} s" in printed
    assert "Config (speedrun): model=speednet, epochs=6.0, batch_size=32, lr=0.1, momentum=0.9, nesterov=True" in printed


# --- bench -----------------------------------------------------------------------------------------

def test_flops_per_example_matches_hand_count_for_lenet():
    # forward: conv1 28*28*6*25, conv2 10*10*16*150, fc 400*120 + 120*84 + 84*10 multiply-adds (x2)
    forward = 2 * (28 * 28 * 6 * 25 + 10 * 10 * 16 * 150 + 400 * 120 + 120 * 84 + 84 * 10)
    conv1 = 2 * 28 * 28 * 6 * 25
    # backward: weight gradients of every layer + input gradients of all but the first conv
    assert flops_per_example("lenet", 28) == forward + forward + (forward - conv1)


def test_alexnet_flops_match_the_issue():
    assert flops_per_example("alexnet", 224) / 1e9 == pytest.approx(5.56, abs=0.05)


def test_matmul_peak_is_positive_and_finite():
    assert 0 < matmul_peak(torch.device("cpu"), "fp32", n=64, reps=2) < float("inf")


def test_reference_transforms_match_pil_and_project_resize():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)
    labels = np.arange(3)
    dataset = PILFashionMNIST(images, labels, resize=None)
    x, y = dataset[1]
    assert x.shape == (1, 28, 28) and y == 1 and torch.equal(x[0] * 255, torch.from_numpy(images[1]).float())
    big = PILFashionMNIST(images, labels, resize=224)
    pil = torch.stack([big[i][0] for i in range(3)])
    assert torch.equal(pil, torch.stack([to_tensor(Image.fromarray(a).resize((224, 224), Image.BILINEAR))
                                         for a in images]))
    # The project's batched resize is PIL's bilinear up to PIL's rounding to uint8.
    assert (pil - to_float_batch(torch.from_numpy(images), 224)).abs().max() <= 1 / 255 + 1e-6


def test_reference_loader_is_the_books_dataloader():
    images = np.zeros((8, 28, 28), np.uint8)
    loader = reference_loader(images, np.zeros(8, np.int64), 4, 32, torch.device("cpu"), num_workers=0)
    assert loader.batch_size == 4 and not loader.pin_memory
    x, y = next(iter(loader))
    assert x.shape == (4, 1, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    cuda_loader = reference_loader(images, np.zeros(8, np.int64), 4, 32, torch.device("cuda"))
    assert cuda_loader.pin_memory and cuda_loader.num_workers == 4


def test_bench_cli_times_both_pipelines(bar_data_dir, capsys):
    assert main(["bench", "--model", "lenet", "--batch-size", "8", "--warmup", "1", "--steps", "2",
                 "--repeats", "2", "--workers", "2", "--peak-size", "64", "--device", "cpu",
                 "--data-dir", str(bar_data_dir), "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    assert any(line.startswith("reference") for line in lines) and any(line.startswith("project") for line in lines)
    for name in ("reference", "project"):
        r = result[name]
        assert len(r["examples_per_sec_windows"]) == 2 and r["examples_per_sec"] > 0
        assert r["examples_per_sec"] == pytest.approx(np.median(r["examples_per_sec_windows"]))
        assert r["flops_per_sec"] == pytest.approx(r["examples_per_sec"] * result["flops_per_example"])
    assert result["reference"]["precision"] == "fp32" and result["reference"]["memory_format"] == "NCHW"
    assert result["ratio"] == pytest.approx(result["project"]["examples_per_sec"]
                                            / result["reference"]["examples_per_sec"])
    assert result["device"].startswith("cpu") and result["peak_flops_per_sec"]["fp32"] > 0


def test_bench_rejects_bad_settings():
    splits = _bar_splits(16, 8)
    with pytest.raises(UserError, match="larger than"):
        run_bench(make_config("fast", model="lenet", batch_size=32, device="cpu"), BenchConfig(), splits)
    with pytest.raises(UserError, match="steps"):
        BenchConfig(steps=0)


def test_the_speed_estimate_times_the_step_fit_runs(monkeypatch, one_thread):
    """One builder: the estimate's step has the config's loss (label smoothing), schedule and numerics."""
    from alexnet_lab.engine import estimate, step as step_module

    built = []

    def recording_builder(*args, **kwargs):
        built.append(step_module.build_training_step(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(estimate, "build_training_step", recording_builder)
    config = make_config("speedrun", device="cpu", batch_size=4, precision="fp32", label_smoothing=0.1)
    assert estimate.seconds_per_step(config, steps=1, warmup=0) > 0
    (step,) = built
    assert step.loss_fn.label_smoothing == config.label_smoothing == 0.1
    assert step.scheduler.last_epoch == 1 and step.optimizer.defaults["nesterov"]
    assert estimate.seconds_per_test_batch(config, steps=1, warmup=0) > 0  # a forward of 256 images


def test_target_accuracy_evaluates_at_every_log_point(one_thread):
    """What --target-accuracy's help says, and what the time estimate counts: a test evaluation at
    every log point (every 10 // 5 = 2 steps and at each epoch's end), here 8 in 1.5 epochs."""
    from alexnet_lab.engine import estimate

    config = make_config("d2l", model="lenet", epochs=1.5, batch_size=10, lr=0.1, device="cpu",
                         target_accuracy=0.99)
    summary = fit(config, [rows := Rows()], splits=_bar_splits(100, 20, noisy_test=True))
    assert not summary["reached_target"]
    tested = [r["step"] for r in rows.rows if "test_acc" in r]
    assert tested == [2, 4, 6, 8, 10, 12, 14, 15] and len(tested) == estimate.evaluations(config, 100)
