"""``mlflow-ccfv synth``: write synthetic CT tasks (one, several, or the whole family) in MSD layout."""

from __future__ import annotations

import click

from mlflow_ccfv.cli.base import CCFVCommand, EnumChoice, bool_option, exit_on_input_error
from mlflow_ccfv.options import Orientation

__all__ = ["synth"]


def _triple(kind: type, what: str):
    """Callback: ``64,64,48`` (or ``64x64x48``) -> three ``kind`` values; the error names the option."""

    def parse(ctx, param, value):
        if value is None:
            return None
        parts = [p for p in str(value).replace("x", ",").split(",") if p.strip()]
        try:
            values = tuple(kind(p) for p in parts)
        except ValueError:
            values = ()
        if len(values) != 3:
            raise click.BadParameter(f"expected three numbers ({what}) like {param.default}, got {str(value)[:60]!r}")
        return values

    return parse


@click.command("synth", cls=CCFVCommand)
@click.option(
    "--out", "out_dir", type=click.Path(file_okay=False), required=True, help="Folder to write the task folders into."
)
@click.option(
    "--task",
    "tasks",
    multiple=True,
    help="Task name, TaskNN or alias (liver, lung, pancreas, spleen, colon); repeat for several; default all five.",
)
@click.option("--n-cases", type=click.IntRange(1, 10_000), default=10, show_default=True, help="Cases per task.")
@click.option(
    "--shape",
    default="64,64,48",
    show_default=True,
    callback=_triple(int, "integers"),
    help="Volume size X,Y,Z in voxels (8-1024 a side).",
)
@click.option(
    "--spacing",
    default="5,5,5",
    show_default=True,
    callback=_triple(float, "numbers"),
    help="Voxel size in mm (0.01-100).",
)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed; same seed, same files.")
@click.option(
    "--orientation",
    type=EnumChoice(Orientation),
    default=Orientation.LPS.value,
    show_default=True,
    help="Storage axis codes of the NIfTI files.",
)
@bool_option("--overwrite", help="true: replace existing task folders.")
@click.option(
    "--figure",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also render one axial slice of each task to this PNG.",
)
def synth(out_dir, tasks, n_cases, shape, spacing, seed, orientation, overwrite, figure) -> None:
    """Generate synthetic CT segmentation tasks (MSD layout) into OUT (settings checked before any folder is made)."""
    from mlflow_ccfv.data.synthetic import SyntheticSettings, generate_family, plot_family

    settings = SyntheticSettings(
        n_cases=n_cases, shape=shape, spacing=spacing, seed=seed, orientation=orientation, overwrite=overwrite
    )
    with exit_on_input_error("synth"):
        written = generate_family(out_dir, tasks=list(tasks) or None, settings=settings)
        if figure:
            plot_family(figure, tasks=list(written), shape=shape, spacing=spacing, seed=seed)
    for name, path in written.items():
        click.echo(f"{name}: {path}")
