"""decoder_layers / output_head on every supported architecture: names, order, channels, head input."""

import pytest
import torch
from torch import nn

from mlflow_ccfv.networks import NetworkSpec, decoder_layers, output_head, resolve_layers, small_spec

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _trace(model: nn.Module, names: list[str], head: str, x: torch.Tensor):
    """Run ``model`` once; return (execution order of ``names``, their outputs, the head's input)."""
    modules = dict(model.named_modules())
    order, outputs, head_input = [], {}, {}

    def keep(name):
        def hook(_m, _inp, out):
            order.append(name)
            outputs[name] = out

        return hook

    handles = [modules[n].register_forward_hook(keep(n)) for n in names]
    handles.append(modules[head].register_forward_pre_hook(lambda _m, inp: head_input.setdefault("x", inp[0])))
    try:
        with torch.inference_mode():
            logits = model.eval()(x)
    finally:
        for h in handles:
            h.remove()
    return order, outputs, head_input["x"], logits


# (spec, expected channels of each decoder stage, bottleneck -> output, expected spatial downscale)
CASES = [
    (small_spec("UNet", 2, 3), [16, 16], [4, 2]),
    (
        NetworkSpec(
            "UNet",
            {
                "spatial_dims": 3,
                "in_channels": 1,
                "out_channels": 2,
                "channels": (4, 8, 16, 32, 64),
                "strides": (2, 2, 2, 2),
                "num_res_units": 0,
            },
        ),
        [16, 8, 8],
        [8, 4, 2],
    ),
    (small_spec("BasicUNet", 2, 3), [32, 16, 8, 8], [8, 4, 2, 1]),
    (small_spec("DynUNet", 2, 3), [32, 16, 8], [4, 2, 1]),
    (
        NetworkSpec(
            "DynUNet",
            {
                "spatial_dims": 3,
                "in_channels": 1,
                "out_channels": 2,
                "kernel_size": (3,) * 5,
                "strides": (1, 2, 2, 2, 2),
                "upsample_kernel_size": (2,) * 4,
                "filters": (4, 8, 16, 32, 32),
            },
        ),
        [32, 16, 8, 4],
        [8, 4, 2, 1],
    ),
    (small_spec("UNETR", 2, 3), [64, 32, 16, 8], [8, 4, 2, 1]),
    (small_spec("SwinUNETR", 1, 2, (64, 64, 64)), [96, 48, 24, 12, 12], [16, 8, 4, 2, 1]),
    (small_spec("SegResNet", 2, 3), [32, 16, 8], [4, 2, 1]),
    (
        NetworkSpec(
            "SegResNet",
            {
                "spatial_dims": 3,
                "in_channels": 1,
                "out_channels": 2,
                "init_filters": 8,
                "blocks_down": (1, 2, 2),
                "blocks_up": (2, 0),
                "upsample_mode": "deconv",
            },
        ),
        [16, 8],
        [2, 1],
    ),
    (small_spec("SegResNetDS", 2, 3), [32, 16, 8], [4, 2, 1]),
    (
        NetworkSpec(
            "SegResNetDS",
            {
                "spatial_dims": 3,
                "in_channels": 1,
                "out_channels": 2,
                "init_filters": 8,
                "blocks_down": (1, 1, 1),
                "dsdepth": 2,
            },
        ),
        [16, 8],
        [2, 1],
    ),
    (small_spec("PlainConvUNet", 2, 3), [32, 16, 8], [4, 2, 1]),
    (small_spec("ResidualEncoderUNet", 2, 3), [32, 16, 8], [4, 2, 1]),
]


@pytest.mark.parametrize("spec,channels,scale", CASES, ids=lambda v: getattr(v, "architecture", None))
def test_decoder_layers_order_channels_and_head(spec, channels, scale):
    model = spec.build()
    names = decoder_layers(model)
    head = output_head(model)
    roi = 64 if spec.architecture == "SwinUNETR" else 32
    x = torch.randn(1, spec.in_channels, roi, roi, roi, generator=torch.Generator().manual_seed(0))
    order, outputs, head_in, logits = _trace(model, names, head, x)
    assert order == names, "hooks must fire once each, bottleneck -> output"
    assert [outputs[n].shape[1] for n in names] == channels
    assert [roi // outputs[n].shape[-1] for n in names] == scale
    # The last decoder stage is exactly what the output head reads.
    assert torch.equal(outputs[names[-1]], head_in)
    assert logits.shape[1] == spec.out_channels


def test_unknown_layer_lists_available_names():
    model = small_spec("BasicUNet", 1, 2).build()
    with pytest.raises(ValueError, match=r"no module\(s\) named 'decoder9'.*Available names: conv_0, .*upcat_1"):
        resolve_layers(model, ["upcat_4", "decoder9"])
    with pytest.raises(ValueError, match="twice"):
        resolve_layers(model, ["upcat_4", "upcat_4"])
    assert list(resolve_layers(model, ["upcat_2", "conv_0"])) == ["upcat_2", "conv_0"]


def test_unsupported_architecture_says_to_pass_layers():
    with pytest.raises(ValueError, match="Pass `layers="):
        decoder_layers(nn.Sequential(nn.Conv3d(1, 2, 3)))
