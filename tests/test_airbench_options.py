"""airbench's training options, each checked against what its --help promises:
- init dirac: every trained 3x3 convolution passes its input through unchanged on its first min(in, out)
  output channels; the other outputs keep the model's own init (default init is no identity);
- freeze_bn_weights: BatchNorm scales stay exactly 1 while the biases train;
- bn_momentum: every BatchNorm's running-statistics momentum (None: PyTorch's 0.1);
- bn_bias_lr_scale: the BatchNorm biases' group trains at --lr times it;
- head_scale: logits x s as an exact reparametrisation of the last linear layer (lr x s^2, decay / s^2):
  training it equals training the plain model whose output is multiplied by s;
- Lookahead: every N steps slow += alpha (fast - slow), fast = slow; its state resumes exactly;
- altflip: each image mirrored in every other epoch, half of the images in each, whatever the order.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from alexnet_lab import UserError
from alexnet_lab.data import BatchLoader, to_float_batch
from alexnet_lab.data.loader import alternating_flips
from alexnet_lab.engine.builders import prepare_model
from alexnet_lab.engine.config import make_config, parse_augment
from alexnet_lab.engine.lookahead import Lookahead
from alexnet_lab.engine.model_setup import set_up_model
from alexnet_lab.engine.step import build_training_step
from alexnet_lab.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = torch.device("cpu")
FMNIST = {"in_channels": 1, "num_classes": 10}


def batches(n: int, size: int = 16, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`n` random training batches: float (B, 1, 28, 28) images in [0, 1], int64 labels."""
    gen = torch.Generator().manual_seed(seed)
    return [(torch.rand(size, 1, 28, 28, generator=gen), torch.randint(0, 10, (size,), generator=gen))
            for _ in range(n)]


def norms(model: nn.Module) -> list[_BatchNorm]:
    return [m for m in model.modules() if isinstance(m, _BatchNorm)]


# --- init dirac ------------------------------------------------------------------------------------

def set_up(init: str) -> nn.Module:
    torch.manual_seed(0)
    model = build_model("fmnist-net-s")
    set_up_model(make_config("d2l", model="fmnist-net-s", init=init), model)
    return model


def test_dirac_init_makes_every_convolution_the_identity_on_its_first_channels():
    dirac, default = set_up("dirac"), set_up("default")
    pairs = [(a, b) for a, b in zip(dirac.modules(), default.modules()) if isinstance(a, nn.Conv2d)]
    assert len(pairs) == 7 and all(a.in_channels <= a.out_channels for a, _ in pairs)
    x_gen = torch.Generator().manual_seed(1)
    widened = 0
    for conv, own in pairs:
        n = conv.in_channels
        x = torch.randn(2, n, 9, 9, generator=x_gen)
        out = F.conv2d(x, conv.weight, padding=conv.padding)
        torch.testing.assert_close(out[:, :n], x, rtol=0, atol=1e-6)
        assert not torch.allclose(F.conv2d(x, own.weight, padding=own.padding)[:, :n], x, atol=1e-2)
        if conv.out_channels > n:  # the other outputs: the model's own init, untouched
            widened += 1
            assert conv.weight[n:].abs().sum() > 0
            assert torch.equal(conv.weight[n:], own.weight[n:])
    assert widened == 4  # the first conv and each group's widening one


# --- BatchNorm options -----------------------------------------------------------------------------

def trained_bn(freeze: bool, steps: int = 3) -> tuple[nn.Module, nn.Module]:
    """(initial copy, model after `steps` SGD steps) of speednet with or without frozen BN scales."""
    config = make_config("d2l", model="speednet", init="default", lr=0.1, momentum=0.9, weight_decay=5e-4,
                         freeze_bn_weights=freeze, device="cpu")
    step = build_training_step(config, total_steps=10, device=CPU, model_kwargs=FMNIST)
    before = copy.deepcopy(step.model)
    for images, labels in batches(steps):
        step(images, labels)
    return before, step.model


@pytest.mark.parametrize("freeze", [True, False])
def test_freeze_bn_weights_keeps_the_scales_at_one_while_the_biases_train(freeze):
    before, after = trained_bn(freeze)
    pairs = list(zip(norms(before), norms(after)))
    assert len(pairs) == 3
    for old, new in pairs:
        assert torch.equal(old.weight, torch.ones_like(old.weight))
        assert not torch.equal(old.bias, new.bias)
        assert torch.equal(new.weight, old.weight) is freeze


