"""``mlflow-ccfv synth``: write synthetic CT tasks (one, several, or the whole family) in MSD layout."""

from __future__ import annotations

import click

from mlflow_ccfv.cli import shared_options as shared
from mlflow_ccfv.cli.base import command, exit_on_input_error
from mlflow_ccfv.cli.types import EnumChoice, Triple
from mlflow_ccfv.options import SYNTHETIC_MAX_CASES, SYNTHETIC_SHAPE_RANGE, SYNTHETIC_SPACING_RANGE, Orientation

__all__ = ["synth"]


def _triple_option(flag: str, default: str, kind: type, what: str, help: str) -> shared.Decorator:
    """An option of three ``kind`` values (:class:`~mlflow_ccfv.cli.types.Triple`); the generator checks their
    bounds before any folder is made."""
    return click.option(flag, default=default, show_default=True, type=Triple(kind, what), help=help)


@command()
@click.option(
    "--out", "out_dir", type=click.Path(file_okay=False), required=True, help="Folder to write the task folders into."
)
@click.option(
    "--task",
    "tasks",
    multiple=True,
    help="Task name, TaskNN or alias (liver, lung, pancreas, spleen, colon); repeat for several; default all five.",
)
@click.option(
    "--n-cases", type=click.IntRange(1, SYNTHETIC_MAX_CASES), default=10, show_default=True, help="Cases per task."
)
@_triple_option(
    "--shape", "64,64,48", int, "integers", "Volume size X,Y,Z in voxels ({}-{} a side).".format(*SYNTHETIC_SHAPE_RANGE)
)
@_triple_option(
    "--spacing", "5,5,5", float, "numbers", "Voxel size in mm ({:g}-{:g}).".format(*SYNTHETIC_SPACING_RANGE)
)
@shared.seed_option("--seed", "Seed; same seed, same files.", maximum=None)
@click.option(
    "--orientation",
    type=EnumChoice(Orientation),
    default=Orientation.LPS.value,
    show_default=True,
    help="Storage axis codes of the NIfTI files.",
)
@shared.bool_option("--overwrite", help="true: replace existing task folders.")
@click.option(
    "--figure",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also render one axial slice of each task to this PNG.",
)
def synth(out_dir, tasks, n_cases, shape, spacing, seed, orientation, overwrite, figure) -> None:
    """Generate synthetic CT segmentation tasks (MSD layout) into OUT (settings checked before any folder is made)."""
    from mlflow_ccfv.data.synthetic import SyntheticSettings, generate_family, plot_family

    with exit_on_input_error("synth"):
        settings = SyntheticSettings(
            n_cases=n_cases, shape=shape, spacing=spacing, seed=seed, orientation=orientation, overwrite=overwrite
        )
        written = generate_family(out_dir, tasks=list(tasks) or None, settings=settings)
        if figure:
            plot_family(figure, tasks=list(written), shape=shape, spacing=spacing, seed=seed)
    for name, path in written.items():
        click.echo(f"{name}: {path}")
