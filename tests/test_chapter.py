import json

from alexnet_lab.cli import chapter, main
from alexnet_lab.engine.config import make_config


def test_cpu_budget_fits_the_budget(monkeypatch, capsys):
    monkeypatch.setattr(chapter, "seconds_per_step", lambda config, steps=2: 1.5 if config.precision == "fp32" else 0.5)
    config = chapter.cpu_budget_config(make_config("d2l", device="cpu"), budget_minutes=2)
    assert config.model == "alexnet" and config.resize is None  # the chapter's net at 224x224
    assert config.limit_train == 240 * 128  # 120 s / 0.5 s per step, 128 images a step
    out = capsys.readouterr().out
    assert "alexnet-lab train --preset d2l" in out and "Estimated time: 2.0 min" in out
    assert "would take about 2.0 h" in out  # 469 steps x 10 epochs x (3 x 0.5 s) = 7035 s
    assert config.preset == "fast-cpu-budget" and config.momentum == 0.9 and config.epochs == 1


def test_make_run_job_end_to_end_on_cpu(tmp_path, monkeypatch, real_data, capsys):
    monkeypatch.setattr(chapter, "seconds_per_step", lambda config, steps=2: 1e9)  # force the 10-step minimum
    out = tmp_path / "chapter"
    assert main(["chapter", "--device", "cpu", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("AlexNet layer shapes")
    assert "Conv2d output shape:\t torch.Size([1, 96, 54, 54])" in printed
    assert f"Results in {out}/" in printed
    assert printed.splitlines()[-1].startswith(f"Report: {out / 'report.html'}")  # the last line names it
    assert "Tested on the first 2,000 of the 10,000 test images" in (out / "report.html").read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train_examples"] == 1280 and summary["model"] == "alexnet"
    assert {"curves.png", "curves.svg", "checkpoint.pt", "metrics.jsonl", "config.json"} <= {p.name for p in out.iterdir()}