@pytest.mark.parametrize("momentum, expected", [(0.01, 0.01), (None, 0.1)])
def test_bn_momentum_is_every_batchnorms_momentum(momentum, expected):
    model = prepare_model(make_config("d2l", model="fmnist-net-s", bn_momentum=momentum), CPU, **FMNIST)
    assert len(norms(model)) == 7 and all(m.momentum == expected for m in norms(model))
    x = torch.rand(8, 1, 28, 28)
    with torch.no_grad():
        model.train()(x)  # the running mean starts at 0: after one batch, momentum x the batch's mean
        batch_mean = model[0](x).mean(dim=(0, 2, 3))  # model[0]: the conv before the first BatchNorm
    assert model[1] is norms(model)[0]
    torch.testing.assert_close(model[1].running_mean, expected * batch_mean)


def test_bn_bias_lr_scale_sets_the_bn_bias_groups_lr():
    config = make_config("d2l", model="speednet", lr=0.01, bn_bias_lr_scale=64, device="cpu")
    step = build_training_step(config, total_steps=10, device=CPU, model_kwargs=FMNIST)
    groups = {g["kind"]: g for g in step.optimizer.param_groups}
    assert set(groups) == {"filters", "bn_biases", "rest"}  # speednet's head is its only other layer
    bn = groups["bn_biases"]
    assert {id(p) for p in bn["params"]} == {id(m.bias) for m in norms(step.model)}
    assert bn["lr"] == pytest.approx(0.64) and bn["initial_lr"] == pytest.approx(0.64)
    for other in ("filters", "rest"):  # SGD: the filters take --lr, like the rest
        assert groups[other]["lr"] == groups[other]["initial_lr"] == 0.01


# --- head_scale ------------------------------------------------------------------------------------

S = 0.25
HEAD_RECIPE = dict(model="speednet", init="default", lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-3,
                   precision="fp32", deterministic=True, device="cpu")  # speednet: no dropout


def scaled_head_logits(data, x_test, break_group: dict | None = None) -> torch.Tensor:
    """Logits on `x_test` of speednet trained on `data` with head_scale S (`break_group`: settings forced
    on the head's group, to show that the test catches them)."""
    step = build_training_step(make_config("d2l", head_scale=S, **HEAD_RECIPE), total_steps=10, device=CPU,
                               model_kwargs=FMNIST)
    if break_group:
        (head,) = [g for g in step.optimizer.param_groups if g["kind"] == "head"]
        head.update(break_group, initial_lr=break_group.get("lr", head["initial_lr"]))
    for images, labels in data:
        step(images, labels)
    return step.model(x_test)


def plain_logits_times_s(data, x_test) -> torch.Tensor:
    """The same, by hand: the plain model (head_scale 1) trained on loss(S * logits)."""
    config = make_config("d2l", **HEAD_RECIPE)
    model = prepare_model(config, CPU, **FMNIST)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum, nesterov=True,
                                weight_decay=config.weight_decay, foreach=True)
    for images, labels in data:
        optimizer.zero_grad()
        F.cross_entropy(S * model(images), labels).backward()
        optimizer.step()
    return S * model(x_test)


def test_head_scale_trains_exactly_like_scaling_the_plain_models_logits():
    data, ((x_test, _),) = batches(5), batches(1, seed=1)
    with torch.no_grad():
        untrained = scaled_head_logits([], x_test), plain_logits_times_s([], x_test)
    torch.testing.assert_close(*untrained, rtol=0, atol=1e-6)
    expected = plain_logits_times_s(data, x_test)
    torch.testing.assert_close(scaled_head_logits(data, x_test), expected, rtol=0, atol=1e-5)
    assert (expected - untrained[1]).abs().max() > 1e-2  # the steps moved the logits
    for wrong in (dict(lr=HEAD_RECIPE["lr"]), dict(weight_decay=HEAD_RECIPE["weight_decay"])):
        assert not torch.allclose(scaled_head_logits(data, x_test, wrong), expected, rtol=0, atol=1e-5), wrong


# --- Lookahead -------------------------------------------------------------------------------------

def linear() -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(3, 2).double()


def sgd_steps(model: nn.Module, optimizer, lookahead: Lookahead | None, steps: range) -> None:
    """SGD steps on a fixed least-squares problem (step k's data seeded by k), with `lookahead`."""
    for k in steps:
        gen = torch.Generator().manual_seed(k)
        x, y = torch.randn(4, 3, generator=gen).double(), torch.randn(4, 2, generator=gen).double()
        optimizer.zero_grad()
        ((model(x) - y) ** 2).sum().backward()
        optimizer.step()
        if lookahead is not None:
            lookahead.update(model)


