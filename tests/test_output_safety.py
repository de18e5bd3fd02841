"""Nothing written where it should not be: a run folder prepared by someone else (symlinks, a foreign
`.lock`) is refused untouched, and `export`/`report` never land on a run's own files or, without
--force, on any existing file. Tiny synthetic data, CPU, offline, one thread."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

import fakedata
from alexnet_lab.cli import main
from alexnet_lab.engine.checkpoint import load_checkpoint
from runhelpers import folder_state


pytestmark = pytest.mark.usefixtures("offline_cli")  # conftest.py: offline, one thread; data_dir is shared


def train_args(data_dir, out, *extra):
    return ["train", "--model", "lenet", "--data-dir", str(data_dir), "--epochs", "1", "--batch-size", "32",
            "--device", "cpu", "--out", str(out), "--no-report", *extra]


@pytest.fixture(scope="module")
def finished_run(data_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "base"
    with pytest.MonkeyPatch.context() as mp, fakedata.one_thread():
        mp.setenv("ALEXNET_LAB_OFFLINE", "1")
        assert main(train_args(data_dir, out)) == 0
    return out


def copy_run(run: Path, dest: Path) -> Path:
    dest.mkdir()
    for name in ("checkpoint.pt", "predictions.csv", "config.json", "metrics.jsonl", "summary.json"):
        (dest / name).write_bytes((run / name).read_bytes())
    return dest


def err_line(capsys) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


# --- a run folder prepared by someone else -------------------------------------------------------------

def test_resume_with_the_run_files_linked_elsewhere_overwrites_nothing(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "shared")
    victims = {}
    for name in ("metrics.jsonl", "config.json"):
        victim = tmp_path / f"victim-{name}"
        victim.write_text("the user's own file\n")
        (run / name).unlink()
        (run / name).symlink_to(victim)
        victims[name] = victim
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 2
    assert "symbolic link" in err_line(capsys)
    for name, victim in victims.items():
        assert victim.read_text() == "the user's own file\n"
        assert (run / name).is_symlink()  # left as found: neither followed nor replaced


def test_a_linked_lock_file_is_refused_and_its_target_not_truncated(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "shared")
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (run / ".lock").symlink_to(victim)
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 2
    assert "is not alexnet-lab's lock file" in err_line(capsys)
    assert victim.read_text() == "precious\n" and (run / ".lock").is_symlink()


def test_a_users_own_lock_file_in_a_non_empty_folder_is_refused_and_kept(data_dir, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / ".lock").write_text("my notes about locks\n")
    (out / "notes.txt").write_text("mine\n")
    assert main(train_args(data_dir, out)) == 2
    assert "is not alexnet-lab's lock file" in err_line(capsys)
    assert (out / ".lock").read_text() == "my notes about locks\n"
    assert sorted(p.name for p in out.iterdir()) == [".lock", "notes.txt"]


def test_a_report_link_planted_in_a_shared_run_creates_no_file(finished_run, tmp_path, capsys):
    """The .pth attack: report.html linked to a not-yet-existing file in the user's site-packages."""
    run = copy_run(finished_run, tmp_path / "shared")
    site = tmp_path / "site-packages"
    site.mkdir()
    (run / "report.html").symlink_to(site / "evil.pth")
    assert main(["report", str(run), "--device", "cpu"]) == 2
    assert "symbolic link" in err_line(capsys)
    assert list(site.iterdir()) == []


def test_a_new_run_writes_files_readable_by_the_group_as_the_umask_says(data_dir, tmp_path):
    old = os.umask(0o002)
    try:
        assert main(train_args(data_dir, tmp_path / "r")) == 0
    finally:
        os.umask(old)
    for name in ("checkpoint.pt", "predictions.csv", "config.json", "metrics.jsonl", "summary.json"):
        assert os.stat(tmp_path / "r" / name).st_mode & 0o777 == 0o664, name


