"""mlflow-ccfv: transferability estimation (CC-FV, Yang et al., MICCAI 2023) for 3D medical
image segmentation models, run inside MLflow.

Layers (data flows one way; a module imports only from the layers above it)::

    data -> features -> estimators -> study -> tracking -> cli

``estimators`` is pure array code (numpy / torch) and never imports mlflow or monai. Importing this
package imports nothing heavy: import the sub-package you need.
"""

__version__ = "0.1.0"
