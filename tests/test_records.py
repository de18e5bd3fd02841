"""The speed ladder's pieces: EMA of weights, test-time augmentation, `record`'s statistics, with the
training images and FLOPs to the target beside the time."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from alexnet_lab import UserError
from alexnet_lab.analysis.machine import cpu_model_and_flags
from alexnet_lab.analysis.record import (candidate_config, parse_candidate, run_candidates, run_record,
                                        statistics_of, target_of)
from alexnet_lab.cli import main
from alexnet_lab.cli.record import format_summary
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

    import sys
    evaluating = sys.modules[evaluate.__module__]  # the module whose `evaluate` runs the TTA views
    real = evaluating.tta_logits
    evaluating.tta_logits = lambda model, x, mode: real(Spy(model), x, mode)
    try:
        fit(base.replace(tta="flip"))
    finally:
        evaluating.tta_logits = real
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
        return {"test_acc": acc, "wall_seconds": wall, "time_to_target_s": None, "train_examples": 5}

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


def test_record_gives_the_training_images_and_flops_to_the_target(capsys):
    """Images: what each seed trained on, up to the target when the run stopped there; FLOPs: those
    images x LeNet's forward + backward FLOPs per image, counted by hand (tests/test_bench.py's count)."""
    forward = 2 * (28 * 28 * 6 * 25 + 10 * 10 * 16 * 150 + 400 * 120 + 120 * 84 + 84 * 10)
    per_image = 3 * forward - 2 * 28 * 28 * 6 * 25  # weight gradients of all, input gradients of all but conv1
    script = {10_000: (0.5, None, 64), 0: (0.95, 1.5, 96), 1: (0.80, None, 320)}  # acc, time to target, images

    def fake_fit(config, splits=None):
        acc, to_target, images = script[config.seed]
        return {"test_acc": acc, "wall_seconds": 9.0, "time_to_target_s": to_target, "train_examples": images}

    config = make_config("speedrun", model="lenet", device="cpu", target_accuracy=0.9)
    result = run_record(config, 2, splits=_fake_splits(), train=fake_fit)
    assert [(r["images"], r["flops"]) for r in result["rows"]] == [(96, 96 * per_image), (320, 320 * per_image)]
    assert result["flops_per_image"] == per_image
    assert result["mean_images"] == 208 and result["mean_flops"] == 208 * per_image
    summary = format_summary(result)
    assert "mean 208 training images to the target" in summary
    assert f"{208 * per_image:.3g} training FLOPs" in summary and f"{per_image / 1e6:,.2f} MFLOP per image" in summary


def _fake_splits() -> Splits:
    return Splits(torch.zeros(5, 28, 28, dtype=torch.uint8), torch.zeros(5, dtype=torch.int64),
                  torch.zeros(3, 28, 28, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64), "fake")


def test_candidate_values_are_read_with_their_fields_types():
    preset, settings = parse_candidate("speedrun-94: epochs=6.5, label_smoothing=0.2,batch_size=128,lr=1,"
                                       "augment=translate+flip,channels_last=false,tta=flip,resize=none,"
                                       "device=cuda:1")
    assert preset == "speedrun-94"
    assert settings == {"epochs": 6.5, "label_smoothing": 0.2, "batch_size": 128, "lr": 1.0,
                        "augment": "flip+translate",  # --augment's own parser: the kinds in their order
                        "channels_last": False, "tta": "flip", "resize": None, "device": "cuda:1"}
    assert [type(settings[k]) for k in ("batch_size", "lr", "channels_last")] == [int, float, bool]
    assert parse_candidate("speedrun") == ("speedrun", {})
    # augment=true is the flag alone (the model's own kinds), augment=false is --no-augment
    assert candidate_config("speedrun:augment=true").augment == make_config("speedrun", augment=True).augment
    assert candidate_config("speedrun-95:augment=false").augment == make_config("speedrun").augment
    # preset < flags given < the candidate's own settings
    config = candidate_config("speedrun-94:epochs=6.5,label_smoothing=0.2", {"epochs": 3, "device": "cpu"})
    assert (config.preset, config.model, config.epochs, config.label_smoothing, config.device) == \
        ("speedrun-94", "fmnist-net-s", 6.5, 0.2, "cpu")
    assert config.lr == make_config("speedrun-94").lr


def test_an_unknown_candidate_key_names_the_nearest_valid_one():
    with pytest.raises(UserError, match="unknown setting 'label_smothing'. Did you mean 'label_smoothing'"):
        parse_candidate("speedrun-94:epochs=6.5,label_smothing=0.2")
    with pytest.raises(UserError, match="unknown setting 'preset'"):  # --preset picks it: not a setting
        parse_candidate("speedrun:preset=best")
    with pytest.raises(UserError, match="unknown preset 'speedrun94'. Did you mean 'speedrun-94'"):
        parse_candidate("speedrun94:epochs=6.5")


@pytest.mark.parametrize("text, message", [
    ("speedrun:epochs=-1", r"--epochs must be in \(0, 100000\], got -1"),
    ("speedrun:label_smoothing=1", r"--label-smoothing must be in \[0, 1\), got 1"),
    ("speedrun:batch_size=1.5", "--batch-size must be a whole number, got '1.5'"),
    ("speedrun:lr=fast", "--lr must be a number, got 'fast'"),
    ("speedrun:lr=nan", "--lr must be a finite number"),
    ("speedrun:channels_last=maybe", "--channels-last must be true or false, got 'maybe'"),
    ("speedrun:augment=maybe", "--augment must be one of none or kinds joined by"),
    ("speedrun:tta=flp", "--tta must be one of none, flip"),
    ("speedrun:epochs", "'epochs' is not key=value"),
    ("speedrun:epochs=1,epochs=2", "sets 'epochs' twice"),
])
def test_a_bad_candidate_value_raises_the_fields_own_error(text, message):
    with pytest.raises(UserError, match=message) as caught:
        parse_candidate(text)
    assert str(caught.value).startswith(f"--candidate '{text}': ")


def test_each_candidate_gets_its_own_warm_up_rows_and_statistics():
    """A fake trainer scores a run by its epochs and seed; each candidate's statistics follow from its rows."""
    seen = []

    def fake_fit(config, splits=None):
        seen.append((config.epochs, config.seed))
        acc = {1.0: 0.88, 2.0: 0.91}[config.epochs] + 0.01 * (config.seed % 10_000)
        return {"test_acc": acc, "wall_seconds": 10 * config.epochs + config.seed % 10_000,
                "time_to_target_s": None, "train_examples": int(5 * config.epochs)}

    candidates = [(text, candidate_config(text, {"device": "cpu"}))
                  for text in ("speedrun:epochs=1", "speedrun-90:epochs=2")]
    results = run_candidates(candidates, 2, splits=_fake_splits(), train=fake_fit)
    assert seen == [(1.0, 10_000), (1.0, 0), (1.0, 1), (2.0, 10_000), (2.0, 0), (2.0, 1)]
    first, second = results
    assert [r["candidate"] for r in results] == ["speedrun:epochs=1", "speedrun-90:epochs=2"]
    assert [r["test_acc"] for r in first["rows"]] == pytest.approx([0.88, 0.89])
    assert [r["test_acc"] for r in second["rows"]] == pytest.approx([0.91, 0.92])
    assert first["target"] == 0.883 and second["target"] == 0.90  # each judged against its own preset's rung
    assert first["mean_acc"] == pytest.approx(0.885) and first["min_acc"] == pytest.approx(0.88)
    assert first["reached"] == 0.5 and second["reached"] == 1.0
    assert first["mean_time_s"] == pytest.approx(10.5) and second["mean_time_s"] == pytest.approx(20.5)
    assert (first["mean_images"], second["mean_images"]) == (5, 10)  # each candidate's own runs


