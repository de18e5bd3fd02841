"""engine/run_dir.py: the run folder's files as RunWriter writes them and read_run reads them back; the
lock that keeps one process to a folder; what `--out` may be (a new or empty folder, never someone
else's files).
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys

import pytest

from alexnet_lab.cli import main
from alexnet_lab.engine.run_dir import CSV_COLUMNS, RunWriter, read_metrics
from runhelpers import last_line, recipe_args, train_args

ROWS = [{"epoch": 0.5, "step": 1, "examples": 32, "train_loss": 2.31, "train_acc": 0.125, "lr": 0.01,
         "elapsed_s": 0.2},
        {"epoch": 1.0, "step": 2, "examples": 64, "train_loss": float("nan"), "train_acc": 0.25, "lr": 0.01,
         "test_acc": 0.3125, "elapsed_s": 0.4}]


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_metrics_csv_holds_the_rows_of_metrics_jsonl(tmp_path):
    writer = RunWriter(tmp_path, {"model": "lenet"})
    writer.on_train_start({})  # where fit starts the run's files
    for row in ROWS:
        writer.on_log(dict(row))
    table = read_csv(tmp_path / "metrics.csv")
    assert list(table[0]) == list(CSV_COLUMNS)
    jsonl = read_metrics(tmp_path)
    assert len(table) == len(jsonl) == 2
    for cells, row in zip(table, jsonl):
        for key in CSV_COLUMNS:
            value = row.get(key)
            assert cells[key] == ("" if value is None else str(value) if not isinstance(value, float)
                                  else repr(value)), key
    assert table[0]["test_acc"] == "" and float(table[1]["test_acc"]) == 0.3125
    assert table[1]["train_loss"] == "" and jsonl[1]["train_loss"] is None  # NaN: an empty cell, JSON null


def test_a_resumed_run_rewrites_both_metrics_files_to_the_checkpoints_rows(tmp_path):
    writer = RunWriter(tmp_path, {"model": "lenet"})
    writer.on_train_start({})  # where fit starts the run's files
    for row in ROWS:
        writer.on_log(dict(row))
    kept = [ROWS[0]]  # the checkpoint was taken after the first row: the second runs again
    resumed = RunWriter(tmp_path, {"model": "lenet"}, resumed={"run_state": {"step": 1, "metrics": kept}})
    resumed.on_train_start({})
    resumed.on_log({**ROWS[1], "train_loss": 1.5})
    table = read_csv(tmp_path / "metrics.csv")
    assert [float(r["step"]) for r in table] == [1, 2] and float(table[1]["train_loss"]) == 1.5
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert math.isclose(read_metrics(tmp_path)[1]["train_loss"], 1.5)


# --- one run folder, one process ----------------------------------------------------------------------

@pytest.mark.usefixtures("offline_cli")
def test_a_locked_run_folder_is_refused_naming_the_holder(data_dir, tmp_path, capsys):
    from alexnet_lab.engine.run_dir import LOCK_NAME, RunDirLock

    out = tmp_path / "run"
    out.mkdir()
    holder = RunDirLock(out).acquire()  # another open file: flock conflicts as with another process
    try:
        assert main(train_args(data_dir, out)) == 2
        assert f"'{out}' is in use by another alexnet-lab process (PID {os.getpid()})" in last_line(capsys)
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # nothing written
    finally:
        holder.release()
    assert main(train_args(data_dir, out)) == 0
    assert not (out / LOCK_NAME).exists()  # released (and removed) at the end of the run
    holder = RunDirLock(out).acquire()
    try:  # a second --resume of the same folder is refused the same way
        assert main(["train", "--resume", str(out), "--epochs", "2"]) == 2
        assert f"(PID {os.getpid()})" in last_line(capsys)
    finally:
        holder.release()


@pytest.mark.usefixtures("offline_cli")
def test_a_stale_lock_of_a_dead_process_does_not_block(data_dir, tmp_path, capsys):
    """Another process (plain Python, no torch) holds the folder's lock, then dies by SIGKILL."""
    LOCK_NAME = ".lock"  # noqa: N806  (engine/run_dir.py's lock file)
    out = tmp_path / "run"
    out.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time\n"
                             f"fd = os.open({str(out / LOCK_NAME)!r}, os.O_RDWR | os.O_CREAT)\n"
                             "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, str(os.getpid()).encode())\n"
                             "print('locked', flush=True); time.sleep(60)"], stdout=subprocess.PIPE)
    assert proc.stdout.readline() == b"locked\n"
    assert main(train_args(data_dir, out)) == 2  # held by a live process
    assert f"is in use by another alexnet-lab process (PID {proc.pid})" in last_line(capsys)
    proc.kill()  # SIGKILL: no clean-up; the lock file stays, holding a dead PID
    proc.wait()
    assert (out / LOCK_NAME).read_text() == str(proc.pid)
    assert main(train_args(data_dir, out)) == 0
    assert not (out / LOCK_NAME).exists()  # taken over, then released and removed


# --- what --out may be --------------------------------------------------------------------------------

@pytest.mark.usefixtures("offline_cli")
def test_out_refuses_a_non_empty_folder_without_a_checkpoint(data_dir, tmp_path, capsys):
    out = tmp_path / "results"
    out.mkdir()
    (out / "best.pt").write_bytes(b"someone's best model")
    (out / "summary.json").write_text('{"test_acc": 0.94}')
    assert main(train_args(data_dir, out)) == 2
    err = last_line(capsys)
    assert f"'{out}' is not empty (it holds best.pt, summary.json)" in err and "Choose a new or empty --out" in err
    assert (out / "best.pt").read_bytes() == b"someone's best model"
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "summary.json"]


@pytest.mark.usefixtures("offline_cli")
def test_empty_out_is_refused(data_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(train_args(data_dir, "")) == 2
    assert last_line(capsys).endswith("--out is empty. Pass a folder name, or leave --out out for "
                                      "runs/<timestamp>-<model>.")
    assert not (tmp_path / "runs").exists() and sorted(os.listdir(tmp_path)) == []


@pytest.mark.usefixtures("offline_cli")
def test_unwritable_out(data_dir_512, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(recipe_args(data_dir_512, blocker / "run")) == 2
    err = capsys.readouterr().err
    assert f"Cannot write to --out '{blocker / 'run'}': Not a directory" in err
