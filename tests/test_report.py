"""The run report (report.html), `visualize`, the analysis behind both, and logs for redirected output."""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import re
import shutil
import subprocess
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet_lab.analysis.features import (conv_layers, feature_maps, first_layer_filters, prediction_summary,
                                           strongest_channels)
from alexnet_lab.cli import main
from alexnet_lab.cli.progress import ConsoleReporter, log_line, progress_mode
from alexnet_lab.engine.config import make_config
from alexnet_lab.models import build_model
from alexnet_lab.reports.report import build_report

# The chapter's printout: the output shape of each of AlexNet's five convolutions at 224x224.
CHAPTER_CONV_SHAPES = [(96, 54, 54), (256, 26, 26), (384, 12, 12), (384, 12, 12), (256, 12, 12)]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One finished LeNet run on synthetic data (shared by the report tests; they copy it to change it)."""
    import fakedata

    root = tmp_path_factory.mktemp("report")
    data = fakedata.make_dataset(root / "fmnist", n_train=64, n_test=40)
    out = root / "run"
    with fakedata.one_thread():
        assert main(["train", "--model", "lenet", "--epochs", "2", "--batch-size", "16", "--lr", "0.9",
                     "--data-dir", str(data), "--out", str(out), "--progress", "none"]) == 0
    return out, data


def images_of(page: str) -> list[Image.Image]:
    """Every embedded PNG of the page, decoded (SVGs are checked for their root element instead)."""
    pngs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    return [Image.open(io.BytesIO(base64.b64decode(b))) for b in pngs]


def test_train_writes_a_self_contained_report_and_names_it_last(tiny_run, capsys):
    out, _ = tiny_run
    page = (out / "report.html").read_text()
    assert not re.search(r'(src|href)="(https?:)?//', page), "the page must not fetch anything"
    for section in ("Results", "Training curves", "Recipe and environment", "Most confused pairs",
                    "Misclassified test images", "First-layer filters", "Feature maps"):
        assert f"<h3>{section}</h3>" in page, section
    pngs = images_of(page)
    assert len(pngs) == 5 and all(im.size[0] > 100 and im.size[1] > 50 for im in pngs)
    svgs = re.findall(r'src="data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(svgs) == 1 and b"<svg" in base64.b64decode(svgs[0])
    summary = json.loads((out / "summary.json").read_text())
    assert f"{summary['test_acc']:.3f}" in page and "Finished: 8 steps, 2.00 epoch(s)." in page
    # The report's test accuracy is the run's final test (predictions.csv), not a test of its own.
    assert f"<b>{summary['test_acc']:.4f}</b>" in page and "predictions.csv" in page
    assert "the book" not in page  # LeNet: the book printed no numbers to set beside
    assert f"<td>torch_threads</td><td>{json.loads((out / 'config.json').read_text())['resolved']['environment']['torch_threads']}" in page


def test_report_of_an_interrupted_run_says_what_is_missing(tiny_run, tmp_path):
    out, data = tiny_run
    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.json", "metrics.jsonl", "checkpoint.pt"):
        (run / name).write_bytes((out / name).read_bytes())
    page = build_report([run], device="cpu", data_dir=str(data)).read_text()
    assert "Unfinished (interrupted, or still running): 8 of 8 steps logged." in page
    assert f"alexnet-lab train --resume {run}" in page and "First-layer filters" in page
    (run / "checkpoint.pt").unlink()
    (run / "metrics.jsonl").write_text("")
    page = build_report([run], device="cpu", data_dir=str(data)).read_text()
    assert "No checkpoint yet" in page and "cannot be resumed" in page and "no curves" in page
    assert "Trained on the first 64 of the 60,000 training images" in page


def test_report_without_the_data_still_shows_the_filters(tiny_run, tmp_path, monkeypatch):
    out, _ = tiny_run
    monkeypatch.setenv("ALEXNET_LAB_OFFLINE", "1")  # an empty --data-dir, and no download
    page = build_report([out], tmp_path / "r.html", device="cpu", data_dir=str(tmp_path / "nothing")).read_text()
    assert "The test images could not be loaded" in page and "First-layer filters" in page
    assert "Misclassified test images" not in page


def test_d2l_report_sets_the_books_numbers_beside_the_run(tmp_path):
    run = tmp_path / "d2l"
    run.mkdir()
    config = {**make_config("d2l", limit_train=512).to_dict(),
              "resolved": {"device": "cuda:0", "total_steps": 4690, "train_examples": 512, "start_step": 90}}
    (run / "config.json").write_text(json.dumps(config))
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": 0.2, "step": 94, "examples": 12032,
                                                   "train_loss": 2.30, "train_acc": 0.1}) + "\n")
    page = build_report([run], device="cpu").read_text()
    rows = dict(re.findall(r"<tr><td>([a-z/ ]+)</td><td class=\"num\">[^<]*</td><td class=\"num\">([^<]*)</td>",
                           page))
    assert rows["train loss"] == "0.331" and rows["train acc"] == "0.878" and rows["test acc"] == "0.883"
    assert rows["examples/sec"] == "3,941.8" and "V100" in page
    assert "94 of 4,690 steps logged" in page and "Resumed at step 90" in page
    assert "Trained on the first 512 of the 60,000 training images (--limit-train 512)." in page


def test_report_compares_several_runs(tiny_run, tmp_path):
    out, data = tiny_run
    path = build_report([out, out], tmp_path / "both.html", device="cpu", data_dir=str(data))
    page = path.read_text()
    assert "<h2>Comparison</h2>" in page and page.count("<h2>run</h2>") == 2


def test_no_report_flag_and_report_command(tiny_run, tmp_path, capsys):
    out, data = tiny_run
    run = tmp_path / "quiet"
    assert main(["train", "--model", "lenet", "--epochs", "0.5", "--batch-size", "16", "--data-dir", str(data),
                 "--out", str(run), "--no-report", "--progress", "none"]) == 0
    assert not (run / "report.html").exists() and "Report:" not in capsys.readouterr().out
    assert main(["report", str(run), "--data-dir", str(data), "--device", "cpu"]) == 0
    assert capsys.readouterr().out.strip() == f"Report: {run / 'report.html'}"
    assert (run / "report.html").stat().st_size > 10_000


def test_visualize_writes_filters_and_feature_maps(tiny_run, tmp_path, capsys):
    out, data = tiny_run
    assert main(["visualize", "--checkpoint", str(out / "checkpoint.pt"), "--data-dir", str(data),
                 "--out", str(tmp_path), "--device", "cpu", "--maps", "4"]) == 0
    printed = capsys.readouterr().out
    assert "First-layer filters (6 of 5x5)" in printed and "6x28x28, 16x10x10" in printed
    assert "4 strongest channels per convolution" in printed
    for name in ("filters.png", "feature_maps.png"):
        with Image.open(tmp_path / name) as im:
            assert im.size[0] > 200 and np.asarray(im.convert("L")).std() > 10
    Image.fromarray(np.full((40, 30), 200, np.uint8)).save(tmp_path / "photo.png")
    assert main(["visualize", "--checkpoint", str(out / "checkpoint.pt"), "--image", str(tmp_path / "photo.png"),
                 "--out", str(tmp_path / "own"), "--device", "cpu"]) == 0
    assert "Feature maps of photo.png" in capsys.readouterr().out


def test_alexnet_filters_and_feature_maps_have_the_chapters_shapes():
    torch.manual_seed(0)
    model = build_model("alexnet")
    filters = first_layer_filters(model)
    assert filters.shape == (96, 11, 11)
    assert torch.equal(filters, model[0].weight.detach()[:, 0])  # one input channel: the weights as they are
    image = torch.randint(0, 256, (28, 28), dtype=torch.uint8)
    x = torch.nn.functional.interpolate(image.float().div(255)[None, None], size=224, mode="bilinear")
    layers = feature_maps(model, x)
    assert [layer["shape"] for layer in layers] == CHAPTER_CONV_SHAPES
    assert [name for name, _ in conv_layers(model)] == ["0", "3", "6", "8", "10"]
    # The first map is the convolution itself: recompute it independently with F.conv2d.
    expected = torch.nn.functional.conv2d(x, model[0].weight, model[0].bias, stride=4, padding=1)[0]
    assert torch.allclose(layers[0]["maps"], expected, atol=1e-5)
    assert model.training  # feature_maps ran in eval mode and put the mode back
    maps = torch.zeros(4, 2, 2)
    maps[2] += 3
    maps[0] += 1
    maps[1] -= 5
    assert strongest_channels(maps, 2) == [2, 0]


def test_colour_filters_and_images_are_drawn_in_colour(tmp_path):
    from alexnet_lab.reports.plots import as_display, plot_filters

    model = build_model("lenet", in_channels=3)
    filters = first_layer_filters(model)
    assert filters.shape == (6, 5, 5, 3)
    assert torch.equal(filters[2, :, :, 1], model[0].weight.detach()[2, 1])  # (K, k, k, RGB)
    plot_filters(filters.numpy(), [tmp_path / "f.png"])
    with Image.open(tmp_path / "f.png") as im:
        rgb = np.asarray(im.convert("RGB")).astype(int)
    assert (np.abs(rgb[..., 0] - rgb[..., 1]) > 30).any()  # not grey
    assert as_display(torch.full((3, 4, 5), 255, dtype=torch.uint8)).shape == (4, 5, 3)
    assert as_display(torch.zeros(1, 4, 5)).shape == (4, 5) and as_display(np.zeros((4, 5), np.uint8)).max() == 0


def test_prediction_summary_counts_by_hand():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    predicted, confidence = torch.tensor([0, 1, 1, 0, 2, 1]), torch.tensor([.9, .7, .8, .6, .6, .9])
    result = prediction_summary(labels, predicted, confidence, 3)
    assert result["confusion"].tolist() == [[1, 1, 0], [1, 1, 0], [0, 1, 1]]
    assert result["accuracy"] == pytest.approx(3 / 6) and result["per_class_acc"] == [0.5, 0.5, 0.5]
    assert result["mistakes"] == [5, 1, 3]  # by confidence: 0.9, 0.7, 0.6
    assert sorted(result["confused_pairs"]) == [(0, 1, 1), (1, 0, 1), (2, 1, 1)]


def test_progress_is_plain_lines_when_redirected():
    stream = io.StringIO()
    assert progress_mode("auto", stream) == "log" and progress_mode("bar", stream) == "bar"
    reporter = ConsoleReporter(make_config("d2l", model="lenet", epochs=2, batch_size=10), stream=stream)
    reporter.on_train_start({"input_size": 28, "params": 1, "device": "cpu", "precision": "fp32",
                             "train_examples": 100, "test_examples": 10, "total_steps": 20, "start_step": 0,
                             "start_examples": 0, "data_source": "x"})
    for step in range(1, 5):
        reporter.on_step(step)
    reporter.on_log({"epoch": 0.4, "step": 4, "examples": 40, "train_loss": 1.5, "train_acc": 0.25})
    reporter.on_log({"epoch": 1.0, "step": 10, "examples": 100, "train_loss": 1.0, "train_acc": 0.5,
                     "test_acc": 0.6})
    reporter.close()
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue() and len(lines) == 5
    assert lines[2].startswith("Note: this run takes only 20 optimizer steps")  # under 100 steps: said once
    assert re.fullmatch(r"epoch 0\.40/2  step 4/20  loss 1\.5000  train acc 0\.2500  [\d,.]+ examples/s  ETA \S+",
                        lines[3])
    assert "test acc 0.6000" in lines[4]
    assert log_line({"epoch": 1, "step": 5, "train_loss": 1, "train_acc": 1}, 10, 2, 12.0, 3725).endswith(
        "12.0 examples/s  ETA 1h02m")


def test_one_epoch_animator_raises_no_warning(tmp_path, monkeypatch):
    from alexnet_lab import d2l

    monkeypatch.setenv("ALEXNET_LAB_D2L_FIGURE", str(tmp_path / "fig.svg"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib's identical-xlim warning would fail here
        animator = d2l.Animator(xlabel="epoch", xlim=[1, 1], legend=["train loss", "train acc", "test acc"])
        animator.add(0.5, (2.0, 0.3, None))
        animator.add(1, (None, None, 0.4))
    assert animator.axes[0].get_xlim() == (0, 1) and (tmp_path / "fig.svg").stat().st_size > 1000


def test_bench_keeps_the_books_workers_and_says_so_once(tiny_run, monkeypatch, capsys, recwarn):
    _, data = tiny_run
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0}, raising=False)  # a 1-CPU machine
    assert main(["bench", "--model", "lenet", "--batch-size", "8", "--warmup", "0", "--steps", "1",
                 "--repeats", "1", "--workers", "2", "--peak-size", "32", "--device", "cpu",
                 "--pipelines", "reference", "--data-dir", str(data)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("runs 2 DataLoader worker processes on this machine's 1 CPUs, on purpose") == 1
    assert not [w for w in recwarn if "DataLoader will create" in str(w.message)]


# --- the report in a real browser ------------------------------------------------------------------

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)),
                None)
# Reads back, after the page loaded, the decoded width of every image (0 = it did not decode).
PROBE = ("<script>window.addEventListener('load', () => document.body.setAttribute('data-image-widths', "
         "Array.from(document.images, i => i.complete ? i.naturalWidth : 0).join(',')));</script>")


def chromium(*args: str, user_dir) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", f"--user-data-dir={user_dir}"]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120)


@pytest.fixture
def browser():
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is missing in CI: 'make setup' (as root) installs Debian's chromium")
        pytest.skip("Chromium is not installed: 'make setup' as root installs Debian's chromium "
                    "(apt-get install chromium); without it the report's browser test cannot run")
    return CHROMIUM


def test_report_renders_in_headless_chromium(browser, tiny_run, tmp_path):
    out, _ = tiny_run
    page = (out / "report.html").read_text()
    probed = tmp_path / "probed.html"
    probed.write_text(page.replace("</body>", PROBE + "</body>"))
    dom = chromium("--virtual-time-budget=10000", "--dump-dom", probed.as_uri(), user_dir=tmp_path / "u1")
    match = re.search(r'data-image-widths="([\d,]*)"', dom.stdout)
    assert match, f"the probe did not run; chromium said: {dom.stderr[-2000:]}"
    widths = [int(w) for w in match.group(1).split(",")]
    assert len(widths) == page.count("<img ") == 6 and all(w > 100 for w in widths), widths

    shot = tmp_path / "shot.png"
    result = chromium(f"--screenshot={shot}", "--window-size=1100,1800", "--hide-scrollbars",
                      (out / "report.html").as_uri(), user_dir=tmp_path / "u2")
    assert shot.is_file(), result.stderr[-2000:]
    with Image.open(shot) as im:
        assert im.size == (1100, 1800)
        pixels = np.asarray(im.convert("RGB"))
    assert pixels.std() > 20 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100  # not blank


def test_a_failing_report_does_not_fail_the_finished_run(tiny_run, tmp_path, monkeypatch, capsys):
    _, data = tiny_run

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr("alexnet_lab.cli.running.build_report", broken)
    run = tmp_path / "run"
    assert main(["train", "--model", "lenet", "--epochs", "0.5", "--batch-size", "16", "--data-dir", str(data),
                 "--out", str(run), "--progress", "none"]) == 0
    assert (run / "summary.json").is_file()
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"Report not written (RuntimeError: CUDA out of memory); try: alexnet-lab report {run}")


def test_report_of_an_image_folder_run_uses_its_classes_and_colours(tmp_path):
    rng = np.random.default_rng(0)
    for name, colour in (("red", (200, 30, 30)), ("blue", (30, 30, 200))):
        (tmp_path / "images" / name).mkdir(parents=True)
        for i in range(12):
            pixels = (np.array(colour) + rng.integers(0, 50, (32, 32, 3))).clip(0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / "images" / name / f"{i}.png")
    run = tmp_path / "run"
    assert main(["train", "--model", "lenet", "--data", f"imagefolder:{tmp_path / 'images'}", "--channels", "3",
                 "--epochs", "1", "--batch-size", "8", "--out", str(run), "--progress", "none"]) == 0
    page = (run / "report.html").read_text()
    assert "<td>red</td>" in page and "<td>blue</td>" in page and "ankle boot" not in page
    assert "60,000" not in page and f"Data imagefolder:{tmp_path / 'images'}:" in page
    encoded = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)" alt="first-layer filters"', page).group(1)
    rgb = np.asarray(Image.open(io.BytesIO(base64.b64decode(encoded))).convert("RGB")).astype(int)
    assert (np.abs(rgb[..., 0] - rgb[..., 2]) > 30).any()  # the 3-channel filters are drawn in colour


# --- names are bytes too --------------------------------------------------------------------------------

def write_named_images(root, classes=(b"a", b"c\xfe", b"=cmd"), per_class=6) -> list[bytes]:
    """Random 8x8 PNGs in root/<class>/, class folders and one file a class named by raw bytes (not UTF-8,
    a line break in a file name); returns the odd file names' paths."""
    rng = np.random.default_rng(0)
    odd = []
    for name in classes:
        folder = os.path.join(os.fsencode(root), name)
        os.makedirs(folder)
        for i in range(per_class):
            path = os.path.join(folder, b"x\nb\xff.png" if i == 0 else b"%d.png" % i)
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(os.fsdecode(path))
            odd += [path] if i == 0 else []
    return odd