# --- outputs never clobber a run -----------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_export_over_its_own_checkpoint_is_refused_even_with_force(finished_run, tmp_path, capsys, fmt):
    run = copy_run(finished_run, tmp_path / "b")
    before = (run / "checkpoint.pt").read_bytes()
    for extra in ([], ["--force"]):
        assert main(["export", "--checkpoint", str(run / "checkpoint.pt"), "--format", fmt,
                     "--out", str(run / "checkpoint.pt"), *extra]) == 2
        assert "is the file this command reads" in err_line(capsys)
    assert (run / "checkpoint.pt").read_bytes() == before
    load_checkpoint(run / "checkpoint.pt")


def test_export_onto_another_run_file_is_refused_even_with_force(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "b")
    before = (run / "checkpoint.pt").read_bytes()
    for extra in ([], ["--force"]):
        assert main(["export", "--checkpoint", str(run / "checkpoint.pt"), "--out", str(run / "summary.json"),
                     *extra]) == 2
        assert "never replaces a run's files, not even with --force" in err_line(capsys)
    assert (run / "checkpoint.pt").read_bytes() == before
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.pt", "config.json", "metrics.jsonl",
                                                     "predictions.csv", "summary.json"]


def test_report_never_lands_on_a_run_file(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "b")
    for name in ("checkpoint.pt", "config.json", "metrics.jsonl"):
        before = (run / name).read_bytes()
        assert main(["report", str(run), "--out", str(run / name), "--force", "--device", "cpu"]) == 2
        assert "is the file this command reads" in err_line(capsys)
        assert (run / name).read_bytes() == before


def test_report_replaces_its_own_page_but_not_another_file(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "b")
    assert main(["report", str(run), "--device", "cpu"]) == 0
    assert main(["report", str(run), "--device", "cpu"]) == 0  # its own earlier page: replaced
    page = tmp_path / "notes.html"
    page.write_text("<p>my notes</p>")
    assert main(["report", str(run), "--out", str(page), "--device", "cpu"]) == 2
    assert "--force" in err_line(capsys)
    assert page.read_text() == "<p>my notes</p>"
    assert main(["report", str(run), "--out", str(page), "--force", "--device", "cpu"]) == 0
    assert "alexnet-lab report" in page.read_text()


def test_report_out_a_folder_or_under_a_file_is_refused_without_leftovers(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "b")
    folder = tmp_path / "folder"
    folder.mkdir()
    assert main(["report", str(run), "--out", str(folder), "--device", "cpu"]) == 2
    assert "is a folder" in err_line(capsys)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["report", str(run), "--out", str(blocker / "r.html"), "--device", "cpu"]) == 2
    assert "Not a directory. A folder on the way does not exist or is a file" in err_line(capsys)
    assert list(folder.iterdir()) == [] and not list(tmp_path.glob(".*.tmp"))


def test_report_and_export_accept_the_longest_legal_file_name(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "b")
    page = tmp_path / ("r" * 248 + ".html")  # 253 characters
    assert main(["report", str(run), "--out", str(page), "--device", "cpu"]) == 0
    model = tmp_path / ("m" * 248 + ".onnx")
    assert main(["export", "--checkpoint", str(run / "checkpoint.pt"), "--out", str(model), "--check-images", "2"]) == 0
    assert page.is_file() and model.is_file()
    assert sorted(p.name[0] for p in tmp_path.iterdir()) == ["b", "m", "r"]


def test_export_out_empty_names_the_flag(finished_run, capsys):
    assert main(["export", "--checkpoint", str(finished_run / "checkpoint.pt"), "--out", ""]) == 2
    assert "--out is empty" in err_line(capsys)


# --- an output folder that is a file ---------------------------------------------------------------------

