"""The chapter as a notebook (notebooks/alexnet.ipynb), executed on a real Jupyter kernel by nbclient at
a tiny size: the chapter's shape lines and closing lines, the Animator's SVG, the CLI/API cells."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import chapter_text
from test_d2l import chapter_blocks

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "alexnet.ipynb"


def outputs_of(cell) -> tuple[str, list[dict]]:
    """(stdout text, display data bundles) of one executed cell."""
    stdout = "".join(o.text for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")
    shown = [o.data for o in cell.outputs if o.output_type in ("display_data", "execute_result")]
    return stdout, shown


def code_cell(nb, marker: str):
    matches = [c for c in nb.cells if c.cell_type == "code" and marker in c.source]
    assert len(matches) == 1, marker
    return matches[0]


@pytest.mark.slow  # the chapter's AlexNet on 64 real images, in a Jupyter kernel
def test_notebook_runs_the_chapter_on_a_real_kernel(tmp_path, real_data, monkeypatch):
    for key, value in {"ALEXNET_LAB_D2L_LIMIT": "64", "ALEXNET_LAB_D2L_EPOCHS": "1", "OMP_NUM_THREADS": "1",
                       "ALEXNET_LAB_OFFLINE": "1", "ALEXNET_LAB_DATA": str(real_data)}.items():
        monkeypatch.setenv(key, value)  # the kernel inherits them
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert "from alexnet_lab import d2l" in code_cell(nb, "nn.Sequential(").source
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()  # raises on any cell error

    blocks = chapter_blocks(chapter_text())
    shapes = [line for _, outs in blocks for line in outs if "output shape" in line]
    book_final = [line for _, outs in blocks for line in outs if "output shape" not in line]
    assert len(shapes) == 21 and len(book_final) == 2
    assert outputs_of(code_cell(nb, "for layer in net:"))[0].splitlines() == shapes
    assert outputs_of(code_cell(nb, '"summary", "--model", "alexnet"'))[0].splitlines() == shapes

    printed, shown = outputs_of(code_cell(nb, "d2l.train_ch6("))
    lines = printed.splitlines()[-2:]
    for book_line, line in zip(book_final, lines):
        pattern = re.sub(r"\d+", r"\\d+", re.escape(book_line)).replace(r"cuda:\d+", "(cpu|cuda:\\d+)")
        assert re.fullmatch(pattern, line), (book_line, line)
    assert any("<svg" in d.get("image/svg+xml", "") for d in shown), "the Animator's figure is missing"

    printed, shown = outputs_of(code_cell(nb, "LiveCurves(config.epochs)"))
    assert re.search(r"loss \d\.\d{3}, train acc \d\.\d{3}, test acc \d\.\d{3}\n[\d.]+ examples/sec on", printed)
    assert any("image/svg+xml" in d for d in shown)
    printed, shown = outputs_of(code_cell(nb, 'main(["report"'))
    report = re.search(r"Report: (\S+)", printed).group(1)
    assert (tmp_path / report).stat().st_size > 10_000
    assert sum("image/png" in d for d in shown) == 2  # filters and feature maps
