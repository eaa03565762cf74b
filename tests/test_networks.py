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


def test_spec_fields_are_checked_by_name_before_anything_is_built():
    """Whatever JSON a user writes into a spec's fields, check_spec accepts it or raises OptionError
    naming the field: never another exception, never an attempt to build ``channels=10**9``."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from mlflow_ccfv.errors import OptionError
    from mlflow_ccfv.networks import NetworkSpec, check_spec
    from mlflow_ccfv.networks.specs import INT_FIELDS, SEQUENCE_FIELDS

    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=4),
        lambda inner: st.lists(inner, max_size=4),
        max_leaves=8,
    )
    fields = st.sampled_from(sorted({*INT_FIELDS, *SEQUENCE_FIELDS, "spatial_dims"}))

    @settings(max_examples=300, deadline=None)
    @given(st.dictionaries(fields, json_values, max_size=3))
    def check(kwargs):
        try:
            check_spec(NetworkSpec("UNet", kwargs))
        except OptionError as exc:
            assert any(f"kwargs.{key}" in str(exc) for key in kwargs)
            return
        for key, value in kwargs.items():
            if key in INT_FIELDS:
                low, high = INT_FIELDS[key]
                assert type(value) is int and low <= value <= high
            elif key == "spatial_dims":
                assert value == 3 and type(value) is int

    check()


def test_every_supported_preset_passes_the_spec_checks():
    from mlflow_ccfv.networks import SUPPORTED_ARCHITECTURES, check_spec
    from mlflow_ccfv.networks.dynamic import DYNAMIC_ARCHITECTURES

    for architecture in (*SUPPORTED_ARCHITECTURES, *DYNAMIC_ARCHITECTURES):
        check_spec(small_spec(architecture, 1, 2, (64, 64, 64)))
