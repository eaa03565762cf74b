"""``mlflow-ccfv verify``: the integrity check of an MSD task folder."""

from __future__ import annotations

import json

import click

from mlflow_ccfv.cli.base import CCFVCommand


@click.command("verify", cls=CCFVCommand)
@click.argument("dataset")
@click.option(
    "--data-root",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder holding Task* folders, for names like Task07 (default $MLFLOW_CCFV_DATA or .).",
)
@click.option(
    "--affine-tol",
    type=float,
    default=1e-3,
    show_default=True,
    help="Allowed image/label affine difference (mm per mm of the largest affine entry).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the train/test split shown.")
@click.option("--test-fraction", type=float, default=0.2, show_default=True, help="Held-out share of the split.")
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
    from mlflow_ccfv.data import DatasetError, MSDDataset

    try:
        ds = MSDDataset.load(dataset, data_root=data_root)
        report = ds.verify(affine_tol=affine_tol)
        split = ds.split(seed=seed, test_fraction=test_fraction)
        digest = ds.digest()
        if manifest_path:
            ds.manifest(split).to_csv(manifest_path, index=False)
    except DatasetError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(report.summary())
    click.echo(f"  split (seed {seed}): {len(split.train)} train, {len(split.test)} test: " + json.dumps(split.test))
    click.echo(f"  digest: {digest}")
