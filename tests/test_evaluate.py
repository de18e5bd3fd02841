"""One number per checkpoint: `evaluate`, the report and summary.json give the same test accuracy for the
same checkpoint and data, because `evaluate` measures as the run measured it (its precision, TTA, EMA
weights, memory format and test batch); where it is told to measure otherwise, it says so and why.
Its evaluation.json is valid JSON (never NaN); an empty test set is refused.

Tiny synthetic Fashion-MNIST (tests/fakedata.py), CPU only, offline.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

import fakedata
from alexnet_lab.cli import main
from alexnet_lab.data.fingerprint import split_fingerprint
from alexnet_lab.engine.builders import Splits
from alexnet_lab.engine.config import make_config
from alexnet_lab.engine.evaluation import run_test_record, why_it_differs
from runhelpers import last_line, train_args


def cpu_bf16_works() -> bool:
    """Whether this CPU runs a bf16 autocast convolution (emulated or native); else the run uses auto."""
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            torch.nn.functional.conv2d(torch.rand(1, 1, 8, 8), torch.rand(2, 1, 3, 3))
        return True
    except RuntimeError:
        return False


@pytest.fixture(autouse=True)
def offline_one_thread(monkeypatch):
    monkeypatch.setenv("ALEXNET_LAB_OFFLINE", "1")
    with fakedata.one_thread():
        yield


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    """A finished run that learned something, with flip-translate TTA, bf16 autocast, channels-last and
    an EMA of the weights: every setting that makes a re-evaluation differ if it is not the run's."""
    base = tmp_path_factory.mktemp("evaluate")
    data = fakedata.make_dataset(base / "fmnist", n_train=128, n_test=200)
    out = base / "run"
    with pytest.MonkeyPatch.context() as mp, fakedata.one_thread():
        mp.setenv("ALEXNET_LAB_OFFLINE", "1")
        assert main(["train", "--preset", "speedrun", "--data-dir", str(data), "--epochs", "4", "--batch-size", "16",
                     "--lr", "0.05", "--eval-every", "0", "--tta", "flip-translate", "--channels-last",
                     "--precision", "bf16" if cpu_bf16_works() else "auto", "--ema-decay", "0.9",
                     "--device", "cpu", "--out", str(out), "--no-report"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert 0.3 < summary["test_acc"] < 1  # learned something (chance: 0.1), so the number is a real test
    return {"out": out, "data": data, "summary": summary}


def evaluate_lines(capsys, run: dict, *extra: str) -> list[str]:
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(run["out"] / "checkpoint.pt"), "--device", "cpu", *extra]) == 0
    return capsys.readouterr().out.splitlines()


def test_evaluate_prints_exactly_summary_jsons_final_test_accuracy(run, capsys, tmp_path):
    summary = run["summary"]
    lines = evaluate_lines(capsys, run, "--out", str(tmp_path))
    assert lines[0].startswith(f"test acc {summary['test_acc']:.4f} (")
    assert lines[1].strip().endswith(": as the run measured it")
    assert "TTA flip-translate" in lines[1] and f"in {summary['precision']} on cpu" in lines[1]
    assert "the EMA of the weights" in lines[1]
    assert lines[2].strip() == f"the same as summary.json's final test acc {summary['test_acc']:.4f} " \
                               f"(step {summary['steps']:,})"
    evaluation = json.loads((tmp_path / "evaluation.json").read_text())
    assert evaluation["test_acc"] == summary["test_acc"]  # every digit, not just the four printed
    assert evaluation["run_test_acc"] == summary["test_acc"] and evaluation["differs_from_run_because"] == []
    correct, examples = map(int, re.match(r"test acc \S+ \((\d+)/(\d+)\)", lines[0]).groups())
    assert examples == 200 and correct / examples == summary["test_acc"]


