"""Write a bank's pre-training curves (the source Dice every ``--curve-every`` steps) and the plateau
check: ``pretraining_curves.{csv,png}`` and ``pretraining_plateau.{md,csv}``, as ``report`` does for a
study, for a bank that has no fine-tune Dice yet.

    python results/pretrain-unet-8k/make_curves.py --tracking-uri sqlite:///unet8k.db --bank unet8k \
        --out-dir results/pretrain-unet-8k
"""

from __future__ import annotations

import argparse
from pathlib import Path

import mlflow

from mlflow_ccfv.pipelines.report import pretraining_curves
from mlflow_ccfv.study.evidence import pretraining_curve_plot, pretraining_plateau
from mlflow_ccfv.study.tables import to_markdown
from mlflow_ccfv.tracking.search import bank_versions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--bank", required=True)
    parser.add_argument("--out-dir", type=Path, required=True)
    args = parser.parse_args()
    mlflow.set_tracking_uri(args.tracking_uri)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    curves = pretraining_curves(bank_versions(args.bank))
    if curves.empty:
        raise SystemExit(f"bank {args.bank!r} has no pre-training curves in {args.tracking_uri}")
    curves.to_csv(args.out_dir / "pretraining_curves.csv", index=False)
    pretraining_curve_plot(curves, args.out_dir / "pretraining_curves.png")
    plateau = pretraining_plateau(curves)
    plateau.to_csv(args.out_dir / "pretraining_plateau.csv", index=False)
    table = to_markdown(plateau.set_index(["architecture", "source_dataset"]))
    (args.out_dir / "pretraining_plateau.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
