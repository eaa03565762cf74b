"""Sliding-window voxel sampling of decoder features (Sec. 2.1) and the FeatureSet that holds them."""

from mlflow_ccfv.features.feature_set import CaseSamples, FeatureSet
from mlflow_ccfv.features.sampler import sample_features
from mlflow_ccfv.features.sampler_config import SamplerConfig
from mlflow_ccfv.features.voxel_plan import VoxelPlan, sample_voxels

__all__ = [
    "CaseSamples",
    "FeatureSet",
    "SamplerConfig",
    "VoxelPlan",
    "sample_features",
    "sample_voxels",
]
