"""The CUDA code paths on a real GPU: training agrees with the CPU, half precision learns, checkpoints
move between devices, inference and the book's train_ch6 run there, DDP over nccl, torch.compile.

Every test here is marked `cuda` and skipped (reason shown) where no CUDA GPU is visible; run them
with `pytest -m cuda` (benchmarks/gpu_check.sh does). Data is synthetic and tiny: seconds per test.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from alexnet_lab import d2l
from alexnet_lab.cli import main
from alexnet_lab.engine.checkpoint import load_checkpoint
from alexnet_lab.engine.config import make_config
from alexnet_lab.engine.device import autocast
from alexnet_lab.data.loader import BatchLoader
from alexnet_lab.engine.builders import Splits, build_scheduler, prepare_model
from alexnet_lab.engine.optimizers import build_optimizer
from alexnet_lab.engine.step import to_model_input, train_step
from alexnet_lab.engine.trainer import Callback, evaluate, fit
from alexnet_lab.models import build_model

pytestmark = pytest.mark.cuda

REPO = Path(__file__).resolve().parents[1]
CPU, CUDA = torch.device("cpu"), torch.device("cuda")
# speednet (BatchNorm, no dropout) with the speedrun recipe in fp32: 8 steps on bar_splits(1024, 256).
FP32_SPEEDNET = make_config("speedrun", precision="fp32", channels_last=False, epochs=2)


@pytest.fixture
def strict_fp32():
    """True fp32 on the GPU while comparing with the CPU: TF32 off for convolutions and matmuls."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def bar_splits(n_train: int = 2048, n_test: int = 512) -> Splits:
    """28x28 uint8 images with a bright bar whose row encodes the label: learnable in a few steps."""
    rng = np.random.default_rng(0)

    def images(labels):
        x = rng.integers(0, 40, (len(labels), 28, 28)).astype(np.uint8)
        for i, label in enumerate(labels):
            x[i, 2 + 2 * label: 4 + 2 * label, 4:24] = 250
        return torch.from_numpy(x)

    train_y, test_y = rng.integers(0, 10, n_train), rng.integers(0, 10, n_test)
    return Splits(images(train_y), torch.from_numpy(train_y), images(test_y), torch.from_numpy(test_y),
                  "synthetic bars")


class Checkpoints(Callback):
    def __init__(self):
        self.payloads = []

    def on_checkpoint(self, payload, is_best):
        self.payloads.append(payload)


# --- the same training on both devices -------------------------------------------------------------

def test_alexnet_training_steps_agree_between_cpu_and_cuda(strict_fp32):
    """The chapter's AlexNet, d2l recipe, 3 SGD steps at 224x224 (dropout off: its masks come from
    different generators on the two devices): same losses and weights within fp32 rounding."""
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(3, 16, 1, 224, 224, generator=gen)
    labels = torch.randint(0, 10, (3, 16), generator=gen)
    results = {}
    for device in (CPU, CUDA):
        config = make_config("d2l", device=str(device))
        model = prepare_model(config, device)  # seeded: the same weights on both devices
        for module in model.modules():
            if isinstance(module, nn.Dropout):
                module.p = 0.0
        optimizer = build_optimizer(config, model)  # fused on CUDA, foreach on the CPU
        scaler = torch.amp.GradScaler(device.type, enabled=False)
        losses = []
        for x, y in zip(images, labels):
            loss_sum, _ = train_step(model, nn.CrossEntropyLoss(), optimizer, scaler, x.to(device),
                                     y.to(device), "fp32", device)
            losses.append(float(loss_sum) / len(y))
        results[device.type] = losses, {k: v.detach().cpu() for k, v in model.state_dict().items()}
    (cpu_losses, cpu_state), (cuda_losses, cuda_state) = results["cpu"], results["cuda"]
    assert cuda_losses == pytest.approx(cpu_losses, rel=1e-4)
    for name, value in cpu_state.items():
        torch.testing.assert_close(cuda_state[name], value, rtol=1e-4, atol=1e-6, msg=name)


