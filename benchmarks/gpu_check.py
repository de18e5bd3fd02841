"""alexnet-lab on a CUDA GPU, verified in one command: the CUDA tests, `bench`, the book's recipe in
full, the `fast` preset to 0.883, the speed ladder (`record`) and --compile on/off.

Run through benchmarks/gpu_check.sh (see its header for the exact device invocation). Every stage is
a subprocess with its own time cap; a stage that fails or runs out of time is recorded, not fatal.
Progress goes to stderr; stdout carries one JSON object, printed at the end (also written to
OUT/gpu_check.json). The whole check keeps within --budget-s (default 470 s, under 8 minutes).
`--smoke` runs every stage with tiny limits on the CPU (what tests/test_gpu_check.py runs).

Timings here are the measurements; nothing is filled in by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LADDER = ("speedrun", "speedrun-90", "speedrun-92", "speedrun-94", "speedrun-95")
BOOK_LINES = ("loss 0.331, train acc 0.878, test acc 0.883", "3941.8 examples/sec on cuda:0")
# The floors on one H100, recorded as met or not next to the measurement.
D2L_MIN_EXAMPLES_PER_SEC, D2L_MAX_TRAINING_S, BENCH_MIN_RATIO = 30_000, 30.0, 5.0

# Seconds each stage may take. A stage may also use what earlier stages left unused, but never the
# caps of the stages after it, so every stage gets at least its own cap within the budget.
CAPS = {"env": 20, "cuda_tests": 100, "bench": 50, "d2l": 110, "fast": 40, "record": 80, "compile": 70}
SMOKE_CAPS = {"env": 30, "cuda_tests": 60, "bench": 60, "d2l": 60, "fast": 60, "record": 60, "compile": 60}
KILL_GRACE_S = 5  # a stage out of time gets SIGTERM this long before its end, then SIGKILL
MIN_STAGE_S = KILL_GRACE_S + 2  # a stage left with less than this is not started

ENV_PROBE = r"""
import argparse, json, platform, torch
cuda = torch.cuda.is_available()
info = {"python": platform.python_version(), "torch": torch.__version__, "cuda_runtime": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None, "cuda_available": cuda,
        "gpu_count": torch.cuda.device_count(), "platform": platform.platform(),
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "tf32_cudnn": torch.backends.cudnn.allow_tf32}
if cuda:
    p = torch.cuda.get_device_properties(0)
    info.update(gpu=torch.cuda.get_device_name(0), capability=f"{p.major}.{p.minor}",
                gpu_memory_gib=round(p.total_memory / 2**30, 1),
                gpus=[torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])
# What this alexnet-lab offers, read from its CLI: commands and train's presets.
from alexnet_lab.cli import build_parser
sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
info["commands"] = sorted(sub.choices)
info["presets"] = sorted(next(a.choices for a in sub.choices["train"]._actions if "--preset" in a.option_strings))
print(json.dumps(info))
"""


def log(message: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Runner:
    """Runs stage commands as subprocesses within the check's budget; keeps their logs in OUT/logs."""

    def __init__(self, out: Path, budget_s: float, caps: dict, env: dict):
        self.out, self.caps, self.env = out, dict(caps), env
        self.deadline = time.monotonic() + budget_s
        (out / "logs").mkdir(parents=True, exist_ok=True)

    def allowance(self, stage: str) -> float:
        """Seconds `stage` may take: what is left of the budget less the caps of the stages after it."""
        later = list(self.caps)[list(self.caps).index(stage) + 1:]
        return self.deadline - time.monotonic() - sum(self.caps[s] for s in later)

    def run(self, name: str, cmd: list[str], timeout: float, extra_env: dict | None = None) -> dict:
        """{rc, seconds, timed_out, stdout, log}; `cmd` ends within `timeout` seconds: after
        timeout - KILL_GRACE_S its whole process group gets SIGTERM (a training run checkpoints and
        exits), and SIGKILL KILL_GRACE_S later."""
        stdout_path, log_path = self.out / "logs" / f"{name}.out", self.out / "logs" / f"{name}.log"
        record = {"command": " ".join(cmd), "log": str(log_path.relative_to(self.out))}
        if timeout < MIN_STAGE_S:
            return {**record, "rc": None, "seconds": 0.0, "timed_out": True, "stdout": "",
                    "error": "no time left in the check's budget"}
        log(f"{name}: {' '.join(cmd)}  (at most {timeout:.0f} s)")
        start = time.monotonic()
        with open(stdout_path, "w") as out_fh, open(log_path, "w") as err_fh:
            proc = subprocess.Popen(cmd, cwd=REPO, stdout=out_fh, stderr=err_fh, stdin=subprocess.DEVNULL,
                                    env={**self.env, **(extra_env or {})}, start_new_session=True)
            timed_out = False
            try:
                proc.wait(timeout=timeout - KILL_GRACE_S)
            except subprocess.TimeoutExpired:
                timed_out = True
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=KILL_GRACE_S)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        seconds = time.monotonic() - start
        stdout = stdout_path.read_text(errors="replace")
        result = {**record, "rc": proc.returncode, "seconds": round(seconds, 1), "timed_out": timed_out,
                  "stdout": stdout}
        if proc.returncode != 0:
            result["tail"] = (stdout + log_path.read_text(errors="replace"))[-1500:]
        log(f"{name}: rc {proc.returncode}{' (timed out)' if timed_out else ''} in {seconds:.1f} s")
        return result


