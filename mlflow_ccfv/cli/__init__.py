"""Command line: ``mlflow-ccfv <command>``; each MLproject entry point is one of these commands.

Commands live one per module in this package and hold no logic beyond parsing and calling.
"""

from __future__ import annotations

import importlib
import logging

import click

from mlflow_ccfv.cli.base import CCFVCommand

__all__ = ["CCFVCommand", "main"]

#: Command names; each is a module in this package defining a click command of the same name.
COMMANDS = (
    "synth",
    "verify",
    "register",
    "bank",
    "export_bank",
    "log_dataset",
    "score",
    "rank",
    "pretrain",
    "finetune",
    "select",
    "select_study",
    "report",
    "compare_studies",
    "study",
    "demo",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Debug log output (the default shows progress at INFO).")
def main(verbose: bool) -> None:
    """Transferability estimation (CC-FV) for 3D segmentation models, in MLflow."""
    level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    # one line per retried request to a lost server; the command reports the loss itself (exit 6)
    logging.getLogger("urllib3.connectionpool").setLevel(level if verbose else logging.ERROR)


for _name in COMMANDS:
    main.add_command(getattr(importlib.import_module(f"mlflow_ccfv.cli.{_name}"), _name), _name.replace("_", "-"))
