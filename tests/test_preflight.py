"""engine/preflight.py: the memory a run needs, estimated from the model's layers before anything is
allocated, and a run that cannot fit refused with advice.

Tiny synthetic IDX files (tests/fakedata.py), CPU only, offline.
"""

from __future__ import annotations

import pytest

from alexnet_lab.cli import main
from runhelpers import last_line, train_args


def test_activation_estimate_matches_a_hand_count():
    from alexnet_lab.engine.preflight import training_bytes

    # LeNet at 28x28, per image, every layer's output (independent count from the architecture):
    # conv 6x28x28, sigmoid, avgpool 6x14x14, conv 16x10x10, sigmoid, avgpool 16x5x5, flatten 400,
    # linear 120, sigmoid, linear 84, sigmoid, linear 10; plus the 28x28 input.
    per_image = 784 + 2 * 4704 + 1176 + 2 * 1600 + 400 + 400 + 2 * 120 + 2 * 84 + 10
    params = 61_706
    got = training_bytes("lenet", 28, batch=8)
    assert got["activations"] == 8 * per_image * 4
    assert got["state"] == params * 4 * 3
    assert training_bytes("lenet", 28, batch=8, precision="bf16")["activations"] == 8 * per_image * 2


@pytest.mark.usefixtures("offline_cli")
def test_a_run_too_big_for_memory_is_refused_before_allocating(data_dir, tmp_path, monkeypatch, capsys):
    import alexnet_lab.engine.preflight as preflight

    # A machine with 16 MiB free (small sizes, so that a regression trains quickly instead of
    # exhausting this machine's memory, as fmnist-net at --resize 2048 would).
    monkeypatch.setattr(preflight, "available_bytes", lambda device: 16 * 2**20)
    out = tmp_path / "r"
    args = train_args(data_dir, out, "--resize", "64")
    args[args.index("lenet")] = "fmnist-net"
    assert main(args) == 2
    err = last_line(capsys)
    assert "Training fmnist-net at 64x64 with batch 32 needs about" in err
    assert "but only 16.0 MiB is available. Use a smaller --resize or --batch-size." in err
    assert not out.exists()