@pytest.mark.usefixtures("offline_cli")
def test_names_that_are_not_utf8_are_shown_escaped_by_train_report_evaluate_and_predict(tmp_path, capsys):
    """A class folder named b'c\\xfe' crashed the report in matplotlib (no report.html) and evaluate."""
    odd = write_named_images(tmp_path / "images")
    run = tmp_path / "run"
    assert main(["train", "--model", "lenet", "--data", f"imagefolder:{tmp_path / 'images'}", "--epochs", "1",
                 "--batch-size", "4", "--val-fraction", "0.34", "--device", "cpu", "--progress", "none",
                 "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "Report:" in out and "not written" not in out  # neither the report nor TensorBoard's images
    page = (run / "report.html").read_text(encoding="utf-8")
    assert "<td>c\\xfe</td>" in page and "<td>=cmd</td>" in page

    predictions = tmp_path / "predictions.csv"
    assert main(["evaluate", "--checkpoint", str(run / "checkpoint.pt"), "--device", "cpu",
                 "--predictions", str(predictions)]) == 0
    assert re.search(r"^c\\xfe +\d", capsys.readouterr().out, re.MULTILINE)  # the per-class table
    assert set(json.loads((run / "evaluation.json").read_text())["per_class_acc"]) == {"a", "c\\xfe", "=cmd"}
    with predictions.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert {row["true"] for row in rows} == {"a", "c\\xfe", "'=cmd"}  # escaped; a formula-like cell quoted
    assert all(row["path"].startswith(("a/", "c\\xfe/", "'=cmd/")) and float(row["confidence"]) > 0 for row in rows)

    assert main(["predict", "--checkpoint", str(run / "checkpoint.pt"), "--device", "cpu", os.fsdecode(odd[1])]) == 0
    line = capsys.readouterr().out.strip()
    assert "\n" not in line and line.startswith(f"{tmp_path / 'images'}/c\\xfe/x\\nb\\xff.png: ")
    assert main(["predict", "--json", "--checkpoint", str(run / "checkpoint.pt"), "--device", "cpu", os.fsdecode(odd[2])]) == 0
    shown = json.loads(capsys.readouterr().out)["predictions"][0]
    assert shown["image"].endswith("/=cmd/x\\nb\\xff.png")
    assert {guess["class"] for guess in shown["top"]} == {"a", "c\\xfe", "=cmd"}


def test_figures_show_undecodable_bytes_in_titles_and_legends_escaped(tmp_path):
    """Every text of a figure, not only the class names: a run folder's name in a comparison's legend."""
    from alexnet_lab.reports.plots import plot_comparison, plot_image_grid

    rows = [{"epoch": 1, "train_loss": 1.0, "train_acc": 0.5, "test_acc": 0.4}]
    plot_comparison([("run-\udcfe", rows), ("b", rows)], [tmp_path / "c.svg"], title="runs in \udcfe\x1b")
    plot_image_grid([np.zeros((8, 8), np.uint8)], ["pred c\udcfe 50%\ntrue a"], [tmp_path / "g.svg"])
    legend = (tmp_path / "c.svg").read_text(encoding="utf-8")
    assert "run-\\xfe" in legend and "runs in \\xfe\\x1b" in legend
    assert "c\\xfe" in (tmp_path / "g.svg").read_text(encoding="utf-8")
