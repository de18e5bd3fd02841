"""The chapter's exercises: the new models, augmentation, `sweep` (out-of-memory handling) and `compare`."""

import json
import signal
import sys

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from alexnet_lab.analysis import sweep as sweep_mod
from alexnet_lab.cli import main
from alexnet_lab.data.loader import BatchLoader, augment_batch
from alexnet_lab.engine.config import make_config
from alexnet_lab.engine.builders import Splits
from alexnet_lab.engine.trainer import fit
from alexnet_lab.models import build_model, get_spec
from alexnet_lab.engine.run_dir import RunWriter



def synthetic_splits(n_train=64, n_test=32, seed=0) -> Splits:
    g = torch.Generator().manual_seed(seed)
    return Splits(torch.randint(0, 256, (n_train, 28, 28), dtype=torch.uint8, generator=g),
                  torch.randint(0, 10, (n_train,), generator=g),
                  torch.randint(0, 256, (n_test, 28, 28), dtype=torch.uint8, generator=g),
                  torch.randint(0, 10, (n_test,), generator=g), "synthetic")


def training_flops(model: nn.Module, size: int) -> int:
    """Forward + backward FLOPs of one example, counted by torch.utils.flop_counter."""
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.rand(1, 1, size, size)).sum().backward()
    return counter.get_total_flops()


# ---- models -------------------------------------------------------------------------------------

def test_alexnet_small_needs_at_least_5x_fewer_training_flops():
    big = training_flops(build_model("alexnet"), get_spec("alexnet").input_size)
    small = training_flops(build_model("alexnet-small"), get_spec("alexnet-small").input_size)
    assert big / small >= 5, big / small


def test_alexnet_small_keeps_alexnets_layout():
    def layout(model):
        return [type(m).__name__ for m in model if not isinstance(m, (nn.ReLU, nn.Flatten, nn.BatchNorm2d))]
    assert layout(build_model("alexnet-small")) == layout(build_model("alexnet"))


def test_lenet_modern_is_lenet_with_relu_maxpool_dropout():
    modern, classic = build_model("lenet-modern"), build_model("lenet")
    # same weight shapes, hence the same 61,706 parameters (hand count: 156+2416+48120+10164+850)
    assert [p.shape for p in modern.parameters()] == [p.shape for p in classic.parameters()]
    assert sum(p.numel() for p in modern.parameters()) == 156 + 2416 + 48120 + 10164 + 850
    kinds = {type(m) for m in modern.modules()}
    assert {nn.ReLU, nn.MaxPool2d, nn.Dropout} <= kinds
    assert not kinds & {nn.Sigmoid, nn.AvgPool2d}


def test_fmnist_net_parameter_count_by_hand():
    def conv(cin, cout):  # 3x3, no bias, then BatchNorm's weight and bias
        return 9 * cin * cout + 2 * cout
    expected = (conv(1, 32) + conv(32, 64) + conv(64, 64) + conv(64, 128) + conv(128, 128)
                + conv(128, 256) + conv(256, 256) + 256 * 10 + 10)
    assert sum(p.numel() for p in build_model("fmnist-net").parameters()) == expected


def test_best_preset_is_fmnist_net_and_trains(tmp_path):
    config = make_config("best", epochs=1, batch_size=16, device="cpu", precision="fp32")
    assert config.model == "fmnist-net" and config.augment
    summary = fit(config, splits=synthetic_splits())
    assert summary["steps"] == 4 and summary["epochs"] == pytest.approx(1.0)


# ---- augmentation (--augment, for every model) -------------------------------------------------------

def centred_blobs(b=64, side=28):
    """Images with all their mass well inside the frame (so shifts of <= 2 px lose none of it)."""
    g = torch.Generator().manual_seed(1)
    x = torch.zeros(b, 1, side, side)
    x[:, :, 8:20, 6:18] = torch.rand(b, 1, 12, 12, generator=g) * 0.5 + 0.25
    return x


def centroid_x(x):
    cols = torch.arange(x.shape[-1], dtype=x.dtype)
    return (x.sum(dim=(1, 2)) * cols).sum(dim=-1) / x.sum(dim=(1, 2, 3))


def test_augment_flip_only_mirrors_or_keeps_each_image():
    x = centred_blobs()
    out = augment_batch(x, torch.Generator().manual_seed(0), max_shift=0.0, brightness=0.0, contrast=0.0)
    same = (out - x).abs().amax(dim=(1, 2, 3)) < 1e-5
    mirrored = (out - x.flip(-1)).abs().amax(dim=(1, 2, 3)) < 1e-5
    assert bool((same | mirrored).all())
    assert 10 < int(mirrored.sum()) < 54  # about half of 64 are flipped


