"""Which layers of which network, and sliding-window voxel sampling of their features."""

from mlflow_ccfv.features.feature_set import CaseSamples, FeatureSet
from mlflow_ccfv.features.layers import decoder_layers, output_head, resolve_layers
from mlflow_ccfv.features.networks import (
    SUPPORTED_ARCHITECTURES,
    NetworkSpec,
    build_network,
    load_state_dict_strict,
    small_spec,
)
from mlflow_ccfv.features.sampler import SamplerConfig, VoxelPlan, sample_features, sample_voxels

__all__ = [
    "SUPPORTED_ARCHITECTURES",
    "CaseSamples",
    "FeatureSet",
    "NetworkSpec",
    "SamplerConfig",
    "VoxelPlan",
    "build_network",
    "decoder_layers",
    "load_state_dict_strict",
    "output_head",
    "resolve_layers",
    "sample_features",
    "sample_voxels",
    "small_spec",
]
