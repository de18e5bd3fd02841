"""Device choices, faked on the CPU: Apple GPUs (mps) found by --device auto and d2l.try_gpu, the
precisions and compile that MPS supports per torch/macOS version, bf16 only where CUDA runs it
natively, and an optimizer whose kernel follows the device it resumes on; a device or precision that
is not there is refused before a run folder is made.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from alexnet_lab import d2l
from alexnet_lab.cli import main
from alexnet_lab.engine import checkpoint, device as dev, numerics
from alexnet_lab.engine.config import make_config
from alexnet_lab.engine.builders import evaluation_batch_size
from alexnet_lab.engine.optimizers import build_optimizer, load_optimizer_state, sgd_implementation
from alexnet_lab.errors import UserError
from runhelpers import last_line, train_args

MPS, CPU, CUDA = torch.device("mps"), torch.device("cpu"), torch.device("cuda")


@pytest.fixture
def apple_silicon(monkeypatch):
    """A Mac with an Apple GPU and no CUDA, as torch would probe it."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)


def _fake_versions(monkeypatch, torch_version, macos14):
    monkeypatch.setattr(dev, "torch_version", lambda: torch_version)
    monkeypatch.setattr(torch.backends.mps, "is_macos_or_newer", lambda major, minor: macos14 or major < 14)


def test_auto_device_and_try_gpu_find_the_apple_gpu(apple_silicon):
    assert dev.resolve_device("auto") == MPS
    assert d2l.try_gpu() == MPS
    assert d2l.try_gpu(1) == CPU  # an Apple GPU is always number 0
    assert d2l.try_all_gpus() == [MPS]


def test_cuda_comes_first_and_cpu_is_the_fallback(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert d2l.try_gpu() == torch.device("cuda:0") and d2l.try_gpu(1) == torch.device("cuda:1")
    assert d2l.try_gpu(2) == CPU
    assert d2l.try_all_gpus() == [torch.device("cuda:0"), torch.device("cuda:1")]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert d2l.try_gpu() == CPU and d2l.try_all_gpus() == [CPU]


def test_recent_torch_on_macos14_trains_in_every_precision(apple_silicon, monkeypatch):
    _fake_versions(monkeypatch, (2, 11), macos14=True)
    assert dev.mps_precisions() == ["fp32", "fp16", "bf16"]
    assert dev.resolve_precision("auto", MPS) == "fp16"  # twice fp32's rate on Apple GPUs
    assert dev.resolve_precision("bf16", MPS) == "bf16"
    assert dev.resolve_precision("fp32", MPS) == "fp32"
    dev.check_compile(MPS)


def test_bf16_on_an_apple_gpu_needs_macos14(apple_silicon, monkeypatch):
    _fake_versions(monkeypatch, (2, 11), macos14=False)
    assert dev.resolve_precision("fp16", MPS) == "fp16"
    with pytest.raises(UserError, match="macOS 14"):
        dev.resolve_precision("bf16", MPS)


def test_older_torch_on_an_apple_gpu_falls_back_to_what_it_supports(apple_silicon, monkeypatch):
    _fake_versions(monkeypatch, (2, 6), macos14=True)  # fp16 autocast, but no GradScaler on mps yet
    assert dev.mps_precisions() == ["fp32", "bf16"]
    assert dev.resolve_precision("auto", MPS) == "fp32"
    with pytest.raises(UserError, match=r"fp16.*torch >= 2\.8.*Use --precision fp32 or bf16"):
        dev.resolve_precision("fp16", MPS)
    with pytest.raises(UserError, match=r"--compile.*torch >= 2\.7"):
        dev.check_compile(MPS)
    dev.check_compile(CPU)
    dev.check_compile(CUDA)


def test_the_training_step_refuses_compile_on_an_apple_gpu_before_building(apple_silicon, monkeypatch):
    from alexnet_lab.engine.step import build_training_step

    _fake_versions(monkeypatch, (2, 6), macos14=True)
    with pytest.raises(UserError, match="--compile"):  # before the model touches the device
        build_training_step(make_config("speedrun", device="auto", precision="fp32", compile=True))


def test_auto_precision_on_cuda_is_bf16_only_where_it_is_native(monkeypatch):
    # A V100/T4 reports bf16 as supported when emulation counts: auto must pick fp16 there.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert dev.resolve_precision("auto", CUDA) == "fp16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert dev.resolve_precision("auto", CUDA) == "bf16"


def test_optimizer_kernel_follows_the_device():
    assert sgd_implementation(CUDA) == {"fused": True, "foreach": False}
    assert sgd_implementation(CPU) == {"fused": False, "foreach": True}
    d2l_recipe = make_config("d2l")
    assert evaluation_batch_size(d2l_recipe, 1, CUDA) == 1024 and evaluation_batch_size(d2l_recipe, 1, CPU) == 256
    assert evaluation_batch_size(d2l_recipe.replace(batch_size=4096), 2, CUDA) == 2048  # per process
    model = nn.Linear(4, 3)
    optimizer = build_optimizer(make_config("fast", device="cpu"), model)
    assert optimizer.param_groups[0]["foreach"] and not optimizer.param_groups[0]["fused"]
    # The state of a run saved on a GPU says fused=True; resumed on the CPU, the CPU's choice holds.
    model(torch.ones(2, 4)).sum().backward()
    optimizer.step()
    state = optimizer.state_dict()
    for group in state["param_groups"]:
        group.update(fused=True, foreach=False)
    fresh = build_optimizer(make_config("fast", device="cpu"), model)
    load_optimizer_state(fresh, state)
    assert fresh.param_groups[0]["foreach"] and not fresh.param_groups[0]["fused"]
    assert fresh.param_groups[0]["lr"] == state["param_groups"][0]["lr"]
    assert torch.equal(fresh.state[model.weight]["momentum_buffer"], optimizer.state[model.weight]["momentum_buffer"])
    fresh.step()


def test_rng_state_from_a_machine_with_more_gpus_restores_the_gpus_here(monkeypatch):
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, index: restored.append(index))
    with monkeypatch.context() as no_gpu:  # rng_state itself would query real GPUs
        no_gpu.setattr(torch.cuda, "is_available", lambda: False)
        state = checkpoint.rng_state()
    state["cuda"] = [torch.zeros(8, dtype=torch.uint8)] * 4  # saved on a 4-GPU machine
    checkpoint.set_rng_state(state)
    assert restored == [0]


