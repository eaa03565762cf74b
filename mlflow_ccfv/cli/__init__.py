"""Command line: ``mlflow-ccfv <command>``; each MLproject entry point is one of these commands.

Commands live one per module in this package and hold no logic beyond parsing and calling.
"""

from __future__ import annotations

import importlib
import logging

import click

from mlflow_ccfv.cli.base import CCFVCommand

__all__ = ["CCFVCommand", "main"]

#: command name -> module in this package defining a click command of the same name.
COMMANDS = {
    "synth": "synth",
    "verify": "verify",
    "register": "register",
    "score": "score",
    "pretrain": "pretrain",
    "finetune": "finetune",
    "report": "report",
    "study": "study",
    "demo": "demo",
}


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Debug log output (the default shows progress at INFO).")
def main(verbose: bool) -> None:
    """Transferability estimation (CC-FV) for 3D segmentation models, in MLflow."""
    level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


for _name, _module in COMMANDS.items():
    try:
        _mod = importlib.import_module(f"mlflow_ccfv.cli.{_module}")
    except ModuleNotFoundError as _exc:  # a command not written yet
        if _exc.name != f"mlflow_ccfv.cli.{_module}":
            raise
        continue
    main.add_command(getattr(_mod, _name), _name)