def test_evaluate_says_why_when_told_to_measure_otherwise(run, capsys, tmp_path):
    summary = run["summary"]
    lines = evaluate_lines(capsys, run, "--tta", "none", "--precision", "fp32", "--out", str(tmp_path))
    assert "in fp32 on cpu, TTA none" in lines[1] and "as the run measured it" not in lines[1]
    reasons = ["TTA none (the run's: flip-translate)"]
    if summary["precision"] != "fp32":
        reasons.append(f"precision fp32 (the run's: {summary['precision']})")
    assert json.loads((tmp_path / "evaluation.json").read_text())["differs_from_run_because"] == reasons
    final = f"summary.json's final test acc {summary['test_acc']:.4f} (step {summary['steps']:,})"
    assert lines[2].strip() in (f"differs from {final} because of: {'; '.join(reasons)}",
                                f"the same as {final}, though measured differently: {'; '.join(reasons)}")


def test_evaluate_on_fewer_test_images_says_they_are_not_the_runs(run, capsys, tmp_path):
    lines = evaluate_lines(capsys, run, "--limit-test", "50", "--out", str(tmp_path))
    assert lines[0].split("(")[1].startswith(tuple(f"{k}/50)" for k in range(51)))
    assert "as the run measured it" not in lines[1]
    assert "other test images (50; the run tested 200)" in lines[2]


def test_evaluate_with_the_runs_settings_writes_the_runs_own_predictions(run, capsys, tmp_path):
    """The run tested once (--eval-every 0) and kept that test as predictions.csv: evaluate, measuring as
    the run did, writes the same file, byte for byte (every class and every confidence)."""
    assert (run["out"] / "predictions.csv").is_file() and not (run["out"] / "best.pt").exists()
    evaluate_lines(capsys, run, "--out", str(tmp_path), "--predictions", str(tmp_path / "again.csv"))
    assert (tmp_path / "again.csv").read_bytes() == (run["out"] / "predictions.csv").read_bytes()


def test_the_reports_numbers_are_the_runs_predictions_csv(run):
    """The report tests nothing: its accuracy, per-class accuracy and confusion matrix are those of the
    run's predictions.csv, counted independently here from its rows."""
    import csv

    from alexnet_lab.data import CLASS_NAMES
    from alexnet_lab.reports.learned import learned_sections

    with (run["out"] / "predictions.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    ctx = learned_sections(run["out"], run["summary"], device="cpu")
    assert ctx["checkpoint"] == "checkpoint.pt" and ctx["checkpoint_step"] == run["summary"]["steps"]
    correct = sum(row["true"] == row["predicted"] for row in rows)
    assert ctx["test"] == {"examples": 200, "correct": correct, "accuracy": run["summary"]["test_acc"]}
    assert correct / 200 == run["summary"]["test_acc"]
    for name, shown in zip(CLASS_NAMES, ctx["per_class"]):
        mine = [row for row in rows if row["true"] == name]
        assert shown["count"] == len(mine)
        assert shown["acc"] == (sum(row["predicted"] == name for row in mine) / len(mine) if mine else None)
    assert ctx["best"] == {"acc": run["summary"]["test_acc"], "step": run["summary"]["steps"], "file": "checkpoint.pt"}


@pytest.mark.usefixtures("offline_cli")
def test_evaluate_writes_valid_json_and_refuses_an_empty_test_set(data_dir, tmp_path, capsys):
    out = tmp_path / "r"
    assert main(train_args(data_dir, out)) == 0
    # 3 test images leave most classes without an example: their accuracy is null, never NaN.
    assert main(["evaluate", "--checkpoint", str(out / "checkpoint.pt"), "--data-dir", str(data_dir),
                 "--device", "cpu", "--limit-test", "3"]) == 0
    text = (out / "evaluation.json").read_text()
    result = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in evaluation.json"))
    assert None in result["per_class_acc"].values() and result["examples"] == 3
    empty = fakedata.make_dataset(tmp_path / "empty", n_train=64, n_test=0)
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(out / "checkpoint.pt"), "--data-dir", str(empty), "--device", "cpu",
                 "--out", str(tmp_path / "e")]) == 2
    assert "The test set in" in last_line(capsys) and not (tmp_path / "e").exists()


def test_no_value_here_is_nan():
    """Guard for test_evaluate_writes_valid_json_and_refuses_an_empty_test_set: json.loads accepts NaN
    unless told otherwise."""
    assert math.isnan(json.loads("NaN"))


