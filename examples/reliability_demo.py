"""Produce the messages quoted in docs/RELIABILITY.md: every failure tried for real, through the CLI.

Run from the repository root: `PYTHONPATH=src python examples/reliability_demo.py OUT [SECTION ...]`
(sections: resume, kill, checkpoints, data, flags, hostile, alexnet; all by default, in that order;
each is well under a minute; checkpoints, flags and hostile use the run that resume makes). Each case
runs `python -m alexnet_lab ...` as a subprocess and records its exit status and what it printed
(progress bars left out) in OUT/report-SECTION.md.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import fakedata  # noqa: E402  (the test-suite's synthetic IDX writer)

from alexnet_lab.engine.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402

OUT = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/reliability")  # relative: short paths in messages
SECTIONS = sys.argv[2:] or ["resume", "kill", "checkpoints", "data", "flags", "hostile", "alexnet"]
ENV = {**os.environ, "PYTHONPATH": str(Path("src").resolve()), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
LENET = ["--model", "lenet", "--limit-train", "2000", "--limit-test", "1000", "--epochs", "2",
         "--batch-size", "64", "--lr", "0.1", "--momentum", "0.9", "--schedule", "onecycle", "--augment",
         "--deterministic", "--device", "cpu"]
report: list[str] = []


def shown(text: str) -> str:
    """What a person would read: output lines without tqdm's redrawn progress bars."""
    lines = [part for line in text.split("\n") for part in line.split("\r")]
    return "\n".join(l for l in lines if l.strip() and "step/s" not in l and "step [" not in l
                     and "B/s" not in l and "|" not in l)


def record(title: str, args: list[str], proc_rc: int, output: str, note: str = "") -> None:
    report.append(f"### {title}\n\n```\n$ alexnet-lab {' '.join(args)}\n{shown(output)}\n[exit status {proc_rc}]\n```\n"
                  + (f"{note}\n" if note else ""))
    print(report[-1], flush=True)


