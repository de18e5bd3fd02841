"""`bench` (analysis/bench.py, analysis/reference_pipeline.py): the book's PIL + DataLoader pipeline, the
project's step in plain fp32 NCHW and in its chosen numerics, timed the same way, with the machine named;
the chosen numerics never slower than plain fp32 (fake timings); FLOPs per example by hand; the matmul
peak; bad settings refused.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet_lab import UserError
from alexnet_lab.analysis import bench
from alexnet_lab.analysis.bench import BenchConfig, flops_per_example, format_report, matmul_peak, run_bench
from alexnet_lab.analysis.machine import cpu_model_and_flags
from alexnet_lab.analysis.reference_pipeline import PILFashionMNIST, reference_loader, to_tensor
from alexnet_lab.cli import main
from alexnet_lab.data.loader import to_float_batch
from alexnet_lab.engine import numerics
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


def test_bench_cli_times_the_books_pipeline_and_the_projects_plain_and_chosen_steps(bar_data_dir, capsys):
    assert main(["bench", "--model", "lenet", "--batch-size", "8", "--warmup", "1", "--steps", "2",
                 "--repeats", "2", "--workers", "2", "--peak-size", "64", "--device", "cpu",
                 "--data-dir", str(bar_data_dir), "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    for name in ("reference", "plain", "project"):
        assert any(line.startswith(name) for line in lines)
        r = result[name]
        assert len(r["examples_per_sec_windows"]) == 2 and r["examples_per_sec"] > 0
        assert r["examples_per_sec"] == pytest.approx(np.median(r["examples_per_sec_windows"]))
        assert r["flops_per_sec"] == pytest.approx(r["examples_per_sec"] * result["flops_per_example"])
    assert result["reference"]["precision"] == "fp32" and result["reference"]["memory_format"] == "NCHW"
    assert (result["plain"]["precision"], result["plain"]["memory_format"]) == ("fp32", "NCHW")
    assert result["project"]["numerics"]["how"] in ("measured", "cached")  # bench's preset, fast: auto
    assert result["ratio"] == pytest.approx(result["project"]["examples_per_sec"]
                                            / result["reference"]["examples_per_sec"])
    assert result["ratio_plain"] == pytest.approx(result["project"]["examples_per_sec"]
                                                  / result["plain"]["examples_per_sec"])
    assert result["device"].startswith("cpu") and result["peak_flops_per_sec"]["fp32"] > 0
    cpu, isa = cpu_model_and_flags()
    assert any(line.startswith("machine: ") and cpu in line and "+".join(isa) in line for line in lines)
    assert any(line.startswith("project / reference: ") for line in lines)
    assert any(line.startswith("Numerics: ") for line in lines)


STEP_SECONDS = {"fp32 + channels-first": 0.30, "fp32 + channels-last": 0.20,
                "bf16 + channels-first": 0.50, "bf16 + channels-last": 0.40}


def fake_bench(monkeypatch, tmp_path, seconds: dict) -> dict:
    """run_bench of the plain and chosen steps with made-up seconds a step per numerics: the same for the
    measurement that chooses them and for bench's windows, as honest timing would be."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(numerics, "_REMEMBERED", {})
    monkeypatch.setattr(numerics, "cpu_has_fast_bf16", lambda: True)
    monkeypatch.setattr(numerics, "time_steps", lambda works, *args, **kwargs: {name: seconds[name] for name in works})

    def windows(step, batches, device, warmup, steps, repeats):
        return [steps * seconds[numerics.label(step.precision, step.channels_last)]] * repeats

    monkeypatch.setattr(bench, "_time_windows", windows)
    config = make_config("fast", model="lenet", batch_size=8, device="cpu")
    return run_bench(config, BenchConfig(peak_size=64), bar_splits(16, 8), pipelines=("plain", "project"))


@pytest.mark.parametrize("fastest", [None, *sorted(STEP_SECONDS)])
def test_the_chosen_numerics_are_never_slower_than_plain_fp32_beside_them(monkeypatch, tmp_path, one_thread,
                                                                          fastest):
    seconds = dict(STEP_SECONDS) if fastest else dict.fromkeys(STEP_SECONDS, 0.25)  # None: all tie
    if fastest:
        seconds[fastest] = 0.05
    result = fake_bench(monkeypatch, tmp_path, seconds)
    assert result["project"]["examples_per_sec"] >= result["plain"]["examples_per_sec"]
    expected = fastest or "fp32 + channels-first"  # a tie keeps the plain step
    project = result["project"]
    assert numerics.label(project["precision"], project["memory_format"] == "NHWC") == expected
    assert result["ratio_plain"] == pytest.approx(seconds["fp32 + channels-first"] / seconds[expected])
    report = format_report(result)
    assert "never slower than it in that measurement" in report and "note:" not in report


def test_bench_says_when_the_chosen_numerics_ran_slower_than_plain_here(monkeypatch, tmp_path, one_thread):
    """A cached choice that no longer holds (the machine changed its load): said, with what to do."""
    result = fake_bench(monkeypatch, tmp_path, STEP_SECONDS)
    result["ratio_plain"] = 0.9
    assert "delete the cache file named above to measure again" in format_report(result)


def test_bench_rejects_bad_settings():
    splits = bar_splits(16, 8)
    with pytest.raises(UserError, match="larger than"):
        run_bench(make_config("fast", model="lenet", batch_size=32, device="cpu"), BenchConfig(), splits)
    with pytest.raises(UserError, match="steps"):
        BenchConfig(steps=0)
