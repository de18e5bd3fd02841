"""engine/run_dir.py: the run folder's files as RunWriter writes them and read_run reads them back."""

from __future__ import annotations

import csv
import json
import math

from alexnet_lab.engine.run_dir import CSV_COLUMNS, RunWriter, read_metrics

ROWS = [{"epoch": 0.5, "step": 1, "examples": 32, "train_loss": 2.31, "train_acc": 0.125, "lr": 0.01,
         "elapsed_s": 0.2},
        {"epoch": 1.0, "step": 2, "examples": 64, "train_loss": float("nan"), "train_acc": 0.25, "lr": 0.01,
         "test_acc": 0.3125, "elapsed_s": 0.4}]


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_metrics_csv_holds_the_rows_of_metrics_jsonl(tmp_path):
    writer = RunWriter(tmp_path, {"model": "lenet"})
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
    for row in ROWS:
        writer.on_log(dict(row))
    kept = [ROWS[0]]  # the checkpoint was taken after the first row: the second runs again
    resumed = RunWriter(tmp_path, {"model": "lenet"}, rows=kept)
    resumed.on_log({**ROWS[1], "train_loss": 1.5})
    table = read_csv(tmp_path / "metrics.csv")
    assert [float(r["step"]) for r in table] == [1, 2] and float(table[1]["train_loss"]) == 1.5
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert math.isclose(read_metrics(tmp_path)[1]["train_loss"], 1.5)