def test_augment_shift_moves_content_by_at_most_two_pixels_and_keeps_its_mass():
    x = centred_blobs()
    out = augment_batch(x, torch.Generator().manual_seed(0), brightness=0.0, contrast=0.0)
    assert torch.allclose(out.sum(dim=(1, 2, 3)), x.sum(dim=(1, 2, 3)), rtol=1e-4)
    # distance of the centroid from the original or from the mirrored original's centroid
    moved = torch.minimum((centroid_x(out) - centroid_x(x)).abs(), (centroid_x(out) - centroid_x(x.flip(-1))).abs())
    assert float(moved.max()) <= 2.0 + 1e-4
    assert float(moved.median()) > 0.2  # shifts actually happen


def test_augment_brightness_contrast_is_an_affine_jitter_within_bounds():
    g = torch.Generator().manual_seed(2)
    x = torch.rand(32, 1, 28, 28, generator=g) * 0.2 + 0.4  # mid-grey: no clamping at 0 or 1
    out = augment_batch(x, torch.Generator().manual_seed(0), max_shift=0.0, brightness=0.2, contrast=0.2)
    for i in range(32):
        # undo the random flip: the source is whichever orientation the output correlates with
        src = x[i] if torch.corrcoef(torch.stack([out[i].flatten(), x[i].flatten()]))[0, 1] > 0.99 else x[i].flip(-1)
        dx, dy = src - src.mean(), out[i] - out[i].mean()
        contrast = float((dx * dy).sum() / (dx * dx).sum())
        assert 0.8 - 1e-4 <= contrast <= 1.2 + 1e-4
        assert torch.allclose(dy, contrast * dx, atol=1e-4)
        assert abs(float(out[i].mean() - src.mean())) <= 0.2 + 1e-4


def test_augmenting_loader_is_reproducible_and_differs_per_epoch():
    images = torch.randint(0, 256, (32, 28, 28), dtype=torch.uint8)
    labels = torch.arange(32) % 10
    def batch(epoch, resize=None):
        loader = BatchLoader(images, labels, 8, shuffle=True, augment=True, seed=3, resize=resize)
        loader.set_epoch(epoch)
        return next(iter(loader))[0]
    assert torch.equal(batch(0), batch(0))
    assert not torch.equal(batch(0), batch(1))
    assert batch(0, resize=224).shape == (8, 1, 224, 224)  # augments at 28, then resizes for AlexNet
    plain = BatchLoader(images, labels, 8, shuffle=True, augment=False, seed=3)
    assert not torch.equal(batch(0), next(iter(plain))[0])


@pytest.mark.parametrize("name", ["lenet", "lenet-modern"])
def test_augment_flag_trains_any_model(name, capsys):
    config = make_config("d2l", model=name, epochs=1, batch_size=16, lr=0.1, augment=True, device="cpu")
    assert fit(config, splits=synthetic_splits())["steps"] == 4


# ---- sweep -------------------------------------------------------------------------------------