# --- the pieces, on hand-made checkpoints ------------------------------------------------------------

def test_the_runs_number_is_the_metrics_row_of_the_checkpoints_own_step():
    rows = [{"epoch": 1.0, "step": 4, "test_acc": 0.5}, {"epoch": 1.5, "step": 6}, {"epoch": 2.0, "step": 8,
                                                                                  "test_acc": 0.7}]
    assert run_test_record({"run_state": {"step": 8, "metrics": rows}})["test_acc"] == 0.7
    # saved at step 6 (--checkpoint-every) without a test: the run has no number for these weights
    assert run_test_record({"run_state": {"step": 6, "metrics": rows[:2]}}) is None
    assert run_test_record({}) is None


def test_why_it_differs_names_each_setting_and_input_that_is_not_the_runs():
    images, labels = torch.zeros(4, 28, 28, dtype=torch.uint8), torch.arange(4)
    splits = Splits(images, labels, images, labels, "test")
    run_config = make_config("best", model="lenet")  # tta flip-translate
    payload = {"evaluated_with": {"device": "cuda:0", "precision": "bf16", "batch_size": 512, "world_size": 2},
               "data_fingerprint": {"test": split_fingerprint(images, labels)}}
    same = {"device": "cuda:1", "precision": "bf16", "batch_size": 512, "world_size": 1, "tta": "flip-translate"}
    assert why_it_differs(payload, run_config, same, splits) == [
        "one process (the run evaluated its test set across 2)"]
    payload["evaluated_with"]["world_size"] = 1
    assert why_it_differs(payload, run_config, same, splits) == []
    other = {"device": "cpu", "precision": "fp32", "batch_size": 256, "world_size": 1, "tta": "none"}
    fewer = Splits(images, labels, images[:3], labels[:3], "test")
    assert why_it_differs(payload, run_config, other, fewer) == [
        "TTA none (the run's: flip-translate)", "precision fp32 (the run's: bf16)",
        "device cpu (the run's: cuda:0)", "test batches of 256 (the run's: 512)",
        "other test images (3; the run tested 4)"]
    older = {"data_fingerprint": payload["data_fingerprint"], "evaluated_with": {"device": 3}}  # malformed: unknown
    assert why_it_differs(older, run_config, same, splits) == [
        "the run's device, precision and test batch, which a checkpoint of an older version does not record"]


def test_evaluate_writes_one_prediction_per_test_image_and_keeps_an_existing_file(run, capsys, tmp_path):
    import csv

    from alexnet_lab.data import CLASS_NAMES
    from alexnet_lab.data.sources import load_source

    predictions = tmp_path / "predictions.csv"
    argv = ["--out", str(tmp_path), "--predictions", str(predictions)]
    lines = evaluate_lines(capsys, run, *argv)
    correct, examples = map(int, re.match(r"test acc \S+ \((\d+)/(\d+)\)", lines[0]).groups())
    with predictions.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["index", "true", "predicted", "confidence"]  # Fashion-MNIST: the test set's index
    assert [int(row["index"]) for row in rows] == list(range(examples)) and examples == 200
    labels = load_source("fashion-mnist", data_dir=str(run["data"])).test_labels.tolist()
    assert [row["true"] for row in rows] == [CLASS_NAMES[y] for y in labels]
    assert sum(row["true"] == row["predicted"] for row in rows) == correct  # the rows the accuracy counted
    assert all(row["predicted"] in CLASS_NAMES and 0.1 <= float(row["confidence"]) <= 1 for row in rows)

    written = predictions.read_bytes()
    assert main(["evaluate", "--checkpoint", str(run["out"] / "checkpoint.pt"), "--device", "cpu", *argv]) == 2
    assert "already exists" in capsys.readouterr().err and predictions.read_bytes() == written  # refused, kept
    predictions.write_text("someone's notes\n")
    assert main(["evaluate", "--checkpoint", str(run["out"] / "checkpoint.pt"), "--device", "cpu", *argv,
                 "--force"]) == 0
    assert predictions.read_bytes() == written  # replaced with the same predictions


