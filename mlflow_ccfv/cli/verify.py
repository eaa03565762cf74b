"""``mlflow-ccfv verify``: the integrity check of an MSD task folder."""

from __future__ import annotations

import json

import click

from mlflow_ccfv.cli import shared_options as shared
from mlflow_ccfv.cli.base import command, exit_on_input_error

__all__ = ["verify"]


@command()
@click.argument("dataset")
@shared.data_root_option(default=".", help_text="Folder holding Task* folders, for names like Task07.")
@click.option(
    "--affine-tol",
    type=click.FloatRange(min=0, max=1),
    default=1e-3,
    show_default=True,
    help="Allowed image/label affine difference (mm per mm of the largest affine entry), in [0, 1].",
)
@shared.seed_option("--seed", "Seed of the split shown.")
@click.option(
    "--test-fraction",
    type=click.FloatRange(min=0, max=1, max_open=True),
    default=0.2,
    show_default=True,
    help="Held-out share of the split, in [0, 1).",
)
@click.option(
    "--manifest",
    "manifest_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also write the manifest (case, files, SHA-256, split) to this CSV file.",
)
def verify(
    dataset: str, data_root: str | None, affine_tol: float, seed: int, test_fraction: float, manifest_path: str | None
) -> None:
    """Check every case of DATASET (a task folder or a name like Task07) and print a summary."""
    from mlflow_ccfv.data import MSDDataset

    with exit_on_input_error("verify"):
        ds = MSDDataset.load(dataset, data_root=data_root)
        report = ds.verify(affine_tol=affine_tol)
        split = ds.split(seed=seed, test_fraction=test_fraction)
        digest = ds.digest()
        if manifest_path:
            ds.manifest(split).to_csv(manifest_path, index=False)
    click.echo(report.summary())
    click.echo(f"  split (seed {seed}): {len(split.train)} train, {len(split.test)} test: " + json.dumps(split.test))
    click.echo(f"  digest: {digest}")
