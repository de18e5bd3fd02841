"""Is `make run` on time? Runs `alexnet-lab chapter` (what `make run` runs, set-up done) and compares the
time from its "Estimated time" line to its last line with that estimate, alone and with CPU hogs beside it.

    python benchmarks/make_run_timing.py --hogs 0 1 --out runs/make-run-timing [--budget-minutes 4]

Each line the command prints is stamped with the seconds since it started; the report prints the CPU,
the load average before each run, the estimate, the time it took and the ratio. A hog is a process
spinning on one core (`while True: pass`) from before the command starts to after it ends.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ESTIMATE = re.compile(r"^Estimated time: ([\d.]+) min")


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def timed_chapter(out: Path, budget_minutes: float, hogs: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "PYTHONUNBUFFERED": "1"}
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(hogs)]
    load = os.getloadavg()[0]
    started = time.perf_counter()
    stamped, estimate_at, estimate = [], None, None
    try:
        proc = subprocess.Popen([sys.executable, "-m", "alexnet_lab", "chapter", "--device", "cpu", "--progress", "log",
                                 "--budget-minutes", str(budget_minutes), "--out", str(out)],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            now = time.perf_counter() - started
            stamped.append(f"{now:7.1f}  {line.rstrip()}")
            match = ESTIMATE.match(line)
            if match:
                estimate_at, estimate = now, float(match.group(1)) * 60
        code = proc.wait()
    finally:
        for spinner in spinners:
            spinner.kill()
    ended = time.perf_counter() - started
    log = out.parent / f"{out.name}.log"
    log.write_text("\n".join(stamped) + "\n")
    result = {"hogs": hogs, "load_before": round(load, 2), "exit": code, "whole_command_s": round(ended, 1),
              "estimate_s": estimate, "from_estimate_s": None if estimate_at is None else round(ended - estimate_at, 1),
              "log": str(log)}
    if estimate:
        result["ratio"] = round(result["from_estimate_s"] / estimate, 3)
    summary = out / "summary.json"
    if summary.is_file():
        s = json.loads(summary.read_text())
        result.update(test_acc=s.get("test_acc"), train_examples=s.get("train_examples"),
                      stopped_at_time_budget=s.get("stopped_at_time_budget"))
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hogs", type=int, nargs="+", default=[0, 1], help="CPU hogs beside each run, one run each")
    p.add_argument("--budget-minutes", type=float, default=4.0)
    p.add_argument("--out", type=Path, default=Path("runs/make-run-timing"))
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores", flush=True)
    for hogs in a.hogs:
        result = timed_chapter(a.out / f"hogs{hogs}-{time.strftime('%H%M%S')}", a.budget_minutes, hogs)
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
