"""The speed ladder's pieces: EMA of weights, test-time augmentation, `record`'s statistics."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from alexnet_lab import UserError
from alexnet_lab.analysis.machine import cpu_model_and_flags
from alexnet_lab.analysis.record import run_record, statistics_of, target_of
from alexnet_lab.cli import main
from alexnet_lab.engine.config import RECORD_TARGETS, make_config
from alexnet_lab.engine.ema import WeightEMA
from alexnet_lab.engine.builders import Splits, splits_for
from alexnet_lab.engine.trainer import evaluate, fit
from alexnet_lab.engine.tta import shift, tta_logits, views


def test_ema_follows_the_closed_form():
    """After k updates towards a fixed target, ema = target + prod(decay_t) * (start - target)."""
    live = nn.Linear(3, 2)
    ema = WeightEMA(live, decay=0.9)
    start = ema.module.weight.detach().clone()
    with torch.no_grad():
        live.weight.fill_(1.0)
    keep = 1.0
    for t in range(30):
        keep *= min(0.9, (1 + t) / (10 + t))
        ema.update(live)
    expected = 1.0 + keep * (start - 1.0)
    torch.testing.assert_close(ema.module.weight, expected)
    assert ema.decay_at(0) == pytest.approx(0.1) and ema.decay_at(10_000) == 0.9


def test_ema_copies_frozen_parameters_instead_of_averaging_them():
    live = nn.Linear(3, 2)
    live.weight.requires_grad_(False)
    ema = WeightEMA(live, decay=0.9)
    with torch.no_grad():
        live.weight.fill_(2.0)  # set after the copy was made, as a whitening layer's filters are
        live.bias.fill_(2.0)
    ema.update(live)
    torch.testing.assert_close(ema.module.weight, live.weight)
    assert not torch.allclose(ema.module.bias, live.bias)  # trained: averaged


def test_ema_copies_buffers_and_leaves_live_model_alone():
    live = nn.BatchNorm1d(4)
    ema = WeightEMA(live, decay=0.5)
    live.train()(torch.randn(8, 4) * 3 + 2)  # moves running_mean
    before = [p.detach().clone() for p in live.parameters()]
    ema.update(live)
    torch.testing.assert_close(ema.module.running_mean, live.running_mean)
    for p, q in zip(before, live.parameters()):
        torch.testing.assert_close(p, q)
    assert not any(p.requires_grad for p in ema.module.parameters())
    with pytest.raises(ValueError):
        WeightEMA(live, decay=1.0)


def test_shift_moves_pixels_with_zero_fill():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    right_down = shift(x, 1, 1)
    assert right_down[0, 0, 1:, 1:].equal(x[0, 0, :-1, :-1])
    assert right_down[0, 0, 0].abs().sum() == 0 and right_down[0, 0, :, 0].abs().sum() == 0
    assert shift(shift(x, -1, -1), 1, 1)[0, 0, 1:, 1:].equal(x[0, 0, 1:, 1:])


def test_tta_weights_sum_to_one_and_keep_shapes():
    x = torch.rand(5, 1, 28, 28)
    for mode in ("none", "flip", "translate", "flip-translate"):
        vs = views(x, mode)
        assert sum(w for _, w in vs) == pytest.approx(1.0)
        assert all(v.shape == x.shape for v, _ in vs)
    model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))
    assert tta_logits(model, x, "flip-translate").shape == (5, 10)
    # A mirror-symmetric model gives the same logits with or without flip TTA.
    sym = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1, 10))
    torch.testing.assert_close(tta_logits(sym, x, "flip"), sym(x))


def test_tta_is_used_only_at_evaluation(tiny_data, one_thread):
    """Training with --tta flip is bit-identical to without (same weights); only evaluation differs."""
    base = make_config("speedrun", data_dir=str(tiny_data), device="cpu", epochs=1, batch_size=16,
                       precision="fp32", channels_last=False)
    calls = []

    class Spy(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            calls.append(self.inner.training)
            return self.inner(x)

    import alexnet_lab.engine.trainer as trainer
    real = trainer.tta_logits
    trainer.tta_logits = lambda model, x, mode: real(Spy(model), x, mode)
    try:
        fit(base.replace(tta="flip"))
    finally:
        trainer.tta_logits = real
    assert calls and not any(calls)  # every TTA forward ran with the model in eval mode
    splits = splits_for(base)
    runs = {mode: fit(base.replace(tta=mode), splits=splits) for mode in ("none", "flip")}
    assert runs["none"]["train_loss"] == runs["flip"]["train_loss"]  # training did not see TTA
    assert runs["none"]["train_acc"] == runs["flip"]["train_acc"]


def test_ema_run_evaluates_and_resumes_the_average(tmp_path, tiny_data, one_thread):
    """The checkpoint carries the EMA; evaluate() of it reproduces the run's test accuracy."""
    config = make_config("speedrun", data_dir=str(tiny_data), device="cpu", epochs=1, batch_size=16,
                         precision="fp32", channels_last=False, ema_decay=0.9, init="default")
    saved = []

    class Keep:
        def __getattr__(self, name):
            return lambda *a, **k: None

        def on_checkpoint(self, payload, is_best):
            saved.append(payload)

    summary = fit(config, [Keep()])
    payload = saved[-1]
    assert payload["ema_state"]["updates"] == summary["steps"]
    from alexnet_lab.engine.inference import evaluated_state
    from alexnet_lab.engine.builders import make_loaders
    from alexnet_lab.models import build_model
    model = build_model(config.model)
    model.load_state_dict(evaluated_state(payload))
    _, test_loader = make_loaders(config, splits_for(config), torch.device("cpu"))
    assert evaluate(model, test_loader, torch.device("cpu"))["accuracy"] == summary["test_acc"]


