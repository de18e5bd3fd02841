"""Numerics: fast ones predict like fp32 (bf16 autocast, channels-last memory format and torch.compile, on
the same weights, move the logits by no more than their rounding allows and keep every confident
prediction); --precision auto and an unset channels-last are chosen by timing the candidates, fastest
wins (fp32 too), and the choice is remembered per machine, torch, model and batch in a cache file that
a damaged or hostile copy cannot break. Timings here are fake: the choice, not the machine, is tested.
(Which candidates a device has is tests/test_devices.py's.)
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from alexnet_lab.engine import numerics
from alexnet_lab.engine.builders import prepare_model
from alexnet_lab.engine.checkpoint import load_checkpoint
from alexnet_lab.engine.config import make_config
from alexnet_lab.engine.device import autocast, resolve_precision
from alexnet_lab.engine.inference import load_trained
from alexnet_lab.engine.schema import check_checkpoint, check_run_config
from alexnet_lab.engine.step import build_training_step, to_model_input
from runhelpers import run_fit

# bf16 keeps 8 significant bits (relative rounding 2^-9 per value); a few layers of it move the
# logits of these small models by well under 3% of their range. Where fp32's top-2 margin is larger
# than twice that, the predicted class must not change.
BF16_LOGIT_TOL = 0.03
FP32_LOGIT_TOL = 1e-4


def _logits(model_name, precision, channels_last, compile_, images):
    config = make_config("d2l", model=model_name, precision=precision, channels_last=channels_last,
                         compile=compile_, device="cpu", init="default")
    device = torch.device("cpu")
    model = prepare_model(config, device).eval()  # same seed: same weights for every variant
    run = torch.compile(model) if compile_ else model
    with torch.no_grad(), autocast(resolve_precision(precision, device), device):
        return run(to_model_input(images, channels_last)).float()


# Every precision x memory format without compile on two models; torch.compile (seconds per
# variant on 2 cores) on the BatchNorm model in each precision, NCHW and NHWC across the two.
VARIANTS = [(m, p, cl, False) for m in ("speednet", "lenet") for p in ("fp32", "bf16") for cl in (False, True)
            if (p, cl) != ("fp32", False)]
VARIANTS += [("speednet", "fp32", False, True), ("speednet", "bf16", True, True)]


@pytest.mark.parametrize("model_name,precision,channels_last,compile_", [
    pytest.param(*variant, marks=pytest.mark.thorough if variant[3] else ())  # a cold compile: CI only
    for variant in VARIANTS])
def test_numerics_variants_predict_like_fp32(model_name, precision, channels_last, compile_):
    torch.manual_seed(0)
    images = torch.rand(32, 1, 28, 28)
    reference = _logits(model_name, "fp32", False, False, images)
    logits = _logits(model_name, precision, channels_last, compile_, images)
    scale = reference.abs().max()
    tol = (BF16_LOGIT_TOL if precision == "bf16" else FP32_LOGIT_TOL) * scale
    assert (logits - reference).abs().max() <= tol
    top2 = reference.topk(2, dim=1).values
    confident = (top2[:, 0] - top2[:, 1]) > 2 * tol
    assert torch.equal(logits.argmax(1)[confident], reference.argmax(1)[confident])


def test_alexnet_bf16_channels_last_predicts_like_fp32():
    torch.manual_seed(0)
    images = torch.rand(2, 1, 224, 224)
    reference = _logits("alexnet", "fp32", False, False, images)
    logits = _logits("alexnet", "bf16", True, False, images)
    assert (logits - reference).abs().max() <= BF16_LOGIT_TOL * reference.abs().max()


# --- chosen by measurement ---------------------------------------------------------------------------

CPU = torch.device("cpu")
LENET = {"in_channels": 1, "num_classes": 10}
BF16_SLOWER = {"fp32 + channels-first": 0.30, "fp32 + channels-last": 0.20,   # seconds a step: a CPU whose
               "bf16 + channels-first": 0.50, "bf16 + channels-last": 0.40}   # bf16 runs slower than fp32


class FakeTimer:
    """numerics.time_steps with made-up seconds per candidate; counts the measurements."""

    def __init__(self, seconds):
        self.seconds, self.calls = dict(seconds), 0

    def __call__(self, works, device, steps, warmup, min_seconds=0.0, max_steps=1):
        self.calls += 1
        for work in works.values():  # the candidate steps run (as the real timer runs them)
            work()
        return {name: self.seconds[name] for name in works}


@pytest.fixture
def timer(monkeypatch, tmp_path, one_thread):
    """A private cache, nothing remembered in this process, 4 CPU candidates whatever this CPU has."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(numerics, "_REMEMBERED", {})
    monkeypatch.setattr(numerics, "cpu_has_fast_bf16", lambda: True)
    fake = FakeTimer(BF16_SLOWER)
    monkeypatch.setattr(numerics, "time_steps", fake)
    return fake


def auto_config(**changes):
    return make_config("speedrun", **{"model": "lenet", "batch_size": 4, "device": "cpu", **changes})