def test_fit_agrees_between_cpu_and_cuda(strict_fp32):
    """The whole loop (batches cut on the device, momentum, one-cycle, BatchNorm, evaluation) with
    the speedrun recipe in fp32: the same losses."""
    splits = bar_splits(1024, 256)
    runs = {}
    for device in ("cpu", "cuda"):
        runs[device] = fit(FP32_SPEEDNET.replace(device=device), splits=splits)
    assert runs["cuda"]["device"].startswith("cuda")
    assert runs["cuda"]["train_loss"] == pytest.approx(runs["cpu"]["train_loss"], rel=1e-3)
    assert runs["cuda"]["test_acc"] == pytest.approx(runs["cpu"]["test_acc"], abs=2 / 256)


# --- no host syncs in the hot loop ---------------------------------------------------------------

@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_training_steps_and_batches_never_wait_for_the_gpu(precision):
    """With CUDA's sync debug mode set to "error", any operation that makes the host wait for the GPU
    (.item(), .cpu(), bool(tensor), bincount, a GradScaler that reads its inf flag) raises. Batches
    (cut, augmented and resized on the device), the step (fused SGD, GradScaler for fp16) and the
    schedule must run without one; only the epoch's permutation is copied up front."""
    if precision == "bf16" and not torch.cuda.is_bf16_supported(including_emulation=False):
        pytest.skip("this GPU has no native bf16 (compute capability < 8.0)")
    config = make_config("speedrun", device="cuda", precision=precision, augment=True)
    splits = bar_splits(1024, 256)
    loader = BatchLoader(splits.train_images, splits.train_labels, 64, shuffle=True, device=CUDA, augment=True)
    model = prepare_model(config, CUDA)
    optimizer = build_optimizer(config, model)
    assert optimizer.param_groups[0]["fused"]
    scheduler = build_scheduler(config, optimizer, total_steps=16)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)

    def step(images, labels):
        out = train_step(model, loss_fn, optimizer, scaler, to_model_input(images, True), labels, precision, CUDA)
        scheduler.step()
        return out

    batches = loader.iterate(0)
    step(*next(batches))  # warm-up: the permutation's upload, cudnn autotuning, lazy init
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        sums = [step(*next(batches)) for _ in range(6)]
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert all(torch.isfinite(loss) for loss, _ in sums)


def test_evaluation_waits_for_the_gpu_once_not_per_batch():
    model = prepare_model(make_config("speedrun", device="cuda"), CUDA)
    splits = bar_splits(64, 4096)
    loader = BatchLoader(splits.test_images, splits.test_labels, 256, shuffle=False, device=CUDA)
    evaluate(model, loader, CUDA)  # warm-up
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = evaluate(model, loader, CUDA, "bf16", channels_last=False)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    assert result["examples"] == 4096 and len(loader) == 16
    assert len(syncs) < len(loader) // 2  # the order's upload and the final reads, not one per batch


# --- half precision ---------------------------------------------------------------------------------

@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_runs_learn(precision):
    if precision == "bf16" and not torch.cuda.is_bf16_supported(including_emulation=False):
        pytest.skip("this GPU has no native bf16 (compute capability < 8.0)")
    keep = Checkpoints()
    config = make_config("speedrun", device="cuda", precision=precision, epochs=8, log_points_per_epoch=5)
    summary = fit(config, [keep], splits=bar_splits())
    assert summary["precision"] == precision
    assert summary["test_acc"] >= 0.9, summary
    scaler_state = keep.payloads[-1]["scaler_state"]
    if precision == "fp16":  # GradScaler on: a finite positive scale that it has been adjusting
        assert 0 < scaler_state["scale"] < float("inf")
    else:
        assert scaler_state == {}  # bf16 keeps fp32's exponent range: no loss scaling


# --- checkpoints move between devices ------------------------------------------------------------