# --- check everything, then write; CSV cells --------------------------------------------------------------

def test_a_refused_evaluate_writes_nothing(run, capsys, tmp_path):
    """Each refusal comes before the evaluation, so before confusion.png, evaluation.json or the CSV."""
    from runhelpers import folder_state

    taken = tmp_path / "taken.csv"
    taken.write_text("someone's table\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    linked = tmp_path / "linked"  # confusion.png would be written first, then evaluation.json refused
    linked.mkdir()
    (linked / "evaluation.json").symlink_to(taken)
    out = tmp_path / "out"
    before = folder_state(tmp_path), folder_state(run["out"])
    for extra, message in ((["--predictions", str(taken)], "already exists"),
                           (["--data-dir", str(empty)], str(empty)),
                           (["--out", str(taken)], "a file of that name exists"),
                           (["--out", str(linked)], "symbolic link")):
        capsys.readouterr()
        assert main(["evaluate", "--checkpoint", str(run["out"] / "checkpoint.pt"), "--device", "cpu",
                     "--out", str(out), *extra]) == 2, extra
        assert message in last_line(capsys), extra
    assert (folder_state(tmp_path), folder_state(run["out"])) == before  # not even the --out folder was made


def test_the_predictions_csv_never_begins_a_text_cell_like_a_formula_and_keeps_numbers_numeric(tmp_path):
    import csv
    import io

    from alexnet_lab.engine.run_dir import predictions_csv, read_predictions

    names = ["=HYPERLINK(\"x\")", "+1", "-2", "@SUM(A1)", "\tcmd", "\rcmd", "plain"]
    n = len(names)
    result = {"labels": torch.arange(n), "predicted": torch.arange(n).flip(0),
              "confidence": torch.linspace(0.2, 1.0, n)}
    text = predictions_csv(result, names, [f"{name}/0.png" for name in names])
    rows = list(csv.reader(io.StringIO(text.decode("utf-8"))))[1:]
    assert [row[1] for row in rows] == ["'=HYPERLINK(\"x\")", "'+1", "'-2", "'@SUM(A1)", "\\tcmd", "\\rcmd",
                                        "plain"]  # a quote before =+-@; tab and CR shown escaped
    assert [row[2] for row in rows] == [row[1] for row in rows][::-1]
    assert all(not cell.startswith(("=", "+", "-", "@", "\t", "\r")) for row in rows for cell in row[:3])
    assert [row[0].split("/")[0] for row in rows] == [row[1] for row in rows]  # paths as the class cells
    confidence = [float(row[3]) for row in rows]  # the number column: plain numbers, no quote
    assert confidence == sorted(confidence) and all(0 < p <= 1 for p in confidence)
    (tmp_path / "predictions.csv").write_bytes(text)  # and a run's reader takes back what was written
    back = read_predictions(tmp_path, names)
    assert torch.equal(back["labels"], result["labels"]) and torch.equal(back["predicted"], result["predicted"])
    assert back["confidence"].tolist() == [round(p, 4) for p in result["confidence"].tolist()]


@pytest.mark.parametrize("damage", ["a header of another file", "an unknown class", "a confidence above 1",
                                    "an index out of order", "a short row"])
def test_a_damaged_predictions_csv_is_refused_naming_its_line(tmp_path, damage):
    from alexnet_lab.engine.run_dir import read_predictions
    from alexnet_lab.errors import UserError

    good = ["index,true,predicted,confidence", "0,a,b,0.5000", "1,b,b,0.9000"]
    bad = {"a header of another file": ["path;true;predicted;confidence", *good[1:]],
           "an unknown class": [*good[:2], "1,c,b,0.9000"], "a confidence above 1": [*good[:2], "1,b,b,1.5"],
           "an index out of order": [*good[:2], "7,b,b,0.9000"], "a short row": [*good[:2], "1,b"]}[damage]
    (tmp_path / "predictions.csv").write_text("\n".join(bad) + "\n")
    with pytest.raises(UserError, match="is not the predictions file" if "header" in damage else "line 3 is not"):
        read_predictions(tmp_path, ["a", "b"])