def chosen(config=None, **kwargs):
    return build_training_step(config or auto_config(), device=CPU, model_kwargs=LENET, **kwargs).numerics


@pytest.mark.parametrize("fastest", sorted(BF16_SLOWER))
def test_the_fastest_candidate_is_chosen_fp32_included(timer, fastest):
    timer.seconds[fastest] = 0.01
    result = chosen()
    assert result.label == fastest and result.how == "measured" and timer.calls == 1
    assert result.step_seconds == 0.01 and result.seconds == timer.seconds


def test_bf16_slower_than_fp32_trains_in_fp32_and_the_step_runs_it(timer):
    step = build_training_step(auto_config(), device=CPU, model_kwargs=LENET)
    assert (step.precision, step.channels_last) == ("fp32", True)  # 0.20 s: faster than bf16's 0.40
    assert step.config.precision == "fp32" and step.config.channels_last is True
    weight = next(p for p in step.model.parameters() if p.dim() == 4)
    assert weight.is_contiguous(memory_format=torch.channels_last)


def test_the_choice_is_cached_and_reused_without_timing(timer):
    first = chosen()
    entry = json.loads(numerics.cache_file().read_text())["entries"][-1]
    assert (entry["precision"], entry["channels_last"], entry["seconds"]) == ("fp32", True, BF16_SLOWER)
    assert entry["key"]["model"] == "lenet" and entry["key"]["batch_size"] == 4
    numerics._REMEMBERED.clear()  # a later process: only the file remembers
    again = chosen()
    assert timer.calls == 1 and again.how == "cached" and again.label == first.label
    assert again.cache == str(numerics.cache_file()) and again.seconds == first.seconds


@pytest.mark.parametrize("change", ["torch version", "machine", "model", "batch", "threads"])
def test_a_changed_machine_torch_model_or_batch_measures_again(timer, monkeypatch, change):
    chosen()
    config = auto_config()
    if change == "torch version":
        monkeypatch.setattr(torch, "__version__", "9.9.9")
    elif change == "machine":
        monkeypatch.setattr(numerics, "cpu_model_and_flags", lambda: ("Another CPU", ["avx2"]))
    elif change == "model":
        config = auto_config(model="speednet")
    elif change == "batch":
        config = auto_config(batch_size=8)
    else:
        monkeypatch.setattr(torch, "get_num_threads", lambda: 64)
    numerics._REMEMBERED.clear()
    assert chosen(config).how == "measured" and timer.calls == 2
    assert len(json.loads(numerics.cache_file().read_text())["entries"]) == 2  # both remembered


@pytest.mark.parametrize("content", [
    b"not json {", b"\xff\xfe garbage", b"[]", b'{"format": "alexnet-lab-numerics/1", "entries": "x"}',
    b'{"format": "alexnet-lab-numerics/1", "entries": [{"key": 1, "precision": 2}, "x", null]}',
    b'{"format": "alexnet-lab-numerics/1", "entries": [{"key": {}, "precision": "fp32", "channels_last": 1, '
    b'"seconds": {"fp32 + channels-first": -1}}]}',
    b"[" * 100_000 + b"]" * 100_000,  # nesting deeper than the parser's recursion
    b" " * (numerics.CACHE_MAX_BYTES + 1),
], ids=["garbage", "not-utf8", "a-list", "entries-not-a-list", "wrong-types", "bad-values", "deep", "oversize"])
def test_a_damaged_cache_is_ignored_and_rewritten(timer, content):
    path = numerics.cache_file()
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    assert chosen().how == "measured" and timer.calls == 1
    assert json.loads(path.read_text())["entries"][-1]["precision"] == "fp32"  # rewritten whole


def test_a_cache_entry_for_this_key_with_a_forged_choice_is_ignored(timer):
    chosen()
    path = numerics.cache_file()
    data = json.loads(path.read_text())
    data["entries"][-1]["precision"] = "fp16"  # not a candidate of this CPU: its seconds do not name it
    path.write_text(json.dumps(data))
    numerics._REMEMBERED.clear()
    assert chosen().how == "measured" and timer.calls == 2


def test_a_cache_that_is_a_symlink_is_neither_read_nor_written_through(timer, tmp_path):
    chosen()
    path = numerics.cache_file()
    target = tmp_path / "someone-elses.json"
    target.write_text(path.read_text())  # a valid cache, behind a link
    path.unlink()
    os.symlink(target, path)
    numerics._REMEMBERED.clear()
    result = chosen()
    assert result.how == "measured" and timer.calls == 2 and result.cache is None  # the link is not followed
    assert path.is_symlink() and json.loads(target.read_text())["entries"]  # nor written through
    assert "not cached" in numerics.numerics_line(result.as_dict())
    assert chosen().how == "cached" and timer.calls == 2  # this process remembers its own measurement


