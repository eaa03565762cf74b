"""Which layers of which network, and sliding-window voxel sampling of their features."""

from mlflow_ccfv.features.networks import (
    SUPPORTED_ARCHITECTURES,
    NetworkSpec,
    build_network,
    load_state_dict_strict,
    small_spec,
)

__all__ = ["SUPPORTED_ARCHITECTURES", "NetworkSpec", "build_network", "load_state_dict_strict", "small_spec"]
