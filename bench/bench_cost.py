"""Cost ratio: wall time of scoring a whole bank vs fine-tuning it, measured in one run.

The point of transferability estimation is that scoring the bank costs a small fraction of
fine-tuning it (target: at most 1/50). This runs both on the same bank and target, in a throw-away
sqlite store: the bank's scoring (``score_versions``, every estimator, features never cached) and
the bank's fine-tuning (``finetune_version`` at the study's budget, evaluation included). The cost
of either does not depend on the weights, so the bank is randomly initialised networks of the
study's architectures (``--per-arch`` per architecture) unless ``--tracking-uri``/``--bank`` name an
existing one.

    python bench/bench_cost.py                       # Task09, 2 UNet + 2 UNETR, 100 fine-tune steps
    python bench/bench_cost.py --finetune-steps 300 --per-arch 3

Prints scoring seconds, fine-tuning seconds, their ratio, and the fine-tuning budget (steps) at
which the ratio would reach 1/50, from the measured per-step cost.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-root", default="data/synthetic", help="synthetic tasks (generated if missing)")
    ap.add_argument("--target", default="Task09")
    ap.add_argument("--n-cases", type=int, default=10)
    ap.add_argument("--architectures", default="UNet,UNETR")
    ap.add_argument("--per-arch", type=int, default=2, help="bank models per architecture")
    ap.add_argument("--finetune-steps", type=int, default=100, help="the study's default")
    ap.add_argument("--methods", default="all")
    ap.add_argument("--tracking-uri", default="", help="existing store (default: a temporary sqlite store)")
    ap.add_argument("--bank", default="", help="existing bank in --tracking-uri (default: build one)")
    args = ap.parse_args(argv)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

    import mlflow

    from mlflow_ccfv.data import MSDDataset, make_target
    from mlflow_ccfv.data.synthetic import SyntheticSettings
    from mlflow_ccfv.networks import small_spec
    from mlflow_ccfv.pipelines.controls import register_random_init
    from mlflow_ccfv.pipelines.finetune import finetune_version
    from mlflow_ccfv.pipelines.finetune_setup import FinetuneRequest
    from mlflow_ccfv.pipelines.score import ScoreConfig, score_versions
    from mlflow_ccfv.pipelines.study import ensure_synthetic
    from mlflow_ccfv.tracking.search import bank_versions, version_uri
    from mlflow_ccfv.training import TrainConfig

    tmp = tempfile.TemporaryDirectory()
    mlflow.set_tracking_uri(args.tracking_uri or f"sqlite:///{Path(tmp.name) / 'mlflow.db'}")
    os.chdir(tmp.name if not args.tracking_uri else os.getcwd())
    mlflow.set_experiment("ccfv-bench-cost")
    folder = (
        ensure_synthetic(
            Path(args.data_root).resolve() if not os.path.isabs(args.data_root) else args.data_root,
            [args.target],
            SyntheticSettings(n_cases=args.n_cases),
            progress=False,
        )[0]
        if not args.bank
        else None
    )
    if args.bank:
        bank = bank_versions(args.bank)
    else:
        bank = [
            register_random_init(
                small_spec(arch, 1, 2, (32, 32, 32)),
                (32, 32, 32),
                bank="bench",
                seed=s,
                name=f"bench-{arch.lower()}-{s}",
            )
            for arch in args.architectures.split(",")
            for s in range(args.per_arch)
        ]
    ds = MSDDataset.load(folder)
    split = ds.split()
    train = list(ds.iter_cases(split.train, progress=False))
    test = list(ds.iter_cases(split.test, progress=False))
    target = make_target(ds, "train")
    cache = Path(tmp.name) / "features"

    start = time.perf_counter()
    score_versions(bank, target, ScoreConfig(args.methods, force=True, cache_dir=cache))
    score_s = time.perf_counter() - start

    config = TrainConfig(steps=args.finetune_steps, learning_rate=3e-3, seed=0)
    start = time.perf_counter()
    for v in bank:
        finetune_version(
            FinetuneRequest(
                version_uri(v), ds, config, cases=(train, test), force=True, log_finetuned_model=True, progress=False
            )
        )
    finetune_s = time.perf_counter() - start

    ratio = score_s / finetune_s
    # fine-tuning time is (per-step cost) x steps + fixed evaluation; solve for the steps giving 1/50
    per_model_score = score_s / len(bank)
    print(
        f"bank: {len(bank)} models ({args.architectures}), target {ds.name} "
        f"({len(train)} train / {len(test)} test cases), methods={args.methods}"
    )
    print(f"scoring the bank:    {score_s:8.1f} s  ({per_model_score:.1f} s per model, features not cached)")
    print(f"fine-tuning the bank:{finetune_s:8.1f} s  ({args.finetune_steps} steps per model + evaluation)")
    print(
        f"ratio score/finetune: {ratio:.4f}  (1/{1 / ratio:.1f}); target <= 1/50 = 0.02: "
        f"{'met' if ratio <= 0.02 else 'not met at this budget'}"
    )
    per_step = finetune_s / (len(bank) * args.finetune_steps)  # upper bound: includes evaluation
    needed = 50 * score_s / (len(bank) * per_step)
    print(
        f"at <= {per_step:.3f} s per fine-tune step, the ratio reaches 1/50 from about {needed:.0f} steps per model "
        f"(the paper fine-tunes for 100,000)"
    )
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
