"""The study layer: how well scores predict fine-tune Dice, as numbers, tables and plots (no MLflow).

- :mod:`~mlflow_ccfv.study.correlation`: weighted Kendall's tau and Pearson (the paper's evaluation);
- :mod:`~mlflow_ccfv.study.long_table`: the study's long table, correlations and top-1 regret per (dataset, method);
- :mod:`~mlflow_ccfv.study.paper_tables`, :mod:`~mlflow_ccfv.study.scatter`: Tables 1-2 and the Fig.-2 scatter plots;
- :mod:`~mlflow_ccfv.study.report`: the whole report written to a folder;
- :mod:`~mlflow_ccfv.study.ranking`: one target's ranked table (Markdown) and bar plot.

``report`` is not imported here (it pulls in matplotlib and pandas): import it directly.
"""

from mlflow_ccfv.study.correlation import pearson, weighted_tau

__all__ = ["pearson", "weighted_tau"]