def test_an_unwritable_cache_folder_costs_a_measurement_not_the_run(timer, monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # a file where the folder would go
    assert chosen().cache is None and timer.calls == 1


@pytest.mark.parametrize("given, expected_calls", [
    (dict(precision="bf16", channels_last=True), 0), (dict(precision="fp32", channels_last=False), 0),
    (dict(precision="fp32"), 1), (dict(channels_last=False), 1)])
def test_given_numerics_skip_the_measurement_of_what_they_set(timer, given, expected_calls):
    result = chosen(auto_config(**given))
    assert timer.calls == expected_calls
    assert all(getattr(result, key) == value for key, value in given.items())
    assert (result.how == "given") == (expected_calls == 0)


def test_under_torchrun_numerics_follow_the_rule_unmeasured(timer, monkeypatch):
    monkeypatch.setattr(numerics, "_distributed", lambda: True)
    result = chosen()
    assert result.how == "rule" and timer.calls == 0 and result.channels_last is True
    assert result.precision == resolve_precision("auto", CPU)
    assert "by rule, not measured" in numerics.numerics_line(result.as_dict())


def test_measuring_leaves_the_run_as_it_would_have_been(monkeypatch, tmp_path, one_thread):
    """The real timer on real steps: the random state after measuring is the one before it, and the
    run's model starts from the weights it has with its numerics given."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(numerics, "_REMEMBERED", {})
    torch.manual_seed(7)
    before = torch.get_rng_state()
    pairs = numerics.candidates(auto_config(), CPU)
    seconds = numerics.measure(auto_config(), CPU, LENET, pairs,
                               lambda c: build_training_step(c, 8, CPU, LENET))
    assert torch.equal(torch.get_rng_state(), before)
    assert set(seconds) == {numerics.label(*pair) for pair in pairs} and all(s > 0 for s in seconds.values())
    measured = build_training_step(auto_config(), device=CPU, model_kwargs=LENET)
    given = build_training_step(auto_config(precision=measured.precision, channels_last=measured.channels_last),
                                device=CPU, model_kwargs=LENET)
    for a, b in zip(measured.model.parameters(), given.model.parameters()):
        assert torch.equal(a, b)


def test_the_line_says_what_was_chosen_and_by_how_much(timer):
    result = chosen()
    line = numerics.numerics_line(result.as_dict())
    assert line.startswith("Numerics: fp32 + channels-last, measured 1.50x as fast as fp32 + channels-first")
    assert f"on this machine ({result.machine})" in line and numerics.cpu_model_and_flags()[0] in result.machine
    assert f"cached in {numerics._shown(str(numerics.cache_file()))}" in line
    numerics._REMEMBERED.clear()
    assert "measured earlier" in numerics.numerics_line(chosen().as_dict())
    timer.seconds = {**BF16_SLOWER, "fp32 + channels-first": 0.1}
    plain = chosen(auto_config(batch_size=2)).as_dict()
    assert "fp32 + channels-first, measured the fastest of 4 (the next, fp32 + channels-last, 0.50x as fast)" \
        in numerics.numerics_line(plain)
    assert numerics.numerics_line(chosen(auto_config(precision="fp32", channels_last=False)).as_dict()) is None


# --- recorded with the run -----------------------------------------------------------------------------

def test_auto_numerics_round_trip_through_config_json_and_checkpoints(timer, data_dir, tmp_path):
    """The config keeps precision auto and channels-last None; what they resolved to is in config.json's
    "resolved" and the checkpoint's "evaluated_with", which evaluating the checkpoint follows."""
    config = auto_config(data_dir=str(data_dir), epochs=1, batch_size=32)
    run_fit(config, tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    check_run_config(saved, tmp_path / "run" / "config.json")
    assert saved["precision"] == "auto" and saved["channels_last"] is None
    assert (saved["resolved"]["precision"], saved["resolved"]["channels_last"]) == ("fp32", True)
    assert saved["resolved"]["numerics"]["how"] == "measured"
    payload = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert check_checkpoint(payload, "checkpoint.pt").channels_last is None
    assert payload["evaluated_with"]["channels_last"] is True
    _, evaluated, _ = load_trained(tmp_path / "run" / "checkpoint.pt", CPU)
    assert (evaluated.precision, evaluated.channels_last) == ("fp32", True)
    for older in (True, False):  # a checkpoint of a version where channels-last was a switch
        payload["config"]["channels_last"] = older
        assert check_checkpoint(payload, "checkpoint.pt").channels_last is older


def test_evaluation_follows_the_runs_numerics_only_where_they_apply():
    config = auto_config()
    ran = {"device": "cuda:0", "precision": "fp16", "channels_last": True}
    on_cpu = numerics.as_evaluated(config, ran, CPU)
    assert on_cpu.precision == "auto" and on_cpu.channels_last is True  # fp16 is a GPU's: not on the CPU
    assert numerics.as_evaluated(config, ran, torch.device("cuda")).precision == "fp16"
    assert numerics.as_evaluated(config, None, CPU) == config  # an older checkpoint: the rule, as before
    assert numerics.as_evaluated(auto_config(precision="bf16", channels_last=False), ran, CPU).channels_last is False
