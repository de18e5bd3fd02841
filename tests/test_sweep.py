"""`sweep` (analysis/sweep.py): one child process per batch size, each with its peak memory measured; an
out-of-memory child (an exception or the kernel's SIGKILL) recorded as such, never a crash of the sweep.
"""

import json
import signal
import sys

import pytest
import torch

from alexnet_lab.analysis import sweep as sweep_mod
from alexnet_lab.cli import main
from alexnet_lab.engine.config import make_config


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


def test_child_out_of_memory_is_recorded_with_peak_memory(data_dir, tmp_path, monkeypatch):
    from alexnet_lab.engine import preflight, run

    config = make_config("d2l", model="lenet", device="cpu", data_dir=str(data_dir))

    def oom_fit(config, callbacks=None, **kw):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1099511627776 bytes.")
    monkeypatch.setattr(run, "fit", oom_fit)  # the child trains through engine.run.train, into its folder
    result = sweep_mod.train_measured(config, tmp_path / "a")
    assert result["status"] == "out_of_memory" and "allocate" in result["detail"]
    assert result["peak_memory_bytes"] > 10 * 2**20  # this Python process with torch loaded

    monkeypatch.setattr(preflight, "available_bytes", lambda device: 2**20)  # 1 MiB: refused before training
    result = sweep_mod.train_measured(config, tmp_path / "b")
    assert result["status"] == "out_of_memory" and "but only 1.0 MiB is available" in result["detail"]

    def other_failure(config, callbacks=None, **kw):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")
    monkeypatch.undo()
    monkeypatch.setattr(run, "fit", other_failure)
    with pytest.raises(RuntimeError, match="shapes"):
        sweep_mod.train_measured(config, tmp_path / "c")


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
    assert "--batch-sizes must be whole numbers separated by commas, got '32,abc'." in capsys.readouterr().err
    assert main(["sweep", "--batch-sizes", "32", "--batch-size", "64"]) == 2
    assert "sweep takes --batch-sizes (comma-separated), not --batch-size." in capsys.readouterr().err
