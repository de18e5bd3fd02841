"""How long `alexnet-lab --help` and `--version` take: the minimum of N runs of the installed command
(each a fresh process, as a user runs it). Target: under 0.3 s on 2 cores. Run it under the CPU lock:
    flock /tmp/alexnet-lab-cpu.lock .venv/bin/python benchmarks/cli_startup.py --runs 20
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time


def timings(command: list[str], runs: int) -> list[float]:
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        seconds.append(time.perf_counter() - start)
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    exe = shutil.which("alexnet-lab", path=os.path.dirname(sys.executable)) or "alexnet-lab"
    print(f"load average at start: {os.getloadavg()[0]:.2f}; {args.runs} runs each of {exe}")
    for flags in (["--help"], ["--version"], ["presets"], ["train", "--help"]):
        t = timings([exe, *flags], args.runs)
        print(f"{' '.join(flags):<14} min {min(t):.3f} s  median {statistics.median(t):.3f} s  max {max(t):.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