def cli(title: str, args: list[str], env: dict | None = None, note="") -> int:
    """Run the CLI; `note` (text, or a function called after the run) is added below its output."""
    proc = subprocess.run([sys.executable, "-m", "alexnet_lab", *args], env=env or ENV,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    record(title, args, proc.returncode, proc.stdout, note() if callable(note) else note)
    return proc.returncode


def cli_signal(title: str, args: list[str], when, signums: list[int], note="", gap: float = 0.0) -> int:
    """Start training, wait until `when()` is true, then send `signums` (`gap` seconds apart)."""
    with open(OUT / "stderr.txt", "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "alexnet_lab", *args], env=ENV, stdout=err,
                                stderr=subprocess.STDOUT, text=True)
        while not when():
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        for i, signum in enumerate(signums):
            if i:
                time.sleep(gap)
            proc.send_signal(signum)
        sent = time.monotonic()
        rc = proc.wait(timeout=600)
        waited = time.monotonic() - sent
    note = note() if callable(note) else note
    record(title, args, rc, (OUT / "stderr.txt").read_text(),
           f"The process exited {waited:.1f} s after the last signal was sent. {note}")
    return rc


def rows(run: Path) -> int:
    path = run / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def same_run(a: Path, b: Path) -> str:
    ca, cb = load_checkpoint(a / "checkpoint.pt"), load_checkpoint(b / "checkpoint.pt")
    weights = all(torch.equal(ca["model_state"][k], cb["model_state"][k]) for k in ca["model_state"])
    strip = lambda r: {k: v for k, v in r.items() if k != "elapsed_s"}  # noqa: E731
    ma = [strip(json.loads(line)) for line in (a / "metrics.jsonl").read_text().splitlines()]
    mb = [strip(json.loads(line)) for line in (b / "metrics.jsonl").read_text().splitlines()]
    return (f"Compared with the uninterrupted run {a.name}: weights bit-identical: {weights}; "
            f"metrics.jsonl rows identical except elapsed_s: {ma == mb} ({len(ma)} rows).")


def hostile(a: Path, tiny: list[str], offline: dict) -> None:
    """The defects found by trying to break the CLI, each tried again after its fix."""
    report.append("## Careless and hostile use\n")
    good = fakedata.make_dataset(OUT / "data" / "good", 256, 64)
    run = OUT / "F"
    shutil.rmtree(run, ignore_errors=True)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom alexnet_lab.engine.run_dir import claim_run_dir\n"
        "with claim_run_dir(sys.argv[1]):\n    print('held', flush=True); time.sleep(600)\n"), str(run)],
        env=ENV, stdout=subprocess.PIPE, text=True)
    holder.stdout.readline()
    cli(f"A second process on a run folder in use (held by PID {holder.pid})",
        [*tiny, "--data-dir", str(good), "--out", str(run)], env=offline)
    holder.kill()
    holder.wait()
    cli("The same after that process was killed (its lock file left behind)",
        [*tiny, "--data-dir", str(good), "--out", str(run)], env=offline)
    other = OUT / "G"
    shutil.rmtree(other, ignore_errors=True)
    other.mkdir()
    (other / "best.pt").write_bytes((a / "best.pt").read_bytes())
    cli("--out at a folder holding another run's best.pt (no checkpoint.pt)",
        [*tiny, "--data-dir", str(good), "--out", str(other)], env=offline)
    half = fakedata.make_dataset(OUT / "data" / "half", 128, 64)
    cli("Resume on other data", ["train", "--resume", str(run), "--epochs", "2", "--data-dir", str(half)],
        env=offline)
    for title, flags in [("Infinite epochs", ["--epochs", "inf"]), ("1e20 epochs", ["--epochs", "1e20"]),
                         ("A learning rate beyond float32", ["--lr", "1e308"]),
                         ("Negative weight decay", ["--weight-decay", "-1"]),
                         ("A seed beyond 64 bits", ["--seed", "99999999999999999999"])]:
        cli(title, [*tiny, "--data-dir", str(good), "--out", str(OUT / "bad-flag"), *flags], env=offline)
    cli("fmnist-net at 4096x4096 (the memory estimate, before anything is allocated)",
        ["train", "--model", "fmnist-net", "--resize", "4096", "--epochs", "1", "--device", "cpu",
         "--data-dir", str(good), "--out", str(OUT / "too-big")], env=offline)
    empty = fakedata.make_dataset(OUT / "data" / "empty-test", 64, 0)
    cli("An empty test set", [*tiny, "--data-dir", str(empty), "--out", str(OUT / "empty")], env=offline)
    cli("--precision fp16 on a CPU", [*tiny, "--data-dir", str(good), "--precision", "fp16",
                                      "--out", str(OUT / "fp16")], env=offline)
    cli("--out ''", [*tiny, "--data-dir", str(good), "--out", ""], env=offline)
    cli("evaluate on a folder", ["evaluate", "--checkpoint", str(a)])


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    a, b, c, d, e = (OUT / name for name in ("A", "B", "C", "D", "E"))
    tiny = ["train", "--model", "lenet", "--epochs", "1", "--device", "cpu"]
    offline = {**ENV, "ALEXNET_LAB_OFFLINE": "1"}
    for section in SECTIONS:
        report.clear()
        if section == "resume":
            for run in (a, b):
                shutil.rmtree(run, ignore_errors=True)
            report.append("## Interruption and resume (real Fashion-MNIST, LeNet, 2,000 images, 2 epochs)\n")
            cli("Uninterrupted reference run", ["train", *LENET, "--out", str(a)])
            cli_signal("Ctrl-C (SIGINT) mid-epoch", ["train", *LENET, "--out", str(b)], lambda: rows(b) >= 3,
                       [signal.SIGINT])
            cli("Resume", ["train", "--resume", str(b)], note=lambda: same_run(a, b))
        elif section == "kill":
            for run in (c, d):
                shutil.rmtree(run, ignore_errors=True)
            cli_signal("SIGTERM (what a cluster's preemption sends)", ["train", *LENET, "--out", str(c)],
                       lambda: rows(c) >= 7, [signal.SIGTERM])
            cli("Resume after SIGTERM", ["train", "--resume", str(c)], note=lambda: same_run(a, c))
            cli_signal("Hard kill (SIGKILL, no chance to save) with --checkpoint-every 5",
                       ["train", *LENET, "--checkpoint-every", "5", "--out", str(d)], lambda: rows(d) >= 4,
                       [signal.SIGKILL])
            report[-1] += (f"The last checkpoint is that of step "
                           f"{load_checkpoint(d / 'checkpoint.pt')['run_state']['step']}; {rows(d)} metrics rows "
                           "were written; rows logged after the checkpoint are dropped on resume.\n")
            cli("Resume after the hard kill", ["train", "--resume", str(d)], note=lambda: same_run(a, d))
            cli("Resume a finished run", ["train", "--resume", str(c)])
            cli("Resume with a changed recipe", ["train", "--resume", str(c), "--lr", "0.5"])
            cli("Extend a finished run by one epoch", ["train", "--resume", str(c), "--epochs", "3"])
            cli("Resume a folder without a checkpoint", ["train", "--resume", str(OUT)])
        elif section == "checkpoints":
            report.append("## Untrusted and damaged checkpoints\n")
            marker = OUT / "created-by-the-checkpoint"
            marker.unlink(missing_ok=True)
            evil = OUT / "evil.pt"
            subprocess.run([sys.executable, "-c", (
                "import torch, sys\n"
                "class P:\n"
                "    def __reduce__(self): return (open, (sys.argv[2], 'w'))\n"
                "torch.save({'format': 'alexnet-lab-checkpoint/1', 'model_state': P()}, sys.argv[1])\n"),
                str(evil), str(marker)], check=True)
            cli("A checkpoint carrying code (its payload would create a file)",
                ["evaluate", "--checkpoint", str(evil)],
                note=lambda: f"File created by the payload exists afterwards: {marker.exists()}.")
            shell = OUT / "evil-shell.pt"
            subprocess.run([sys.executable, "-c", (
                "import os, pickle, sys\n"
                "class P:\n"
                "    def __reduce__(self): return (os.system, ('touch ' + sys.argv[2],))\n"
                "open(sys.argv[1], 'wb').write(pickle.dumps({'model_state': P()}, protocol=2))\n"),
                str(shell), str(marker)], check=True)
            cli("A raw pickle that would run a shell command", ["evaluate", "--checkpoint", str(shell)],
                note=lambda: f"File created by the payload exists afterwards: {marker.exists()}.")
            cut = OUT / "cut.pt"
            cut.write_bytes((a / "checkpoint.pt").read_bytes()[:100_000])
            cli("A truncated checkpoint", ["evaluate", "--checkpoint", str(cut)])
            other = load_checkpoint(a / "checkpoint.pt")
            other["model_name"] = "alexnet"
            save_checkpoint(OUT / "other-model.pt", other)
            cli("A checkpoint for another model", ["predict", "--checkpoint", str(OUT / "other-model.pt"),
                                                   str(a / "curves.png")])
        elif section == "data":
            report.append("## Bad data (synthetic IDX files)\n")
            shutil.rmtree(OUT / "data", ignore_errors=True)
            arrays = fakedata.make_arrays(64, 32)
            cases = {
                "missing file": lambda f: (f / "t10k-labels-idx1-ubyte.gz").unlink(),
                "truncated gzip": lambda f: (f / "train-images-idx3-ubyte.gz").write_bytes(
                    (f / "train-images-idx3-ubyte.gz").read_bytes()[:-40]),
                "truncated IDX payload": lambda f: (f / "t10k-images-idx3-ubyte.gz").write_bytes(
                    gzip.compress(fakedata.idx_bytes(arrays["test_images"])[:-100])),
                "wrong magic number (an HTML error page saved as the file)": lambda f: (
                    f / "train-labels-idx1-ubyte.gz").write_bytes(
                    gzip.compress(b"<html><body>404 Not Found</body></html>")),
                "image/label count mismatch": lambda f: fakedata.write_idx(
                    f / "t10k-labels-idx1-ubyte.gz", arrays["test_labels"][:-2]),
                "label out of range": lambda f: fakedata.write_idx(
                    f / "train-labels-idx1-ubyte.gz", arrays["train_labels"] + 3),
            }
            for name, damage in cases.items():
                folder = fakedata.make_dataset(
                    OUT / "data" / name.split(" (")[0].replace(" ", "-").replace("/", "-"), 64, 32)
                damage(folder)
                run = OUT / f"bad-{folder.name}"
                cli(f"Data: {name}", [*tiny, "--data-dir", str(folder), "--out", str(run)], env=offline,
                    note=lambda: f"Run folder created: {run.exists()}.")
            mirror = fakedata.make_dataset(OUT / "data" / "fake-mirror", 64, 32)
            target = OUT / "data" / "download-here"
            cli("Download whose checksum does not match",
                [*tiny, "--data-dir", str(target), "--out", str(OUT / "bad-dl")],
                env={**ENV, "ALEXNET_LAB_MIRROR": mirror.resolve().as_uri()},
                note=lambda: f"Files left in {target.name}/: {sorted(p.name for p in target.iterdir())}.")
        elif section == "flags":
            report.append("## Bad flags, bad output folders, bad images, divergence\n")
            good = fakedata.make_dataset(OUT / "data" / "good", 256, 64)
            blocker = OUT / "a-file"
            blocker.write_text("")
            for title, args in [
                ("Negative epochs", [*tiny, "--epochs", "-1"]),
                ("Batch size 0", [*tiny, "--batch-size", "0"]),
                ("Unknown model", [*tiny, "--model", "vgg16"]),
                ("Unknown preset", [*tiny, "--preset", "fastest"]),
                ("Resize too small for AlexNet", ["train", "--model", "alexnet", "--resize", "128",
                                                  "--data-dir", str(good), "--out", str(OUT / "bad-resize")]),
                ("Unwritable --out", [*tiny, "--data-dir", str(good), "--out", str(blocker / "run")]),
            ]:
                cli(title, args, env=offline)
            from PIL import Image
            text = OUT / "notes.png"
            text.write_text("shopping list\n")
            bomb = OUT / "bomb.png"
            Image.new("1", (9000, 9000)).save(bomb)
            cli("predict: a file that is not an image", ["predict", "--checkpoint", str(a / "best.pt"), str(text)])
            cli(f"predict: a decompression bomb ({bomb.stat().st_size:,} bytes, 81 M pixels)",
                ["predict", "--checkpoint", str(a / "best.pt"), str(bomb)])
            shutil.rmtree(OUT / "diverged", ignore_errors=True)
            cli("Diverging run (learning rate far too high)",
                ["train", "--model", "lenet-modern", "--epochs", "2", "--batch-size", "16", "--device", "cpu",
                 "--data-dir", str(good), "--lr", "100", "--out", str(OUT / "diverged")], env=offline)
            shutil.rmtree(OUT / "diverged", ignore_errors=True)
            cli("Diverging run (weight decay far too high)",
                ["train", "--model", "lenet", "--epochs", "2", "--batch-size", "16", "--device", "cpu",
                 "--data-dir", str(good), "--lr", "1", "--weight-decay", "1000", "--out", str(OUT / "diverged")],
                env=offline)
        elif section == "hostile":
            hostile(a, tiny, offline)
        elif section == "alexnet":
            # AlexNet (seconds per step here), so the second Ctrl-C lands inside the step the first waits for.
            shutil.rmtree(e, ignore_errors=True)
            started = lambda: "Training alexnet" in (OUT / "stderr.txt").read_text()  # noqa: E731
            cli_signal("Ctrl-C once (AlexNet, seconds per step)",
                       ["train", "--model", "alexnet", "--limit-train", "512", "--limit-test", "256", "--epochs",
                        "1", "--device", "cpu", "--out", str(e)],
                       lambda: started() and time.sleep(2) is None, [signal.SIGINT])
            shutil.rmtree(e, ignore_errors=True)
            cli_signal("Ctrl-C twice (AlexNet, seconds per step)",
                       ["train", "--model", "alexnet", "--limit-train", "512", "--limit-test", "256", "--epochs",
                        "1", "--device", "cpu", "--out", str(e)],
                       lambda: started() and time.sleep(2) is None, [signal.SIGINT, signal.SIGINT], gap=0.5)
        (OUT / f"report-{section}.md").write_text("\n".join(report))
    print(f"Reports: {OUT}/report-*.md")


if __name__ == "__main__":
    main()