def test_lookahead_syncs_every_n_steps_to_alpha_of_the_way():
    slow = [p.detach().clone() for p in linear().parameters()]
    model, plain = linear(), linear()
    la = Lookahead(model, every=3, alpha=0.5)
    opt, plain_opt = torch.optim.SGD(model.parameters(), lr=0.1), torch.optim.SGD(plain.parameters(), lr=0.1)
    for k in (1, 2, 3):
        sgd_steps(model, opt, la, range(k, k + 1))
        sgd_steps(plain, plain_opt, None, range(k, k + 1))
        for p, fast, s in zip(model.parameters(), plain.parameters(), slow):
            want = fast if k < 3 else s + 0.5 * (fast - s)
            torch.testing.assert_close(p.detach(), want.detach(), rtol=0, atol=1e-12)
    assert any(not torch.allclose(p, q) for p, q in zip(model.parameters(), plain.parameters()))


def test_lookahead_state_dict_resumes_mid_cycle_identically():
    model = linear()
    la = Lookahead(model, every=3, alpha=0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sgd_steps(model, opt, la, range(1, 5))  # one sync at step 3, one step into the next cycle
    saved = copy.deepcopy({"model": model.state_dict(), "lookahead": la.state_dict()})  # as torch.save would
    resumed = linear()
    resumed.load_state_dict(saved["model"])
    la2 = Lookahead(resumed, every=7, alpha=0.9)  # the saved every/alpha/steps win
    la2.load_state_dict(saved["lookahead"])
    assert (la2.every, la2.alpha, la2.steps) == (3, 0.5, 4)
    sgd_steps(model, opt, la, range(5, 9))  # syncs at step 6
    sgd_steps(resumed, torch.optim.SGD(resumed.parameters(), lr=0.1), la2, range(5, 9))
    for p, q in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(p, q)
    for a, b in zip(la.slow, la2.slow):
        assert torch.equal(a, b)


# --- altflip ---------------------------------------------------------------------------------------

def test_alternating_flips_takes_the_complement_in_odd_epochs():
    half = torch.randperm(20, generator=torch.Generator().manual_seed(0)) < 10
    idx = torch.tensor([3, 17, 0, 8, 11])
    assert torch.equal(alternating_flips(half, idx, 0), half[idx])
    for epoch in (1, 3):
        assert torch.equal(alternating_flips(half, idx, epoch), ~half[idx])
    assert torch.equal(alternating_flips(half, idx, 2), half[idx])


def mirrored_ids(loader: BatchLoader, images: torch.Tensor, epoch: int) -> set[int]:
    """The images (labels are their ids) `loader` mirrors in `epoch`; each output must be its source
    image, mirrored or not."""
    loader.set_epoch(epoch)
    mirrored, seen = set(), []
    for x, ids in loader:
        source = to_float_batch(images[ids], None)
        for out, plain, i in zip(x, source, ids.tolist()):
            flipped = torch.equal(out, plain.flip(-1))
            assert flipped or torch.equal(out, plain), i
            mirrored |= {i} if flipped else set()
        seen += ids.tolist()
    assert sorted(seen) == list(range(len(images)))
    return mirrored


def test_altflip_mirrors_each_image_in_every_other_epoch():
    n = 100
    images = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    loader = BatchLoader(images, torch.arange(n), 16, shuffle=True, augment="altflip", seed=3)
    epochs = [mirrored_ids(loader, images, e) for e in range(3)]
    assert len(epochs[0]) == len(epochs[1]) == n // 2
    assert epochs[0].isdisjoint(epochs[1]) and epochs[0] | epochs[1] == set(range(n))
    assert epochs[2] == epochs[0] == set(loader.flip_half.nonzero().flatten().tolist())


def test_altflip_is_seeded_and_excludes_the_other_flips():
    images = torch.zeros(40, 28, 28, dtype=torch.uint8)

    def half(seed):
        return BatchLoader(images, torch.arange(40), 8, shuffle=True, augment="altflip", seed=seed).flip_half

    assert torch.equal(half(3), half(3)) and not torch.equal(half(3), half(4))
    assert parse_augment("altflip+translate") == parse_augment("translate,altflip") == "altflip+translate"
    for both in ("flip+altflip", "crop+altflip"):
        with pytest.raises(UserError, match="two ways of flipping"):
            make_config("d2l", augment=both)
