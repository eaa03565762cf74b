from mlflow_ccfv.cli import main

main()
