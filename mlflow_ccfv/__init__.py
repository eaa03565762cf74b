"""mlflow-ccfv: transferability estimation (CC-FV, Yang et al., MICCAI 2023) for 3D medical
image segmentation models, run inside MLflow.

Layers (data flows one way; a module imports only from the layers before it; docs/architecture.md)::

    data -> networks -> features, estimators -> scoring, training -> study -> tracking -> pipelines -> cli

``estimators`` is pure array code (numpy / scipy) and never imports mlflow, monai or torch; only
``tracking`` (and the ``pipelines`` and ``cli`` built on it) imports mlflow. Importing this package
imports nothing heavy: import the sub-package you need.
"""

__all__ = ["__version__"]


__version__ = "0.1.0"
