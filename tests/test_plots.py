"""reports/plots.py: figures legible at the size the report shows them."""

from __future__ import annotations

import numpy as np
import pytest

import alexnet_lab.reports.plots as plots

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
