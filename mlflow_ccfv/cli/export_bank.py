"""``mlflow-ccfv export-bank``: write a bank's models as safetensors files with a manifest of digests."""

from __future__ import annotations

import click

from mlflow_ccfv.cli import shared_options as shared
from mlflow_ccfv.cli.base import check_tracking_server, command, exit_on_input_error
from mlflow_ccfv.options import split_list

__all__ = ["export_bank"]


@command()
@shared.bank_option("Bank to export (tag ccfv.bank); only read.", required=True)
@shared.folder_option(
    "--out",
    "Folder to write <name>.safetensors and manifest.json into (created if needed).",
    name="out_dir",
    required=True,
)
@click.option(
    "--names",
    default="",
    help="Registered model names to export, comma-separated (default: every pre-trained model of the bank).",
)
@shared.data_root_option(
    help_text="Where the bank's sources were generated: each model's data is checked against its budget digest "
    "and its synth/pretrain commands written into the manifest."
)
def export_bank(bank: str, out_dir: str, names: str, data_root: str) -> None:
    """Export the newest version of each model of BANK (network weights as safetensors, SHA-256 digests,
    specs, pre-training recipes and the commands that reproduce them) for `demo --bank-dir` or shipping."""
    from mlflow_ccfv.pipelines.shipped_bank import export_bank as export

    with exit_on_input_error("export-bank"):
        check_tracking_server()
        manifest = export(bank, out_dir, names=split_list(names) or None, data_root=data_root)
    for m in manifest.models:
        click.echo(f"{m.name}: {out_dir}/{m.file} sha256 {m.sha256} (from {m.exported_from})")
    click.echo(f"manifest: {out_dir}/manifest.json")
