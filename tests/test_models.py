import re

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from alexnet_lab import UserError
from alexnet_lab.models import build_model, get_spec, list_models


@pytest.mark.parametrize("name", list_models())
def test_every_model_adapts_to_the_data_and_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    model = build_model(name, in_channels=3, num_classes=7)  # keyword arguments reach the builder
    size = get_spec(name).input_size
    x = torch.rand(2, 3, size, size)
    out = model(x)
    assert out.shape == (2, 7)
    nn.functional.cross_entropy(out, torch.tensor([1, 6])).backward()
    missing = [n for n, p in model.named_parameters()
               if p.requires_grad and (p.grad is None or not torch.any(p.grad != 0))]  # frozen: whitening
    assert not missing, f"parameters without gradient: {missing}"


def _chapter_alexnet():
    """The chapter's code, typed in as printed (an independent reference for layout and count)."""
    return nn.Sequential(
        nn.Conv2d(1, 96, kernel_size=11, stride=4, padding=1), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(96, 256, kernel_size=5, padding=2), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(256, 384, kernel_size=3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 384, kernel_size=3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Flatten(),
        nn.Linear(6400, 4096), nn.ReLU(),
        nn.Dropout(p=0.5),
        nn.Linear(4096, 4096), nn.ReLU(),
        nn.Dropout(p=0.5),
        nn.Linear(4096, 10))


def test_alexnet_is_the_chapters_network():
    ours = build_model("alexnet")
    assert sum(p.numel() for p in ours.parameters()) == 46_764_746
    reference = _chapter_alexnet()
    ours.load_state_dict(reference.state_dict(), strict=True)
    ours.eval(), reference.eval()
    x = torch.rand(2, 1, 224, 224)
    torch.testing.assert_close(ours(x), reference(x))
    assert [type(m) for m in ours] == [type(m) for m in reference]


def test_models_default_to_their_specs_channels_and_refuse_unknown_options():
    for name in list_models():
        first_conv = next(m for m in build_model(name).modules() if isinstance(m, nn.Conv2d))
        assert first_conv.in_channels == get_spec(name).in_channels
    assert build_model("speednet", widths=(8, 8, 8))[0].out_channels == 8  # model-specific options too
    with pytest.raises(UserError, match="Model 'lenet' does not take 'widths'"):
        build_model("lenet", widths=(8, 8, 8))


def test_alexnet_2012_is_the_papers_network_in_one_tower():
    """Hand count of the single-tower 2012 network (3x224x224 -> 1000), against the paper's "60 million"."""
    convs = [(3, 96, 11), (96, 256, 5), (256, 384, 3), (384, 384, 3), (384, 256, 3)]
    dense = [(256 * 6 * 6, 4096), (4096, 4096), (4096, 1000)]
    expected = sum(i * o * k * k + o for i, o, k in convs) + sum(i * o + o for i, o in dense)
    model = build_model("alexnet-2012")
    count = sum(p.numel() for p in model.parameters())
    assert count == expected == 62_378_344
    assert abs(count - 60e6) / 60e6 < 0.05
    kinds = [type(m).__name__ for m in model]
    # LRN right after the first two conv+ReLU, then overlapping pooling (3x3 windows, stride 2)
    assert kinds[:8] == ["Conv2d", "ReLU", "LocalResponseNorm", "MaxPool2d", "Conv2d", "ReLU",
                         "LocalResponseNorm", "MaxPool2d"]
    assert kinds.count("LocalResponseNorm") == 2 and kinds.count("Dropout") == 2
    assert all(m.kernel_size == 3 and m.stride == 2 for m in model if isinstance(m, nn.MaxPool2d))
    lrn = model[2]
    assert (lrn.size, lrn.alpha / lrn.size, lrn.beta, lrn.k) == (5, pytest.approx(1e-4), 0.75, 2.0)
    for size in (224, 227):  # the paper's stated size and the one its arithmetic needs
        assert model.eval()(torch.rand(1, 3, size, size)).shape == (1, 1000)
    layers = [m for m in model if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert [float(m.bias.detach().mean()) for m in layers] == [0, 1, 0, 1, 1, 1, 1, 0]
    assert all(abs(float(m.weight.detach().std()) - 0.01) < 0.001 for m in layers)


def test_alexnet_2012_lrn_matches_the_papers_formula():
    """b = a / (k + alpha * sum over 5 neighbouring channels of a^2)^beta, written out directly."""
    a = torch.randn(1, 8, 3, 3) * 10
    squares = torch.nn.functional.pad(a.pow(2), (0, 0, 0, 0, 2, 2))  # pad the channel axis
    window = sum(squares[:, i:i + 8] for i in range(5))
    expected = a / (2 + 1e-4 * window).pow(0.75)
    torch.testing.assert_close(build_model("alexnet-2012")[2](a), expected)


def test_lenet_parameter_count_by_hand():
    # conv 1*6*25+6, conv 6*16*25+16, fc 400*120+120, 120*84+84, 84*10+10
    expected = (150 + 6) + (2400 + 16) + (48000 + 120) + (10080 + 84) + (840 + 10)
    assert sum(p.numel() for p in build_model("lenet").parameters()) == expected == 61_706
    assert [type(m).__name__ for m in build_model("lenet")][:3] == ["Conv2d", "Sigmoid", "AvgPool2d"]


def test_unknown_model_is_a_user_error():
    with pytest.raises(UserError, match=re.escape("Unknown model 'vgg'")):
        build_model("vgg")


# --- the smaller and newer models -----------------------------------------------------------------

def training_flops(model: nn.Module, size: int) -> int:
    """Forward + backward FLOPs of one example, counted by torch.utils.flop_counter."""
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.rand(1, 1, size, size)).sum().backward()
    return counter.get_total_flops()


def test_alexnet_small_needs_at_least_5x_fewer_training_flops():
    big = training_flops(build_model("alexnet"), get_spec("alexnet").input_size)
    small = training_flops(build_model("alexnet-small"), get_spec("alexnet-small").input_size)
    assert big / small >= 5, big / small


def test_alexnet_small_keeps_alexnets_layout():
    def layout(model):
        return [type(m).__name__ for m in model if not isinstance(m, (nn.ReLU, nn.Flatten, nn.BatchNorm2d))]
    assert layout(build_model("alexnet-small")) == layout(build_model("alexnet"))


def test_lenet_modern_is_lenet_with_relu_maxpool_dropout():
    modern, classic = build_model("lenet-modern"), build_model("lenet")
    # same weight shapes, hence the same 61,706 parameters (hand count: 156+2416+48120+10164+850)
    assert [p.shape for p in modern.parameters()] == [p.shape for p in classic.parameters()]
    assert sum(p.numel() for p in modern.parameters()) == 156 + 2416 + 48120 + 10164 + 850
    kinds = {type(m) for m in modern.modules()}
    assert {nn.ReLU, nn.MaxPool2d, nn.Dropout} <= kinds
    assert not kinds & {nn.Sigmoid, nn.AvgPool2d}


def test_fmnist_net_parameter_count_by_hand():
    def conv(cin, cout):  # 3x3, no bias, then BatchNorm's weight and bias
        return 9 * cin * cout + 2 * cout
    expected = (conv(1, 32) + conv(32, 64) + conv(64, 64) + conv(64, 128) + conv(128, 128)
                + conv(128, 256) + conv(256, 256) + 256 * 10 + 10)
    assert sum(p.numel() for p in build_model("fmnist-net").parameters()) == expected