@pytest.mark.parametrize("first,then", [("cuda", "cpu"), ("cpu", "cuda")])
def test_checkpoint_resumes_on_the_other_device(tmp_path, tiny_data, first, then):
    flags = ["--model", "lenet", "--batch-size", "16", "--lr", "0.9", "--data-dir", str(tiny_data)]
    out, reference = tmp_path / "run", tmp_path / "reference"
    assert main(["train", *flags, "--epochs", "1", "--device", first, "--out", str(out)]) == 0
    saved = load_checkpoint(out / "checkpoint.pt")
    assert saved["config"]["device"] == first
    assert main(["train", "--resume", str(out), "--epochs", "2", "--device", then]) == 0
    resumed = load_checkpoint(out / "checkpoint.pt")
    assert resumed["run_state"]["step"] == 2 * saved["run_state"]["step"]
    assert resumed["config"]["device"] == then
    # The optimizer's kernel is this device's (fused on CUDA), not the one saved with the state.
    assert resumed["optimizer_state"]["param_groups"][0]["fused"] == (then == "cuda")
    assert main(["train", *flags, "--epochs", "2", "--device", then, "--out", str(reference)]) == 0
    got, want = (json.loads((d / "summary.json").read_text()) for d in (out, reference))
    assert got["device"].startswith(then)
    assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-3)


# --- inference and the book's API on the GPU -----------------------------------------------------

def test_evaluate_and_predict_on_cuda_match_the_cpu(tmp_path, tiny_data, capsys):
    run = tmp_path / "run"
    assert main(["train", "--model", "lenet", "--epochs", "2", "--batch-size", "16", "--lr", "0.9",
                 "--data-dir", str(tiny_data), "--device", "cpu", "--out", str(run)]) == 0
    checkpoint = str(run / "checkpoint.pt")
    evaluations = {}
    for device in ("cpu", "cuda"):
        folder = tmp_path / f"eval-{device}"
        assert main(["evaluate", "--checkpoint", checkpoint, "--device", device, "--data-dir", str(tiny_data),
                     "--out", str(folder)]) == 0
        evaluations[device] = json.loads((folder / "evaluation.json").read_text())
    # An example whose top two logits tie to within rounding may flip (one flip moves 2 cells).
    cells = zip(*(sum(evaluations[d]["confusion"], []) for d in ("cpu", "cuda")))
    assert sum(abs(a - b) for a, b in cells) <= 2
    assert evaluations["cuda"]["test_loss"] == pytest.approx(evaluations["cpu"]["test_loss"], rel=1e-4)

    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"img{i}.png")
        Image.fromarray(rng.integers(0, 255, (40, 30), dtype=np.uint8)).save(paths[-1])
    capsys.readouterr()
    guesses = {}
    for device in ("cpu", "cuda"):
        assert main(["predict", "--checkpoint", checkpoint, "--device", device, *map(str, paths)]) == 0
        lines = capsys.readouterr().out.splitlines()  # "img0.png: Bag 31.2%, Shirt 20.1%, Coat 9.9%"
        guesses[device] = [_parse_guesses(line) for line in lines]
    assert len(guesses["cuda"]) == 3
    for cpu, cuda in zip(guesses["cpu"], guesses["cuda"]):
        cuda_pct = dict(cuda)
        for name, pct in cpu:  # the same probabilities, up to printing's rounding
            assert name not in cuda_pct or abs(cuda_pct[name] - pct) <= 0.2
        if cpu[0][1] - cpu[1][1] > 0.5:  # a clear winner on the CPU wins on the GPU too
            assert cuda[0][0] == cpu[0][0]


def _parse_guesses(line: str) -> list[tuple[str, float]]:
    """'img0.png: Ankle boot 31.2%, Coat 9.9%' -> [('Ankle boot', 31.2), ('Coat', 9.9)]"""
    return [(name.strip(), float(pct)) for name, pct in re.findall(r"([^,]+?) ([\d.]+)%", line.split(": ", 1)[1])]