def test_precision_choice_per_device(monkeypatch):
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert dev.resolve_precision("auto", cuda) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert dev.resolve_precision("auto", cuda) == "fp16"
    assert dev.resolve_precision("fp16", cuda) == "fp16"
    with pytest.raises(UserError, match="fp16"):
        dev.resolve_precision("fp16", torch.device("cpu"))


@pytest.mark.parametrize("device, native_bf16, expected", [
    ("cpu", False, ["fp32"]), ("cpu", True, ["fp32", "bf16"]),
    ("cuda", False, ["fp32", "fp16"]), ("cuda", True, ["fp32", "bf16", "fp16"])])
def test_auto_numerics_time_what_the_device_trains_in_well(monkeypatch, device, native_bf16, expected):
    """The candidates --precision auto times, each channels-first and channels-last, plain fp32 first: bf16
    on a CPU only where oneDNN runs it natively (emulated it is slow, and timing it costs the most)."""
    monkeypatch.setattr(numerics, "cpu_has_fast_bf16", lambda: native_bf16)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native_bf16)
    pairs = numerics.candidates(make_config("fast"), torch.device(device))
    assert pairs == [(p, c) for p in expected for c in (False, True)]
    assert numerics.candidates(make_config("fast", channels_last=True), torch.device(device)) == \
        [(p, True) for p in expected]
    assert numerics.candidates(make_config("fast", precision="fp32", channels_last=False),
                               torch.device(device)) == [("fp32", False)]


def test_auto_numerics_on_an_apple_gpu_time_what_mps_trains_in(apple_silicon, monkeypatch):
    _fake_versions(monkeypatch, (2, 6), macos14=True)  # no GradScaler on mps yet: no fp16 candidate
    assert numerics.candidates(make_config("fast"), MPS) == [(p, c) for p in ("fp32", "bf16") for c in (False, True)]
    with pytest.raises(UserError, match="fp16"):  # a given precision the device cannot run: refused, not timed
        numerics.candidates(make_config("fast", precision="fp16"), MPS)


@pytest.mark.usefixtures("offline_cli")
@pytest.mark.parametrize("flags, message", [
    (["--device", "cuda"], "--device cuda was asked for but no CUDA GPU is visible"),
    (["--precision", "fp16"], "--precision fp16 is not supported on the CPU"),
])
def test_unavailable_device_or_precision_leaves_no_folder(data_dir, tmp_path, capsys, flags, message):
    if flags[1] == "cuda" and torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible")
    out = tmp_path / "r"
    args = train_args(data_dir, out, *flags)
    assert main(args) == 2
    assert message in last_line(capsys)
    assert not out.exists()
