"""benchmarks/gpu_check.sh, the one-command GPU check: its --smoke mode runs every stage on the CPU
with tiny limits and prints one JSON object; a stage that fails or overruns is recorded, not fatal.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fakedata import make_dataset
from suite import THOROUGH

REPO = Path(__file__).resolve().parents[1]
STAGES = ["env", "cuda_tests", "bench", "d2l", "fast", "record", "compile"]


def _gpu_check_module():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# A plain `make test` samples the smoke (the probe and the book's recipe); CI=true runs every stage.
SAMPLED = ["env", "d2l"]


def test_smoke_runs_every_stage_and_prints_one_json_object(tmp_path):
    data = make_dataset(tmp_path / "fmnist", n_train=512, n_test=256)
    out = tmp_path / "check"
    run = STAGES if THOROUGH else SAMPLED
    result = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--smoke", "--data-dir", str(data),
                             "--out", str(out), "--stages", ",".join(run[1:])], capture_output=True, text=True,
                            timeout=600, env={**os.environ, "PYTHON": sys.executable})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1  # stdout is the JSON object alone; progress went to stderr
    report = json.loads(lines[0])
    assert report == json.loads((out / "gpu_check.json").read_text())
    assert report["smoke"] and report["ok"] and report["wall_s"] <= report["budget_s"]
    stages = report["stages"]
    assert list(stages) == run
    assert {s["status"] for s in stages.values()} == {"ok"}

    env = stages["env"]["info"]
    assert env["torch"] and "train" in env["commands"] and "d2l" in env["presets"]
    d2l = stages["d2l"]
    assert re.fullmatch(r"loss \d+\.\d{3}, train acc \d\.\d{3}, test acc \d\.\d{3}", d2l["chapter_lines"][0])
    assert re.fullmatch(r"\d+\.\d examples/sec on cpu", d2l["chapter_lines"][1])
    assert d2l["summary"]["train_examples"] == 512 and d2l["cli_wall_clock_s"] > 0
    assert d2l["book"]["chapter_lines"][1] == "3941.8 examples/sec on cuda:0"
    assert not list((out / "runs").rglob("*.pt"))  # checkpoints are not kept
    assert (out / "logs" / "d2l.log").is_file()
    if THOROUGH:
        check_the_other_stages(stages, env)


def check_the_other_stages(stages: dict, env: dict) -> None:
    tests = stages["cuda_tests"]["counts"]
    assert tests["tests"] >= 10 and tests["failures"] == tests["errors"] == 0
    if not env["cuda_available"]:  # on a CPU every CUDA test is skipped, and says why
        assert tests["skipped"] == tests["tests"]
        assert any("needs a CUDA GPU" in reason for reason in stages["cuda_tests"]["skip_reasons"])

    bench = stages["bench"]["result"]
    assert bench["batch_16"]["ratio"] > 0 and bench["fastest_batch"] in (16, 32)
    assert f"batch_{bench['fastest_batch']}" in bench and bench["peak_flops_per_sec"]["fp32"] > 0

    assert stages["fast"]["summary"]["reached_target"] in (True, False)
    assert "record" in env["commands"] and "speedrun-95" in env["presets"]
    record = stages["record"]["presets"]
    assert list(record) == ["speedrun"]  # smoke: the first rung only
    assert record["speedrun"]["result"]["preset"] == "speedrun" and record["speedrun"]["result"]["seeds"] == 1
    assert record["speedrun"]["result"]["device"] == "cpu"
    compile_ = stages["compile"]
    assert compile_["compile"]["examples_per_sec"] > 0 and compile_["no-compile"]["examples_per_sec"] > 0
    assert "TORCH_COMPILE_DISABLE" in compile_["note"]


def test_a_failing_or_overrunning_stage_is_recorded_not_fatal(tmp_path):
    gpu_check = _gpu_check_module()
    runner = gpu_check.Runner(tmp_path, budget_s=60, caps={"a": 10, "b": 10}, env={})
    # A stage may use what earlier stages left, never the caps of the stages after it.
    assert runner.allowance("a") == pytest.approx(60 - 10, abs=2) and runner.allowance("b") <= 60
    slow = runner.run("slow", ["/bin/sh", "-c", "echo started; exec sleep 60"], 8)
    assert slow["timed_out"] and gpu_check.status_of(slow) == "timeout" and slow["seconds"] <= 8.5
    assert "started" in slow["stdout"]
    failed = runner.run("fails", [sys.executable, "-c", "import sys; print('bad input', file=sys.stderr); sys.exit(3)"], 10)
    assert failed["rc"] == 3 and gpu_check.status_of(failed) == "failed" and "bad input" in failed["tail"]
    assert (tmp_path / "logs" / "fails.log").read_text().strip() == "bad input"
    skipped = runner.run("late", [sys.executable, "-c", "pass"], 1)
    assert skipped["rc"] is None and "no time left" in skipped["error"]
