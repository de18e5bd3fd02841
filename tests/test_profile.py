"""`profile` (exercise 4) against independent references: FlopCounterMode, numel, hand-computed bytes."""

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from alexnet_lab.analysis.profile import dominant, findings, profile_model, training_flops
from alexnet_lab.cli import main
from alexnet_lab.engine.config import make_config
from alexnet_lab.models import build_model, get_spec, list_models

FORWARD_OPS = {"aten.convolution", "aten.addmm", "aten.mm"}


def flop_counter_reference(model, shape):
    """Forward and backward FLOPs, in total and per layer, as torch.utils.flop_counter counts them."""
    def per_layer(counter):  # keys are "Sequential.<child name>"
        return {k.split(".", 1)[1]: sum(v.values()) for k, v in counter.get_flop_counts().items() if "." in k}

    model.train()
    x = torch.rand(*shape)
    forward_only = FlopCounterMode(display=False)
    with forward_only:
        model(x)
    both = FlopCounterMode(display=False)  # the module tracker must see the forward to attribute backward
    with both:
        model(x).sum().backward()
    fwd, all_ = per_layer(forward_only), per_layer(both)
    bwd = {k: v - fwd.get(k, 0) for k, v in all_.items()}
    total_fwd = forward_only.get_total_flops()
    return total_fwd, both.get_total_flops() - total_fwd, fwd, bwd


@pytest.mark.parametrize("name", list_models())
def test_flops_and_params_match_independent_counters(name):
    size, channels = get_spec(name).input_size, get_spec(name).in_channels
    torch.manual_seed(0)
    model = build_model(name)
    profile = profile_model(model, (1, channels, size, size))
    fwd, bwd, fwd_by_layer, bwd_by_layer = flop_counter_reference(build_model(name), (1, channels, size, size))
    assert profile["total"]["forward_flops"] == fwd
    assert profile["total"]["backward_flops"] == bwd
    for layer in profile["layers"]:
        assert layer["forward_flops"] == fwd_by_layer.get(layer["name"], 0), layer["name"]
        assert layer["backward_flops"] == bwd_by_layer.get(layer["name"], 0), layer["name"]
    assert profile["total"]["params"] == sum(p.numel() for p in build_model(name).parameters())
    assert profile["input_shape"] == [1, channels, size, size]


def test_batch_size_scales_flops_and_activations_linearly():
    one = profile_model(build_model("lenet-modern"), (1, 1, 28, 28))["total"]
    four = profile_model(build_model("lenet-modern"), (4, 1, 28, 28))["total"]
    assert four["forward_flops"] == 4 * one["forward_flops"]
    assert four["backward_flops"] == 4 * one["backward_flops"]
    assert four["activation_bytes"] == 4 * one["activation_bytes"]
    assert four["state_bytes"] == one["state_bytes"]


def test_batchnorm_saves_per_channel_statistics_once_per_batch():
    one = profile_model(build_model("alexnet-small"), (1, 1, 28, 28))["total"]
    four = profile_model(build_model("alexnet-small"), (4, 1, 28, 28))["total"]
    # mean and 1/std per channel (fp32) of the five BatchNorms, whatever the batch size
    stats = 2 * 4 * (64 + 128 + 256 + 256 + 128)
    assert four["activation_bytes"] - stats == 4 * (one["activation_bytes"] - stats)


def test_lenet_activation_and_state_bytes_by_hand():
    profile = profile_model(build_model("lenet"), (1, 1, 28, 28), make_config("d2l", momentum=0.9))
    by_name = {r["name"]: r for r in profile["layers"]}
    # Saved for backward (fp32, 4 B): the image (conv 0), each sigmoid's output, each pool's output
    # (saved by the next conv / linear as its input). Pools and linears re-save nothing new.
    assert by_name["0"]["activation_bytes"] == 4 * 28 * 28
    assert by_name["1"]["activation_bytes"] == 4 * 6 * 28 * 28
    assert by_name["3"]["activation_bytes"] == 4 * 6 * 14 * 14
    assert by_name["7"]["activation_bytes"] == 4 * 16 * 5 * 5
    expected = 4 * (28 * 28 + 6 * 28 * 28 + 6 * 14 * 14 + 16 * 10 * 10 + 16 * 5 * 5 + 120 + 84)
    assert profile["total"]["activation_bytes"] == expected
    # weights + gradients + one momentum buffer, fp32
    assert profile["total"]["state_bytes"] == 3 * 4 * 61_706
    plain = profile_model(build_model("lenet"), (1, 1, 28, 28))  # the book's SGD: no buffer
    assert plain["total"]["state_bytes"] == 2 * 4 * 61_706
    # the optimizer's update: SGD reads w, g and writes w; momentum also reads and writes its buffer
    assert plain["total"]["optimizer_bytes_moved"] == 3 * 4 * 61_706
    assert profile["total"]["optimizer_bytes_moved"] == 5 * 4 * 61_706
    layers_moved = sum(r["bytes_moved"] for r in profile["layers"])
    assert profile["total"]["bytes_moved"] == layers_moved
    assert profile["total"]["step_bytes_moved"] == layers_moved + 5 * 4 * 61_706
    # conv 0 by hand: image in (no gradient needed), weights, output; backward dy, x, w in, dw out
    x, w, y = 4 * 28 * 28, 4 * 156, 4 * 6 * 28 * 28
    assert by_name["0"]["bytes_moved"] == (x + w + y) + (y + x + w + w)