def status_of(run: dict) -> str:
    if run.get("timed_out"):
        return "timeout"
    return "ok" if run.get("rc") == 0 else "failed"


def public(run: dict) -> dict:
    """A subprocess record without its captured stdout (which stays in OUT/logs)."""
    return {k: v for k, v in run.items() if k != "stdout"}


def last_json_line(text: str) -> dict | None:
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                return None
    return None


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


SHM, SHM_MIN_FREE = Path("/dev/shm"), 8 * 2**30


def scratch_dir(out: Path, name: str) -> Path:
    """Where a training stage writes its run folder. AlexNet checkpoints are 190-380 MB and the
    trainer writes (and fsyncs) one or two per epoch and at every new best: on a slow disk that alone
    could eat a stage's time cap, so they go to RAM (/dev/shm) when it has room. Only the small files
    are kept (see keep_small_files)."""
    root = SHM if SHM.is_dir() and shutil.disk_usage(SHM).free >= SHM_MIN_FREE else out / "scratch"
    path = root / f"alexnet-lab-gpu-check-{os.getpid()}" / name
    shutil.rmtree(path, ignore_errors=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def keep_small_files(scratch: Path, dest: Path) -> None:
    """Copy the run folder without checkpoints (*.pt) to `dest`, then delete the scratch folder."""
    shutil.rmtree(dest, ignore_errors=True)
    if scratch.is_dir():
        shutil.copytree(scratch, dest, ignore=shutil.ignore_patterns("*.pt", ".*.tmp"))
        shutil.rmtree(scratch, ignore_errors=True)
    for folder in (scratch.parent, scratch.parent.parent):  # the check's folder, then out/scratch
        if folder != SHM and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


# --- stages -----------------------------------------------------------------------------------------

def stage_env(r: Runner, a) -> dict:
    run = r.run("env", [a.python, "-c", ENV_PROBE], r.allowance("env"))
    info = last_json_line(run["stdout"]) or {}
    result = {"status": status_of(run), **public(run), "info": info}
    result["command"] = f"{a.python} -c ENV_PROBE (benchmarks/gpu_check.py)"
    return result, info


def stage_cuda_tests(r: Runner, a) -> dict:
    junit = r.out / "cuda-tests.xml"
    target = ["tests/test_cuda.py"] if a.smoke else ["tests"]
    cmd = [a.python, "-m", "pytest", "-m", "cuda", "-rs", "-p", "no:cacheprovider", f"--junitxml={junit}",
           *target]
    run = r.run("cuda_tests", cmd, r.allowance("cuda_tests"))
    result = {"status": status_of(run), **public(run)}
    if run["rc"] == 5:  # pytest: no test collected/selected
        result["status"] = "failed"
    try:
        suite = ET.parse(junit).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
        failed = [f"{case.get('classname')}::{case.get('name')}" for case in suite.iter("testcase")
                  if case.find("failure") is not None or case.find("error") is not None]
        skipped = sorted({(case.find("skipped").get("message") or "") for case in suite.iter("testcase")
                          if case.find("skipped") is not None})
        result.update(counts=counts, failed_tests=failed, skip_reasons=skipped)
    except (OSError, ET.ParseError, AttributeError):
        result["counts"] = None
    return result


def stage_bench(r: Runner, a) -> dict:
    out = r.out / "bench.json"
    cmd = [a.python, "benchmarks/bench_batches.py", "--device", a.device, "--json-out", str(out)]
    if a.smoke:
        cmd += ["--model", "lenet", "--batches", "16,32", "--warmup", "1", "--steps", "1", "--repeats", "1",
                "--ref-steps", "1", "--workers", "0", "--peak-size", "64", "--limit-train", "256"]
    run = r.run("bench", cmd + a.data_flags, r.allowance("bench"))
    result = {"status": status_of(run), **public(run)}
    data = read_json(out) if run["rc"] == 0 else None
    if data:
        result["result"] = data
        ratio = data.get("batch_128", {}).get("ratio")
        if ratio is not None and not a.smoke:
            result["target_ratio_ge_5"] = ratio >= BENCH_MIN_RATIO
    elif result["status"] == "ok":
        result["status"] = "failed"
    return result


def train_stage(r: Runner, a, name: str, flags: list[str]) -> dict:
    scratch, run_dir = scratch_dir(r.out, name), r.out / "runs" / name
    cmd = [a.python, "-m", "alexnet_lab", "train", *flags, "--device", a.device, "--out", str(scratch)]
    run = r.run(name, cmd + a.data_flags, r.allowance(name))
    keep_small_files(scratch, run_dir)
    result = {"status": status_of(run), **public(run), "process_wall_s": run["seconds"],
              "run_folder": str(run_dir.relative_to(r.out)), "checkpoints_written_to": str(scratch.parent.parent)}
    lines = run["stdout"].splitlines()
    result["chapter_lines"] = [line for line in lines
                               if re.fullmatch(r"loss \S+, train acc \S+, test acc \S+", line)
                               or re.fullmatch(r"\S+ examples/sec on \S+", line)]
    wall = [re.match(r"wall-clock ([\d.]+) s", line) for line in lines]
    result["cli_wall_clock_s"] = next((float(m.group(1)) for m in wall if m), None)
    summary = read_json(run_dir / "summary.json")
    if summary:
        keep = ("device", "precision", "epochs", "steps", "train_loss", "train_acc", "test_acc", "best_test_acc",
                "examples_per_sec", "step_seconds", "wall_seconds", "train_examples", "reached_target",
                "time_to_target_s")
        result["summary"] = {k: summary.get(k) for k in keep}
    elif run_dir.is_dir():  # stopped early: how far it got
        rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()] \
            if (run_dir / "metrics.jsonl").is_file() else []
        result["last_logged_row"] = rows[-1] if rows else None
    if result["status"] == "ok" and not summary:
        result["status"] = "failed"
    return result


