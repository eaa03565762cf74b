"""Sliding-window voxel sampling of decoder features (Sec. 2.1) and the FeatureSet that holds them."""

from mlflow_ccfv.features.feature_set import CaseSamples, FeatureSet
from mlflow_ccfv.features.sampler import SamplerConfig, VoxelPlan, sample_features, sample_voxels

__all__ = [
    "CaseSamples",
    "FeatureSet",
    "SamplerConfig",
    "VoxelPlan",
    "sample_features",
    "sample_voxels",
]
