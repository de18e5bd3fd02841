import re

from alexnet_lab.cli import main
from conftest import chapter_text


def chapter_shape_lines() -> list[str]:
    """The 21 printed lines of the chapter, taken from the spec's indented output block."""
    lines = [line[4:] for line in chapter_text().splitlines() if re.match(r"^    \w+ output shape:\t", line)]
    assert len(lines) == 21
    return lines


def test_summary_matches_the_chapter_character_for_character(capsys):
    assert main(["summary", "--model", "alexnet"]) == 0
    assert capsys.readouterr().out.splitlines() == chapter_shape_lines()


def test_summary_probe_options(capsys):
    assert main(["summary", "--model", "alexnet", "--batch-size", "4", "--detail"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("Conv2d output shape:\t torch.Size([4, 96, 54, 54])")
    assert "46,764,746" in out[-1]
    assert main(["summary", "--model", "lenet", "--resize", "32"]) == 2  # 32 does not fit LeNet's fc


def test_summary_bad_size_names_the_sizes_that_work(capsys):
    assert main(["summary", "--model", "alexnet", "--resize", "100"]) == 2
    err = capsys.readouterr().err
    assert "smallest size that works is 193" in err and "Traceback" not in err


def test_summary_shows_the_shapes_adapted_to_the_data(capsys):
    assert main(["summary", "--model", "alexnet", "--channels", "3", "--num-classes", "7", "--detail"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("Conv2d output shape:\t torch.Size([1, 96, 54, 54])\tparams     34,944")  # 3*96*121+96
    assert out[-2].startswith("Linear output shape:\t torch.Size([1, 7])")
    assert main(["summary", "--model", "alexnet-2012"]) == 0  # its own 3 channels and 1000 classes
    out = capsys.readouterr().out.splitlines()
    assert out[2] == "LocalResponseNorm output shape:\t torch.Size([1, 96, 55, 55])"
    assert out[-1] == "Linear output shape:\t torch.Size([1, 1000])"