def test_d2l_train_ch6_on_cuda(tmp_path, tiny_data, monkeypatch, capsys):
    monkeypatch.setenv("ALEXNET_LAB_DATA", str(tiny_data))
    monkeypatch.setenv("ALEXNET_LAB_OFFLINE", "1")
    monkeypatch.setenv("ALEXNET_LAB_D2L_FIGURE", str(tmp_path / "curves.svg"))
    train_iter, test_iter = d2l.load_data_fashion_mnist(32, resize=224)
    net = build_model("alexnet")  # the chapter's net
    device = d2l.try_gpu()
    assert device == torch.device("cuda:0")
    d2l.train_ch6(net, train_iter, test_iter, 2, 0.01, device)
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "training on cuda:0"
    assert re.fullmatch(r"loss \d+\.\d{3}, train acc \d\.\d{3}, test acc \d\.\d{3}", printed[-2]), printed
    assert re.fullmatch(r"\d+\.\d examples/sec on cuda:0", printed[-1]), printed
    assert all(p.device.type == "cuda" for p in net.parameters())
    assert not torch.backends.cudnn.benchmark  # autotuning was on for the run only


# --- DDP over nccl ------------------------------------------------------------------------------------

def test_ddp_nccl_world_size_one_matches_plain_training(tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    if not dist.is_nccl_available():
        pytest.skip("this torch build has no nccl")
    splits = bar_splits(1024, 256)
    config = FP32_SPEEDNET.replace(device="cuda:0")
    plain = fit(config, splits=splits)
    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1,
                            device_id=torch.device("cuda:0"))
    wrapped = []

    def wrap(model):
        wrapped.append(DistributedDataParallel(model, device_ids=[0]))
        return wrapped[-1]

    try:
        assert dist.get_backend() == "nccl"
        ddp = fit(config, splits=splits, wrap_model=wrap)  # gradients all-reduced by nccl in backward
    finally:
        dist.destroy_process_group()
    assert len(wrapped) == 1
    assert ddp["train_loss"] == pytest.approx(plain["train_loss"], rel=1e-4)
    assert ddp["test_acc"] == pytest.approx(plain["test_acc"], abs=2 / 256)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="DDP over 2 GPUs needs 2 CUDA GPUs")
def test_torchrun_on_two_gpus_matches_one_gpu(tmp_path, tiny_data):
    flags = ["--model", "lenet", "--epochs", "2", "--batch-size", "16", "--lr", "0.9",
             "--data-dir", str(tiny_data), "--device", "cuda"]
    assert main(["train", *flags, "--out", str(tmp_path / "one")]) == 0
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "ALEXNET_LAB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "alexnet_lab", "train", *flags, "--out", str(tmp_path / "two")]
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("examples/sec on cuda:0") == 1
    one, two = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("one", "two"))
    assert two["train_loss"] == pytest.approx(one["train_loss"], rel=1e-3)
    assert two["train_examples"] == one["train_examples"]


# --- torch.compile ------------------------------------------------------------------------------------

@pytest.mark.parametrize("model_name,precision,channels_last", [("alexnet", "fp32", False),
                                                                 ("speednet", "bf16", True)])
def test_compiled_model_predicts_like_eager(model_name, precision, channels_last, strict_fp32):
    config = make_config("d2l", model=model_name, device="cuda", init="default")
    model = prepare_model(config, CUDA).eval()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    size = 224 if model_name == "alexnet" else 28
    images = to_model_input(torch.rand(32, 1, size, size, generator=torch.Generator().manual_seed(0)).to(CUDA),
                       channels_last)
    compiled = torch.compile(model)
    with torch.no_grad(), autocast(precision, CUDA):
        eager, got = model(images).float(), compiled(images).float()
    tol = (0.03 if precision == "bf16" else 1e-4) * eager.abs().max()
    assert (got - eager).abs().max() <= tol
    top2 = eager.topk(2, dim=1).values
    confident = (top2[:, 0] - top2[:, 1]) > 2 * tol
    assert confident.any() and torch.equal(got.argmax(1)[confident], eager.argmax(1)[confident])
