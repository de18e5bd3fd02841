"""`bench` (analysis/bench.py, analysis/reference_pipeline.py): the book's PIL + DataLoader pipeline and
the project's, timed the same way; FLOPs per example by hand; the matmul peak; bad settings refused.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet_lab import UserError
from alexnet_lab.analysis.bench import BenchConfig, flops_per_example, matmul_peak, run_bench
from alexnet_lab.analysis.reference_pipeline import PILFashionMNIST, reference_loader, to_tensor
from alexnet_lab.cli import main
from alexnet_lab.data.loader import to_float_batch
from alexnet_lab.engine.config import make_config
from fakedata import bar_splits


def test_flops_per_example_matches_hand_count_for_lenet():
    # forward: conv1 28*28*6*25, conv2 10*10*16*150, fc 400*120 + 120*84 + 84*10 multiply-adds (x2)
    forward = 2 * (28 * 28 * 6 * 25 + 10 * 10 * 16 * 150 + 400 * 120 + 120 * 84 + 84 * 10)
    conv1 = 2 * 28 * 28 * 6 * 25
    # backward: weight gradients of every layer + input gradients of all but the first conv
    assert flops_per_example("lenet", 28) == forward + forward + (forward - conv1)


def test_alexnet_training_flops_per_example_are_5_56_g():
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
    splits = bar_splits(16, 8)
    with pytest.raises(UserError, match="larger than"):
        run_bench(make_config("fast", model="lenet", batch_size=32, device="cpu"), BenchConfig(), splits)
    with pytest.raises(UserError, match="steps"):
        BenchConfig(steps=0)
