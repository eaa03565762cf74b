from mlflow_ccfv.cli import main

__all__: list[str] = []


main()
