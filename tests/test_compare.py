"""`compare`: the table of what differs between runs (equal settings hidden) and their curves; a folder
that is not a run, or a run file that is not valid JSON, named in the error.
"""

import json

import pytest

from alexnet_lab.cli import main
from alexnet_lab.engine.config import make_config
from alexnet_lab.engine.run_dir import RunWriter
from alexnet_lab.engine.trainer import fit
from fakedata import synthetic_splits
from runhelpers import last_line


def tiny_run(path, **overrides):
    config = make_config("d2l", model="lenet", epochs=2, batch_size=16, device="cpu", **overrides)
    path.mkdir(parents=True)
    fit(config, [RunWriter(path, config.to_dict())], splits=synthetic_splits())
    return path


def test_compare_two_tiny_runs(tmp_path, capsys):
    a = tiny_run(tmp_path / "a", lr=0.9)
    b = tiny_run(tmp_path / "b", lr=0.1, momentum=0.5)
    out = tmp_path / "cmp"
    assert main(["compare", str(a), str(b), "--labels", "fast,slow", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    lines = {line.split()[0]: line.split()[1:] for line in text.splitlines() if line.strip() and line[0] != "-"}
    assert lines["run"] == ["fast", "slow"]
    assert lines["lr"] == ["0.9", "0.1"] and lines["momentum"] == ["0.0", "0.5"]  # differing keys shown
    assert "seed" not in lines  # equal keys hidden
    for label, path in (("fast", a), ("slow", b)):
        summary = json.loads((path / "summary.json").read_text())
        column = lines["run"].index(label)
        assert lines["test"][column + 1] == f"{summary['test_acc']:.4f}"  # "test acc" row
    assert (out / "compare.png").stat().st_size > 1000 and (out / "compare.svg").exists()
    saved = json.loads((out / "compare.json").read_text())
    assert [r["label"] for r in saved["runs"]] == ["fast", "slow"]


def test_compare_rejects_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["compare", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err


@pytest.mark.usefixtures("offline_cli")
@pytest.mark.parametrize("name, content, message", [
    ("config.json", "{not json", "is unreadable or not valid JSON"),
    ("summary.json", "[1, 2]", "holds a JSON list, not the object alexnet-lab writes"),
])
def test_compare_names_a_broken_file(tmp_path, capsys, name, content, message):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text('{"model": "lenet"}')
    (run / name).write_text(content)
    assert main(["compare", str(run), "--out", str(tmp_path / "cmp")]) == 2
    assert f"'{run / name}' {message}" in last_line(capsys)