def test_record_command_prints_a_row_per_candidate(monkeypatch, capsys):
    import functools

    import alexnet_lab.cli.record as record_cli

    def fake_fit(config, splits=None):
        return {"test_acc": 0.9 if config.lr == 0.05 else 0.8, "wall_seconds": 2.0, "time_to_target_s": None,
                "train_examples": 1000 if config.lr == 0.05 else 3000}

    monkeypatch.setattr(record_cli, "run_candidates",
                        functools.partial(record_cli.run_candidates, splits=_fake_splits(), train=fake_fit))
    code = main(["record", "--candidate", "speedrun:lr=0.05", "--candidate", "speedrun:lr=0.2,epochs=1",
                 "--seeds", "2", "--device", "cpu", "--json"])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert sum(line.strip().startswith("seed ") for line in lines) == 4
    rows = [line.split() for line in lines if line.rstrip().endswith(("speedrun:lr=0.05", "epochs=1"))]
    assert [row[:4] + row[5:6] + row[7:] for row in rows[-2:]] == [
        ["0.9000", "0.9000", "0.883", "100%", "1,000", "speedrun:lr=0.05"],
        ["0.8000", "0.8000", "0.883", "0%", "3,000", "speedrun:lr=0.2,epochs=1"]]
    last = [json.loads(line) for line in lines[-2:]]
    assert [(x["candidate"], x["mean_acc"], x["reached"], x["mean_images"]) for x in last] == [
        ("speedrun:lr=0.05", 0.9, 1.0, 1000), ("speedrun:lr=0.2,epochs=1", 0.8, 0.0, 3000)]
    per_image = last[0]["flops_per_image"]  # speednet's at 28x28, forward + backward
    assert [float(row[6]) for row in rows[-2:]] == pytest.approx([1000 * per_image, 3000 * per_image], rel=1e-2)


def test_record_refuses_a_preset_beside_candidates(capsys):
    assert main(["record", "--preset", "speedrun", "--candidate", "speedrun:epochs=1"]) == 2
    assert "--preset and --candidate" in capsys.readouterr().err


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
                         "reached", "device", "mean_images", "mean_flops", "flops_per_image"}
    assert last["mean_images"] == 13 * 192  # 0.55 of the 22 steps an epoch of 4,096 takes: 13 steps of 192
    assert last["mean_flops"] == last["mean_images"] * last["flops_per_image"]
    assert last["preset"] == "speedrun" and last["seeds"] == 2 and last["device"] == "cpu"
    assert 0.1 < last["mean_acc"] <= 1 and last["min_acc"] <= last["mean_acc"]
    assert 0 < last["mean_time_s"] <= last["max_time_s"]