def stage_d2l(r: Runner, a) -> dict:
    flags = ["--preset", "d2l"]
    if a.smoke:
        flags += ["--model", "lenet", "--epochs", "1", "--lr", "0.9", "--limit-train", "512", "--limit-test", "256"]
    result = train_stage(r, a, "d2l", flags)
    result["book"] = {"chapter_lines": list(BOOK_LINES), "gpu": "V100"}
    s = result.get("summary")
    if s and not a.smoke:
        result["targets"] = {f"examples_per_sec>={D2L_MIN_EXAMPLES_PER_SEC}":
                             s["examples_per_sec"] >= D2L_MIN_EXAMPLES_PER_SEC,
                             f"training_s<={D2L_MAX_TRAINING_S:g}": s["step_seconds"] <= D2L_MAX_TRAINING_S}
    return result


def stage_fast(r: Runner, a) -> dict:
    flags = ["--preset", "fast", "--target-accuracy", "0.883"]
    if a.smoke:
        flags += ["--model", "lenet-modern", "--epochs", "1", "--limit-train", "512", "--limit-test", "256"]
    return train_stage(r, a, "fast", flags)


def stage_record(r: Runner, a) -> dict:
    """The speed ladder: `record --seeds 3` per rung (smoke: the first rung, one seed, 512 images)."""
    ladder = LADDER[:1] if a.smoke else LADDER
    result = {"status": "ok", "presets": {}}
    cap_end = time.monotonic() + r.allowance("record")
    for preset in ladder:
        cmd = [a.python, "-m", "alexnet_lab", "record", "--preset", preset, "--seeds", "1" if a.smoke else "3",
               "--device", a.device, "--json", *(["--limit-train", "512"] if a.smoke else []), *a.data_flags]
        run = r.run(f"record-{preset}", cmd, cap_end - time.monotonic())
        entry = {"status": status_of(run), **public(run), "result": last_json_line(run["stdout"])}
        result["presets"][preset] = entry
        if entry["status"] != "ok":
            result["status"] = "failed"
    return result


