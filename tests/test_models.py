import re

import pytest
import torch
from torch import nn

from alexnet_lab import UserError
from alexnet_lab.models import build_model, get_spec, list_models


@pytest.mark.parametrize("name", list_models())
def test_forward_shape_and_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    model = build_model(name)
    size = get_spec(name).input_size
    x = torch.rand(2, 1, size, size)
    out = model(x)
    assert out.shape == (2, 10)
    nn.functional.cross_entropy(out, torch.tensor([1, 7])).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
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


def test_lenet_parameter_count_by_hand():
    # conv 1*6*25+6, conv 6*16*25+16, fc 400*120+120, 120*84+84, 84*10+10
    expected = (150 + 6) + (2400 + 16) + (48000 + 120) + (10080 + 84) + (840 + 10)
    assert sum(p.numel() for p in build_model("lenet").parameters()) == expected == 61_706
    assert [type(m).__name__ for m in build_model("lenet")][:3] == ["Conv2d", "Sigmoid", "AvgPool2d"]


def test_unknown_model_is_a_user_error():
    with pytest.raises(UserError, match=re.escape("Unknown model 'vgg'")):
        build_model("vgg")