def test_muon_keeps_a_buffer_for_each_convolution_filter_and_sgd_without_momentum_none():
    muon = profile_model(build_model("lenet"), (1, 1, 28, 28), make_config("d2l", optimizer="muon"))
    filters = 6 * 1 * 5 * 5 + 16 * 6 * 5 * 5  # LeNet's two 4-D convolution weights
    assert muon["total"]["optimizer_bytes"] == 4 * filters
    assert {r["name"]: r["optimizer_bytes"] for r in muon["layers"] if r["optimizer_bytes"]} == {
        "0": 4 * 150, "3": 4 * 2400}
    assert muon["total"]["optimizer_bytes_moved"] == 3 * 4 * 61_706 + 2 * 4 * filters


def test_alexnet_findings_name_the_dense_layers_for_memory_and_convs_for_compute():
    profile = profile_model(build_model("alexnet"), (1, 1, 224, 224))
    compute = dominant(profile["layers"], training_flops)
    memory = dominant(profile["layers"], "state_bytes")
    assert {r["type"] for r, _ in compute} == {"Conv2d"}
    assert {r["type"] for r, _ in memory} == {"Linear"}
    # 6400 x 4096 is the largest weight matrix: over half of all parameters
    assert memory[0][0]["params"] == 6400 * 4096 + 4096
    text = " ".join(findings(profile))
    assert "Compute:" in text and "Linear" in text


def test_cli_json_last_line(tmp_path, capsys):
    plot = tmp_path / "p.png"
    assert main(["profile", "--model", "alexnet", "--no-timing", "--plot", str(plot), "--json"]) == 0
    data = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert data["input_shape"] == [1, 1, 224, 224]
    for layer in data["layers"]:
        assert {"name", "type", "output_shape", "params", "forward_flops", "backward_flops",
                "activation_bytes"} <= set(layer)
    for key in ("params", "forward_flops", "backward_flops", "activation_bytes"):
        assert data["total"][key] == sum(layer[key] for layer in data["layers"])
    assert data["layers"][-1]["output_shape"] == [1, 10]
    assert plot.stat().st_size > 1000


def test_cli_timing_and_batch_size(tmp_path, capsys):
    assert main(["profile", "--model", "lenet", "--batch-size", "8", "--device", "cpu", "--momentum", "0.5",
                 "--plot", str(tmp_path / "p.png"), "--json"]) == 0
    out = capsys.readouterr().out
    data = json.loads(out.strip().splitlines()[-1])
    assert data["input_shape"] == [8, 1, 28, 28]
    assert data["total"]["forward_flops"] == 8 * 833_040  # d2l LeNet: 833,040 FLOPs per 28x28 image
    timing = data["timing"]
    assert timing["step_seconds"] > 0 and timing["measured_bandwidth_bytes_per_s"] > 1e8
    assert timing["implied_bandwidth_bytes_per_s"] == pytest.approx(data["total"]["step_bytes_moved"] / timing["step_seconds"])
    assert "GB/s" in out
    assert data["optimizer"] == timing["optimizer"] == "sgd" and data["momentum"] == timing["momentum"] == 0.5
    assert data["total"]["optimizer_bytes"] == 4 * 61_706  # timed what was counted: one momentum buffer


def test_cli_rejects_input_size_that_does_not_fit(capsys):
    assert main(["profile", "--model", "alexnet", "--resize", "32", "--no-timing"]) == 2
    assert "does not fit" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["profile", "summary"])
def test_the_probe_takes_trains_flags_with_trains_names_and_choices(command, capsys):
    """--resize, --batch-size and, for profile, train's --optimizer and --precision."""
    argv = [command, "--model", "lenet", "--resize", "32"] + (["--no-timing"] if command == "profile" else [])
    assert main(argv) == 2
    assert "does not fit" in capsys.readouterr().err
    if command == "profile":
        for flag, value in (("--optimizer", "momentum"), ("--precision", "fp8")):
            with pytest.raises(SystemExit):
                main(["profile", flag, value])
            assert f"argument {flag}: invalid choice: '{value}'" in capsys.readouterr().err


def test_cli_profiles_the_adapted_model(tmp_path, capsys):
    assert main(["profile", "--model", "lenet", "--channels", "3", "--num-classes", "7", "--no-timing",
                 "--plot", str(tmp_path / "p.png"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert data["input_shape"] == [1, 3, 28, 28] and data["layers"][-1]["output_shape"] == [1, 7]
    assert data["layers"][0]["params"] == 3 * 6 * 25 + 6
