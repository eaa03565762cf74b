import pytest
import torch

from mlflow_ccfv.networks import NetworkSpec, build_network, load_state_dict_strict, small_spec


@pytest.mark.parametrize(
    "arch",
    ["UNet", "BasicUNet", "DynUNet", "UNETR", "SegResNet", "SegResNetDS", "PlainConvUNet", "ResidualEncoderUNet"],
)
def test_small_specs_build_and_run(arch):
    spec = small_spec(arch, in_channels=2, out_channels=3, patch_size=(32, 32, 32))
    net = NetworkSpec.from_json(spec.to_json()).build().eval()
    with torch.no_grad():
        out = net(torch.randn(1, 2, 32, 32, 32))
    assert out.shape == (1, 3, 32, 32, 32)


def test_swinunetr_rejects_small_patch():
    with pytest.raises(ValueError, match="multiples of 32"):
        small_spec("SwinUNETR", 1, 2, (32, 32, 32))


def test_unknown_architecture_and_argument_are_named():
    with pytest.raises(ValueError, match="Supported MONAI networks"):
        build_network(NetworkSpec("ResNet", {}))
    with pytest.raises(ValueError, match="chanels.*Valid arguments"):
        build_network(
            NetworkSpec(
                "UNet", {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "chanels": (4, 8), "strides": (2,)}
            )
        )


def test_checkpoint_variants_and_mismatch():
    spec = small_spec("UNet", 1, 2)
    a, b = spec.build(), spec.build()
    wrapped = {"state_dict": {f"module.{k}": v for k, v in a.state_dict().items()}}
    load_state_dict_strict(b, wrapped)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k])
    other = small_spec("UNet", 1, 4).build()
    with pytest.raises(ValueError, match="shape mismatch"):
        load_state_dict_strict(other, a.state_dict())