def stage_compile(r: Runner, a) -> dict:
    base = [a.python, "-m", "alexnet_lab", "bench", "--pipelines", "project", "--json", "--device", a.device]
    if a.smoke:
        base += ["--model", "lenet", "--batch-size", "16", "--warmup", "1", "--steps", "1", "--repeats", "1",
                 "--peak-size", "64", "--limit-train", "256"]
    else:
        base += ["--model", "alexnet", "--batch-size", "128", "--warmup", "5", "--steps", "20", "--repeats", "3"]
    # The smoke test cannot afford inductor's CPU compile (tens of seconds on 2 cores): there the
    # --compile run goes through the same flags with torch.compile disabled, and says so.
    extra = {"TORCH_COMPILE_DISABLE": "1"} if a.smoke else None
    result = {"status": "ok"}
    if a.smoke:
        result["note"] = "smoke: TORCH_COMPILE_DISABLE=1, so the --compile run is eager"
    cap_end = time.monotonic() + r.allowance("compile")
    for flag in ("--no-compile", "--compile"):
        run = r.run(f"compile{flag}", base + [flag] + a.data_flags, cap_end - time.monotonic(), extra)
        data = last_json_line(run["stdout"]) if run["rc"] == 0 else None
        project = (data or {}).get("project", {})
        result[flag.lstrip("-")] = {"status": status_of(run), **public(run),
                                    "examples_per_sec": project.get("examples_per_sec"),
                                    "mfu": project.get("mfu"), "precision": project.get("precision")}
        if status_of(run) != "ok" or not data:
            result["status"] = "failed"
    on, off = result["compile"].get("examples_per_sec"), result["no-compile"].get("examples_per_sec")
    if on and off:
        result["speedup"] = on / off
    return result


# --- main -------------------------------------------------------------------------------------------

STAGES = ("env", "cuda_tests", "bench", "d2l", "fast", "record", "compile")
STAGE_FUNCTIONS = {"cuda_tests": stage_cuda_tests, "bench": stage_bench, "d2l": stage_d2l, "fast": stage_fast,
                   "record": stage_record, "compile": stage_compile}


def parse_args(argv):
    p = argparse.ArgumentParser(description="alexnet-lab on a CUDA GPU in one command (see the module doc).")
    p.add_argument("--data-dir", default=os.environ.get("ALEXNET_LAB_DATA"),
                   help="folder with the four Fashion-MNIST .gz files (default: $ALEXNET_LAB_DATA)")
    p.add_argument("--out", default=None, help="folder for the JSON, logs and run summaries "
                                               "(default: runs/gpu-check-<UTC time>)")
    p.add_argument("--smoke", action="store_true", help="every stage with tiny limits, on the CPU")
    p.add_argument("--device", default=None, help="default: cuda (cpu with --smoke)")
    p.add_argument("--budget-s", type=float, default=None, help="the whole check's wall clock (default 470)")
    p.add_argument("--python", default=sys.executable, help="the interpreter the stages run with")
    p.add_argument("--stages", default=",".join(STAGES[1:]),
                   help=f"the stages after env to run, comma-separated, in their order (default: all: "
                        f"{','.join(STAGES[1:])})")
    a = p.parse_args(argv)
    a.stages = [name.strip() for name in a.stages.split(",") if name.strip()]
    if not set(a.stages) <= set(STAGES[1:]):
        p.error(f"--stages: unknown stage(s) {', '.join(sorted(set(a.stages) - set(STAGES[1:])))}")
    a.device = a.device or ("cpu" if a.smoke else "cuda")
    caps = SMOKE_CAPS if a.smoke else CAPS
    a.budget_s = a.budget_s or (sum(caps.values()) if a.smoke else 470.0)
    a.data_flags = ["--data-dir", a.data_dir] if a.data_dir else []
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    a.out = Path(a.out or REPO / "runs" / f"gpu-check-{stamp}").resolve()
    return a, caps


def main(argv=None) -> int:
    a, caps = parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")])),
           "ALEXNET_LAB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    if a.data_dir:
        env["ALEXNET_LAB_DATA"] = str(Path(a.data_dir).resolve())
    if a.smoke:
        env["OMP_NUM_THREADS"] = "1"
    started = time.monotonic()
    report = {"check": "alexnet-lab gpu_check", "smoke": a.smoke, "device": a.device,
              "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "budget_s": a.budget_s, "caps_s": caps, "out": str(a.out), "stages": {}}
    runner = Runner(a.out, a.budget_s, caps, env)
    stages = report["stages"]
    stages["env"], info = stage_env(runner, a)
    if stages["env"]["status"] != "ok" or "torch" not in info:
        report["error"] = "the environment probe failed (torch or alexnet_lab did not import): see logs/env.log"
    elif not a.smoke and not info.get("cuda_available"):
        report["error"] = f"no CUDA GPU visible to torch {info['torch']}: nothing to check (use --smoke on a CPU)"
    else:
        for name in (name for name in STAGES[1:] if name in a.stages):
            stages[name] = STAGE_FUNCTIONS[name](runner, a)
    report["wall_s"] = round(time.monotonic() - started, 1)
    report["finished_utc"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    report["ok"] = "error" not in report and all(s["status"] == "ok" for s in stages.values())
    (a.out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    log(f"{'all stages ok' if report['ok'] else 'some stages failed'}: "
        + ", ".join(f"{k} {v['status']}" for k, v in stages.items()) + f"; {report['wall_s']} s in all")
    print(json.dumps(report), flush=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
