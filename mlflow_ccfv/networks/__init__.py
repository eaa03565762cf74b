"""Networks from outside the project: MONAI bundles, nnU-Net v2 trained models and the
``dynamic_network_architectures`` family nnU-Net builds them from.

Import the sub-module you need (:mod:`~mlflow_ccfv.networks.bundle`,
:mod:`~mlflow_ccfv.networks.nnunet`, :mod:`~mlflow_ccfv.networks.dynamic`); importing this package
imports nothing heavy.
"""
