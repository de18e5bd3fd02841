"""reports/plots.py: figures legible at the size the report shows them, and written atomically (a full
disk leaves no torn figure)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import alexnet_lab.reports.plots as plots
from alexnet_lab.cli import main
from runhelpers import recipe_args

CSS_PX_PER_IN = 96  # a browser's inch


@pytest.fixture
def captured(monkeypatch):
    """The figures a plot function makes, instead of files."""
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, paths, suptitle="": (fig.tight_layout(), figures.append(fig)))
    return figures


def displayed_pt(font_pt: float, fig, display_px: float) -> float:
    """A font's size as it appears when the figure is drawn `display_px` CSS pixels wide."""
    return font_pt * display_px / (fig.get_figwidth() * CSS_PX_PER_IN)


def test_confusion_counts_read_at_9_pt_or_more_as_the_report_shows_them(captured, tmp_path):
    names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
             "Ankle boot"]
    counts = np.random.default_rng(0).integers(0, 1000, size=(10, 10))
    plots.plot_confusion(counts, names, tmp_path / "c.png")
    (fig,) = captured
    ax = fig.axes[0]
    cells = [t for t in ax.texts if t.get_text().isdigit()]
    assert len(cells) == 100
    assert min(displayed_pt(t.get_fontsize(), fig, plots.CONFUSION_DISPLAY_PX) for t in cells) >= 9
    assert fig.axes[1].get_ylabel()  # the colour bar says what its colour means


def test_the_report_shows_the_confusion_matrix_at_the_width_the_fonts_assume():
    from importlib import resources

    template = resources.files("alexnet_lab.reports").joinpath("report.html.j2").read_text()
    assert f'alt="confusion matrix" width="{plots.CONFUSION_DISPLAY_PX}"' in template


def test_mistake_captions_read_at_7_pt_or_more_in_the_report(captured, tmp_path):
    images = [np.full((28, 28), 128, dtype=np.uint8)] * 16
    plots.plot_image_grid(images, ["pred shirt 97%\ntrue t-shirt"] * 16, [tmp_path / "g.png"], ncols=8)
    (fig,) = captured
    captions = [t for t in fig.axes[0].texts if "pred" in t.get_text()]
    assert len(captions) == 16
    assert min(displayed_pt(t.get_fontsize(), fig, 860) for t in captions) >= 7  # shown 860 px wide


@pytest.mark.usefixtures("offline_cli")
def test_full_disk_while_plotting(data_dir_512, tmp_path, monkeypatch, capsys):
    """matplotlib meets a full disk halfway through curves.svg: the message names the file, and no
    torn figure or temp file is left (figures are written atomically too)."""
    import matplotlib.figure

    import alexnet_lab.cli.running as cli_train

    def half_then_full(self, target, **kwargs):
        data = b"<svg partial"
        if hasattr(target, "write"):
            target.write(data)
        else:
            Path(target).write_bytes(data)
        raise OSError(28, "No space left on device")  # the kernel's error names no file

    monkeypatch.setattr(cli_train, "plot_curves", plots.plot_curves)  # undo offline_cli's stub
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", half_then_full)
    out = tmp_path / "r"
    assert main(recipe_args(data_dir_512, out)) == 2
    err = capsys.readouterr().err
    assert f"error: Cannot write '{out / 'curves.svg'}': No space left on device. Free disk space" in err
    assert "Traceback" not in err
    assert not (out / "curves.svg").exists() and not list(out.glob(".*.tmp"))