@pytest.mark.usefixtures("offline_cli")
def test_out_pointing_at_a_file_is_a_clear_error(data_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(train_args(data_dir, run)) == 0
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    for argv in (["evaluate", "--checkpoint", str(run / "checkpoint.pt"), "--data-dir", str(data_dir), "--device", "cpu",
                  "--out", str(a_file)],
                 ["compare", str(run), "--out", str(a_file)],
                 ["profile", "--model", "lenet", "--batch-size", "2", "--plot", str(a_file / "p.png")]):
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = err_line(capsys)
        assert f"'{a_file}' as a folder: a file of that name exists. Choose a writable folder." in err, err


# --- only regular files, and never another run's ----------------------------------------------------------

def make_node(path: Path, kind: str) -> Path:
    """A FIFO, or a device node of our own making (the numbers of /dev/null; never the machine's own)."""
    if kind == "fifo":
        os.mkfifo(path)
        return path
    try:
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("making a device node needs root")
    return path


@pytest.mark.parametrize("kind, said", [("fifo", "a FIFO"), ("device", "a character device")])
def test_outputs_onto_a_device_or_a_fifo_are_refused_even_with_force_and_write_nothing(
        finished_run, tmp_path, capsys, kind, said):
    """`evaluate --predictions /dev/null --force`, the "discard it" idiom, replaced the machine's /dev/null."""
    run = copy_run(finished_run, tmp_path / "b")
    sink = make_node(tmp_path / "sink", kind)
    before = folder_state(tmp_path)
    for argv in (["evaluate", "--checkpoint", str(run / "checkpoint.pt"), "--device", "cpu", "--predictions", str(sink)],
                 ["report", str(run), "--device", "cpu", "--out", str(sink)],
                 ["export", "--checkpoint", str(run / "checkpoint.pt"), "--format", "onnx", "--out", str(sink)]):
        assert main([*argv, "--force"]) == 2, argv
        line = err_line(capsys)
        assert f"it is {said}" in line and "writes only regular files" in line, argv
    assert folder_state(tmp_path) == before  # the node as it was; no confusion.png, no temp file


def test_force_never_replaces_another_runs_files(finished_run, tmp_path, capsys):
    a, b = copy_run(finished_run, tmp_path / "a"), copy_run(finished_run, tmp_path / "b")
    before = folder_state(b)
    for argv in (["report", str(a), "--device", "cpu", "--out", str(b / "checkpoint.pt")],
                 ["evaluate", "--checkpoint", str(a / "checkpoint.pt"), "--device", "cpu", "--out", str(tmp_path),
                  "--predictions", str(b / "metrics.jsonl")],
                 ["evaluate", "--checkpoint", str(a / "checkpoint.pt"), "--device", "cpu", "--out", str(tmp_path),
                  "--predictions", str(b / "predictions.csv")],  # its format, but the run's own final test
                 ["export", "--checkpoint", str(a / "checkpoint.pt"), "--out", str(b / "config.json")]):
        assert main([*argv, "--force"]) == 2, argv
        assert "never replaces a run's files, not even with --force" in err_line(capsys), argv
    assert folder_state(b) == before


def test_evaluate_and_visualize_replace_their_own_figures_in_a_run_but_never_anyone_elses(finished_run, tmp_path,
                                                                                          capsys):
    run = copy_run(finished_run, tmp_path / "b")
    evaluate = ["evaluate", "--checkpoint", str(run / "checkpoint.pt"), "--device", "cpu"]
    visualize = ["visualize", "--checkpoint", str(run / "checkpoint.pt"), "--device", "cpu"]
    for argv in (evaluate, evaluate, visualize, visualize):  # the second time over their own earlier output
        assert main(argv) == 0, argv
    for argv, name in ((evaluate, "confusion.png"), (evaluate, "evaluation.json"), (visualize, "filters.png")):
        (run / name).write_bytes(b"someone's own file")
        before = folder_state(run)
        assert main([*argv, "--force"]) == 2, argv
        assert f"'{run / name}' is a file in the run folder" in err_line(capsys)
        assert folder_state(run) == before  # refused before any file was written
        (run / name).unlink()
    elsewhere = tmp_path / "elsewhere"  # not a run folder: an existing file of that name needs --force
    elsewhere.mkdir()
    (elsewhere / "confusion.png").write_bytes(b"mine")
    assert main([*evaluate, "--out", str(elsewhere)]) == 2
    assert "already exists" in err_line(capsys) and (elsewhere / "confusion.png").read_bytes() == b"mine"
    assert main([*evaluate, "--out", str(elsewhere), "--force"]) == 0
    assert (elsewhere / "confusion.png").read_bytes().startswith(b"\x89PNG")