def test_sweep_records_simulated_out_of_memory_without_crashing(tmp_path):
    base = make_config("d2l", model="lenet", epochs=1)
    configs = sweep_mod.sweep_configs(base, [32, 64, 128, 256, 512], lr_scaling="linear")
    assert [c.lr for c in configs] == pytest.approx([0.0025, 0.005, 0.01, 0.02, 0.04])

    def fake_launch(command, out, timeout_s):  # batch sizes >= 256 "do not fit"
        config = json.loads(command[-2])
        if config["batch_size"] >= 256:
            return {"status": "out_of_memory", "detail": "simulated"}
        return {"status": "ok", "test_acc": 0.8, "examples_per_sec": 100.0 * config["batch_size"],
                "peak_memory_bytes": 2**20 * config["batch_size"], "steps": 60000 // config["batch_size"]}

    results = sweep_mod.sweep(configs, tmp_path, launch=fake_launch)
    assert [r["status"] for r in results] == ["ok"] * 3 + ["out_of_memory"] * 2
    assert [r["batch_size"] for r in results] == [32, 64, 128, 256, 512]
    from alexnet_lab.cli.sweep import format_table, plot_sweep
    table = format_table(results)
    assert table.count("out_of_memory") == 2 and "128 MiB" in table
    plot_sweep(results, [tmp_path / "s.png"], "t")
    assert (tmp_path / "s.png").stat().st_size > 1000


def test_child_out_of_memory_is_recorded_with_peak_memory(tmp_path, monkeypatch):
    from alexnet_lab.engine import trainer

    def oom_fit(config, callbacks=None, **kw):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1099511627776 bytes.")
    monkeypatch.setattr(trainer, "fit", oom_fit)
    result = sweep_mod.train_measured(make_config("d2l", model="lenet", device="cpu"), tmp_path)
    assert result["status"] == "out_of_memory" and "allocate" in result["detail"]
    assert result["peak_memory_bytes"] > 10 * 2**20  # this Python process with torch loaded

    def other_failure(config, callbacks=None, **kw):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")
    monkeypatch.setattr(trainer, "fit", other_failure)
    with pytest.raises(RuntimeError, match="shapes"):
        sweep_mod.train_measured(make_config("d2l", model="lenet", device="cpu"), tmp_path)


def test_out_of_memory_classification():
    assert sweep_mod.is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert sweep_mod.is_out_of_memory(MemoryError())
    assert not sweep_mod.is_out_of_memory(RuntimeError("Expected all tensors to be on the same device"))
    assert not sweep_mod.is_out_of_memory(ValueError("out of memory"))


def test_child_killed_by_the_kernel_counts_as_out_of_memory(tmp_path):
    killed = [sys.executable, "-c", f"import os; os.kill(os.getpid(), {int(signal.SIGKILL)})"]
    assert sweep_mod.run_child(killed, tmp_path / "a")["status"] == "out_of_memory"
    crashed = [sys.executable, "-c", "raise SystemExit('boom')"]
    result = sweep_mod.run_child(crashed, tmp_path / "b")
    assert result["status"] == "failed" and "boom" in result["detail"]


@pytest.mark.slow  # real Fashion-MNIST, two child processes
def test_sweep_cli_end_to_end_measures_each_run_in_its_own_process(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["sweep", "--batch-sizes", "16,64", "--model", "lenet", "--epochs", "1", "--limit-train", "256",
                 "--limit-test", "128", "--lr", "0.5", "--device", "cpu", "--out", str(out)]) == 0
    data = json.loads((out / "sweep.json").read_text())
    results = data["results"]
    assert [r["batch_size"] for r in results] == [16, 64] and all(r["status"] == "ok" for r in results)
    assert [r["steps"] for r in results] == [16, 4]
    for r in results:
        # a measured peak RSS: above this process's baseline-free floor, below the machine
        assert 50 * 2**20 < r["peak_memory_bytes"] < 64 * 2**30
        assert r["rss_before_training_bytes"] <= r["peak_memory_bytes"]
        summary = json.loads((out / f"bs{r['batch_size']}" / "summary.json").read_text())
        assert summary["test_acc"] == pytest.approx(r["test_acc"])
    assert (out / "sweep.png").stat().st_size > 1000
    assert "peak RSS" in capsys.readouterr().out


def test_sweep_rejects_bad_batch_sizes(capsys):
    assert main(["sweep", "--batch-sizes", "32,abc"]) == 2
    assert main(["sweep", "--batch-sizes", "32", "--batch-size", "64"]) == 2


# ---- compare -----------------------------------------------------------------------------------------

def tiny_run(path, **overrides):
    config = make_config("d2l", model="lenet", epochs=2, batch_size=16, device="cpu", **overrides)
    path.mkdir(parents=True)
    fit(config, [RunWriter(path, config.to_dict())], splits=synthetic_splits())
    return path


def test_compare_two_tiny_runs(tmp_path, capsys):
    a = tiny_run(tmp_path / "a", lr=0.9)
    b = tiny_run(tmp_path / "b", lr=0.1, momentum=0.5)
    out = tmp_path / "cmp"
    assert main(["compare", str(a), str(b), "--labels", "fast,slow", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    lines = {line.split()[0]: line.split()[1:] for line in text.splitlines() if line.strip() and line[0] != "-"}
    assert lines["run"] == ["fast", "slow"]
    assert lines["lr"] == ["0.9", "0.1"] and lines["momentum"] == ["0.0", "0.5"]  # differing keys shown
    assert "seed" not in lines  # equal keys hidden
    for label, path in (("fast", a), ("slow", b)):
        summary = json.loads((path / "summary.json").read_text())
        column = lines["run"].index(label)
        assert lines["test"][column + 1] == f"{summary['test_acc']:.4f}"  # "test acc" row
    assert (out / "compare.png").stat().st_size > 1000 and (out / "compare.svg").exists()
    saved = json.loads((out / "compare.json").read_text())
    assert [r["label"] for r in saved["runs"]] == ["fast", "slow"]


def test_compare_rejects_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["compare", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err
