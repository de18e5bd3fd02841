"""engine/trainer.py: the training loop's own promises (tiny synthetic data, CPU, one thread)."""

from __future__ import annotations

import pytest

import fakedata
from alexnet_lab.engine import fit, make_config
from alexnet_lab.engine.config import MIN_CURVE_POINTS
from alexnet_lab.engine.estimate import evaluations


class Rows:
    def __init__(self):
        self.rows = []

    def __getattr__(self, hook):  # every other callback hook does nothing
        return lambda *args: None

    def on_log(self, row):
        self.rows.append(row)


@pytest.mark.parametrize("epochs, points_per_epoch", [(0.55, 1), (2, 1), (1, 5)])
def test_any_run_draws_at_least_20_curve_points(tmp_path, monkeypatch, epochs, points_per_epoch):
    """A 0.55-epoch speedrun logging once per epoch used to draw three lone dots."""
    monkeypatch.setenv("ALEXNET_LAB_OFFLINE", "1")
    data = fakedata.make_dataset(tmp_path / "data", n_train=1024, n_test=32)  # 64 steps an epoch at batch 16
    config = make_config("speedrun", model="lenet", data_dir=str(data), epochs=epochs, batch_size=16,
                         log_points_per_epoch=points_per_epoch, device="cpu", precision="fp32",
                         channels_last=False)
    rows = Rows()
    with fakedata.one_thread():
        summary = fit(config, [rows])
    steps = [row["step"] for row in rows.rows]
    assert len(steps) >= MIN_CURVE_POINTS and steps == sorted(set(steps)) and steps[-1] == summary["steps"]
    assert sum(row.get("test_acc") is not None for row in rows.rows) == evaluations(config, 1024)


def test_the_step_refuses_uint8_images_saying_how_to_convert_them():
    import torch

    from alexnet_lab.engine import build_training_step
    from alexnet_lab.errors import UserError

    step = build_training_step(make_config("speedrun", model="lenet", device="cpu", precision="fp32",
                                           channels_last=False))
    images = torch.zeros(4, 1, 28, 28, dtype=torch.uint8)
    with pytest.raises(UserError, match="to_float_batch"):
        step(images, torch.zeros(4, dtype=torch.int64))
    loss, correct = step(images.float(), torch.zeros(4, dtype=torch.int64))
    assert loss.dtype.is_floating_point and int(correct) >= 0
