"""study layer of mlflow_ccfv (see the package docstring for the layering)."""
