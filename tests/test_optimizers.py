"""--optimizer muon and the optimizer's parameter groups (engine/optimizers.py).

Promises: Muon's update is torch.optim.Muon's on a matrix, and the same on a filter viewed as one
(whatever its memory format); every trained parameter is in exactly one group, in an order the
checkpoint check knows; a run with Muon, Lookahead, alternating flips and the other airbench options
resumes bit-exactly, and its checkpoint passes (and a damaged one fails) the resume check.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from alexnet_lab.engine import optimizers
from alexnet_lab.engine.builders import prepare_model
from alexnet_lab.engine.checkpoint import load_checkpoint
from alexnet_lab.engine.config import make_config
from alexnet_lab.engine.optimizers import MuonSGD, build_optimizer, orthogonalise, parameter_groups
from alexnet_lab.engine.schema import check_checkpoint
from alexnet_lab.engine.trainer import StopRequested
from alexnet_lab.errors import UserError
from runhelpers import StopAt, assert_same_run, config_for, run_fit

CPU = torch.device("cpu")
AIRBENCH = dict(optimizer="muon", muon_lr=0.05, muon_ns_steps=3, lookahead_every=3, augment="altflip+translate",
                head_scale=0.5, init="dirac", momentum=0.9, nesterov=True, weight_decay=5e-4)


def muon_step_pair(shape, steps=3, weight_decay=0.01, channels_last=False):
    """The same parameter trained by MuonSGD and by torch.optim.Muon on its matrix view, same grads."""
    torch.manual_seed(0)
    ours = nn.Parameter(torch.randn(*shape))
    if channels_last:
        ours.data = ours.data.contiguous(memory_format=torch.channels_last)
    theirs = nn.Parameter(ours.detach().reshape(shape[0], -1).clone())
    mine = MuonSGD([{"params": [ours], "muon": True, "ns_steps": 5, "lr": 0.1, "momentum": 0.9, "nesterov": True,
                     "weight_decay": weight_decay}], lr=0.1)
    torch_muon = torch.optim.Muon([theirs], lr=0.1, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    for _ in range(steps):
        grad = torch.randn(*shape)
        ours.grad = grad.contiguous(memory_format=torch.channels_last) if channels_last else grad
        theirs.grad = grad.reshape(shape[0], -1).clone()
        mine.step()
        torch_muon.step()
    return ours.detach(), theirs.detach()


@pytest.fixture
def bf16_iteration(monkeypatch):
    """torch.optim.Muon iterates in bf16: compare in the same precision whatever this CPU prefers."""
    monkeypatch.setattr(optimizers, "ns_dtype", lambda device: torch.bfloat16)


@pytest.mark.parametrize("shape", [(8, 20), (20, 8)], ids=["wide", "tall"])
def test_muon_matches_torch_muon_on_a_matrix(bf16_iteration, shape):
    ours, theirs = muon_step_pair(shape)
    assert torch.allclose(ours, theirs, atol=1e-6)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels-last"])
def test_muon_treats_a_filter_as_its_matrix(bf16_iteration, channels_last):
    ours, theirs = muon_step_pair((16, 4, 3, 3), channels_last=channels_last)
    assert torch.allclose(ours.reshape(16, -1), theirs, atol=1e-6)


def test_the_muon_comparison_can_fail(bf16_iteration):
    """Guard: without weight decay on one side the two differ, and the check sees it."""
    ours, _ = muon_step_pair((8, 20), weight_decay=0.01)
    _, theirs = muon_step_pair((8, 20), weight_decay=0.0)
    assert not torch.allclose(ours, theirs, atol=1e-6)


def test_orthogonalise_flattens_the_spectrum():
    singular = torch.linalg.svdvals(orthogonalise(torch.randn(32, 96), 5, torch.float32))
    assert 0.5 < float(singular.min()) and float(singular.max()) < 1.5


def test_renorm_sets_each_filter_tensor_to_norm_sqrt_out():
    weight = nn.Parameter(torch.randn(16, 8, 3, 3) * 3)
    weight.grad = torch.randn_like(weight)
    MuonSGD([{"params": [weight], "muon": True, "ns_steps": 3, "renorm": True, "lr": 0.0, "momentum": 0.9,
              "nesterov": True, "weight_decay": 0.0}], lr=0.0).step()
    assert float(weight.detach().norm()) == pytest.approx(4.0, rel=1e-5)


@pytest.mark.parametrize("changes", [{}, dict(optimizer="muon"), dict(freeze_bn_weights=True, bn_bias_lr_scale=64),
                                     dict(head_scale=0.1, optimizer="muon", freeze_bn_weights=True)],
                         ids=["sgd", "muon", "frozen-bn", "all"])
def test_every_trained_parameter_is_in_one_group(changes):
    config = make_config("speedrun-94", device="cpu", **changes)
    model = prepare_model(config, CPU, in_channels=1, num_classes=10)
    groups = build_optimizer(config, model).param_groups
    listed = [id(p) for g in groups for p in g["params"]]
    assert len(listed) == len(set(listed))
    assert set(listed) == {id(p) for p in model.parameters() if p.requires_grad}
    muon = [p for g in groups if g.get("muon") for p in g["params"]]
    assert len(muon) == (sum(p.ndim == 4 for p in model.parameters()) if config.optimizer == "muon" else 0)
    if not changes:  # the one group of every earlier version, in the model's order: old checkpoints resume
        assert [id(p) for p in groups[0]["params"]] == [id(p) for p in model.parameters()]


def test_muon_groups_follow_the_schedule():
    config = make_config("speedrun-94", device="cpu", optimizer="muon", muon_lr=0.05)
    model = prepare_model(config, CPU, in_channels=1, num_classes=10)
    filters = [g for g in parameter_groups(config, model) if g.get("muon")]
    assert [g["lr"] for g in filters] == [0.05] and filters[0]["nesterov"] and filters[0]["ns_steps"] == 5


def test_a_run_with_muon_and_airbench_options_resumes_bit_exact(data_dir_512, tmp_path):
    config = config_for(data_dir_512, **AIRBENCH)
    run_fit(config, tmp_path / "a")
    out = tmp_path / "b"
    with pytest.raises(StopRequested):
        run_fit(config, out, [StopAt(7)])
    run_fit(config, out, resume=load_checkpoint(out / "checkpoint.pt"))
    assert_same_run(tmp_path / "a", out)


def test_the_resume_check_knows_muon_and_lookahead(data_dir_512, tmp_path):
    config = config_for(data_dir_512, **AIRBENCH, epochs=0.25)
    run_fit(config, tmp_path)
    payload = load_checkpoint(tmp_path / "checkpoint.pt")
    assert check_checkpoint(payload, "c.pt", for_resume=True) == config
    for damage, message in [(lambda p: p.pop("lookahead_state"), "lookahead_state"),
                            (lambda p: p["lookahead_state"]["slow"].pop(), "lookahead_state.slow"),
                            (lambda p: p["optimizer_state"]["param_groups"][0].update(ns_steps="3"), "ns_steps")]:
        broken = load_checkpoint(tmp_path / "checkpoint.pt")
        damage(broken)
        with pytest.raises(UserError, match=message):
            check_checkpoint(broken, "c.pt", for_resume=True)



def test_the_printed_recipe_leaves_out_settings_that_change_nothing():
    from alexnet_lab.engine.config import unused_settings

    assert {"muon_lr", "muon_ns_steps", "lookahead_alpha"} <= unused_settings(make_config("speedrun"))
    assert unused_settings(make_config("speedrun-90", lookahead_every=5)) == set()  # Muon and Lookahead on
