"""Pipelines: the workflows that combine the layers below (data, networks, features, estimators,
scoring, training, study) with MLflow (tracking). One module per MLproject workflow:

- :mod:`~mlflow_ccfv.pipelines.register`: add a network to the bank (spec + checkpoint, random init, a logged model);
- :mod:`~mlflow_ccfv.pipelines.score`: score a bank on a target, tag, alias and rank it;
- :mod:`~mlflow_ccfv.pipelines.pretrain`: pre-train and register bank models;
- :mod:`~mlflow_ccfv.pipelines.controls`: register random-init controls and twins;
- :mod:`~mlflow_ccfv.pipelines.finetune`: fine-tune a version and tag its measured Dice;
- :mod:`~mlflow_ccfv.pipelines.select`: shortlist by the scores, then successive halving with short fine-tunes;
- :mod:`~mlflow_ccfv.pipelines.report`: correlations of stored scores with stored Dice;
- :mod:`~mlflow_ccfv.pipelines.study`: the paper's experiment (and the demo) end to end.

Import the module you need; this package imports nothing itself.
"""

__all__: list[str] = []
