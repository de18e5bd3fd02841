"""Fast numerics predict like fp32: bf16 autocast, channels-last memory format and torch.compile, on
the same weights, move the logits by no more than their rounding allows and keep every confident
prediction. (Which precision a device gets is tests/test_devices.py's.)
"""

from __future__ import annotations

import pytest
import torch

from alexnet_lab.engine.builders import prepare_model
from alexnet_lab.engine.config import make_config
from alexnet_lab.engine.device import autocast, resolve_precision
from alexnet_lab.engine.step import to_model_input

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