def test_record_statistics_on_a_fake_clock():
    """The fake trainer returns scripted times and accuracies; record's numbers follow from them."""
    script = {10_000: (0.1, 1.0), 0: (0.90, 2.0), 1: (0.88, 3.0), 2: (0.91, 4.0)}
    seen = []

    def fake_fit(config, splits=None):
        seen.append(config.seed)
        acc, wall = script[config.seed]
        return {"test_acc": acc, "wall_seconds": wall, "time_to_target_s": None}

    config = make_config("speedrun", device="cpu")
    fake_splits = Splits(torch.zeros(5, 28, 28, dtype=torch.uint8), torch.zeros(5, dtype=torch.int64),
                         torch.zeros(3, 28, 28, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64), "fake")
    result = run_record(config, 3, splits=fake_splits, train=fake_fit)
    assert seen == [10_000, 0, 1, 2]  # one warm-up first, then the seeds
    assert result["target"] == 0.883
    assert result["mean_acc"] == pytest.approx(0.8966666, abs=1e-6)
    assert result["min_acc"] == 0.88 and result["max_acc"] == 0.91
    assert result["reached"] == pytest.approx(2 / 3)
    assert [r["time_to_target_s"] for r in result["rows"]] == [2.0, None, 4.0]
    assert result["mean_time_s"] == pytest.approx(3.0) and result["max_time_s"] == 4.0
    assert statistics_of(result["rows"])["min_time_s"] == 2.0


def test_every_rung_is_a_preset():
    from alexnet_lab.engine.config import PRESETS
    assert set(RECORD_TARGETS) <= set(PRESETS)
    assert list(RECORD_TARGETS.values()) == sorted(RECORD_TARGETS.values())


def test_record_target_rules():
    assert target_of(make_config("speedrun")) == RECORD_TARGETS["speedrun"]
    assert target_of(make_config("best", target_accuracy=0.9)) == 0.9
    with pytest.raises(UserError, match="no record target"):
        target_of(make_config("best"))


def test_cpu_flags_parsed_from_cpuinfo():
    text = "model name\t: Some CPU 9000\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile amx_bf16\n"
    model, isa = cpu_model_and_flags(text)
    assert model == "Some CPU 9000" and isa == ["avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"]


@pytest.mark.slow
def test_record_command_end_to_end(real_data, capsys):
    code = main(["record", "--preset", "speedrun", "--seeds", "2", "--limit-train", "4096",
                 "--limit-test", "1000", "--device", "cpu", "--json"])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert sum(line.startswith("seed ") for line in lines) == 2
    assert any("machine" in line and "torch" in line for line in lines)
    last = json.loads(lines[-1])
    assert set(last) >= {"preset", "target", "seeds", "mean_acc", "min_acc", "mean_time_s", "max_time_s",
                         "reached", "device"}
    assert last["preset"] == "speedrun" and last["seeds"] == 2 and last["device"] == "cpu"
    assert 0.1 < last["mean_acc"] <= 1 and last["min_acc"] <= last["mean_acc"]
    assert 0 < last["mean_time_s"] <= last["max_time_s"]
