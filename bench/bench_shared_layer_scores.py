"""Estimator time per model with each model's per-layer C_cons and F_v computed once vs per variant.

``score_features`` (``scoring/methods.py``) computes ``ccfv_layers`` once and passes it to
``score_methods(..., layer_scores=...)``, so ``ccfv`` and the w/o-C_cons, w/o-F_v and single-scale
ablations, and the logged per-layer components, share one pass of W2s and energies. Before, every
variant and the logged components recomputed it. This times both ways side by side, in one run,
on feature sets cached by ``score`` (``.ccfv-cache/features/<model>/<key>.npz``), and checks that the
scores are identical.

    python bench/bench_shared_layer_scores.py --cache .ccfv-cache --models 24
"""

from __future__ import annotations

import argparse
import glob
import logging
import os
import sys
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", default=".ccfv-cache", help="feature cache folder written by score/study/demo")
    ap.add_argument("--models", type=int, default=24, help="at most this many cached feature sets")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)
    logging.disable(logging.WARNING)  # the energies' clamping warnings would drown the output

    from mlflow_ccfv.estimators import METHODS, ccfv_layers, score_methods
    from mlflow_ccfv.features.feature_set import FeatureSet
    from mlflow_ccfv.scoring import DEFAULT_METHODS

    files = sorted(glob.glob(os.path.join(args.cache, "features", "*", "*.npz")))[: args.models]
    if not files:
        print(f"No cached features under {args.cache}/features: run `mlflow-ccfv demo` (or score) first.")
        return 2
    inputs = []
    for f in files:
        fs = FeatureSet.load(f)
        inputs.append((fs.ccfv_inputs(), fs.baseline_inputs()))

    def per_variant(layers, baseline, methods):
        out = score_methods(layers, *baseline, methods=methods)
        ccfv_layers(layers)  # the logged per-layer components, computed again
        return out

    def shared(layers, baseline, methods):
        parts = ccfv_layers(layers)
        return score_methods(layers, *baseline, methods=methods, layer_scores=parts)

    for name, methods in (("all", list(METHODS)), ("default", list(DEFAULT_METHODS))):
        seconds = {"per_variant": 0.0, "shared": 0.0}
        for rep in range(args.repeats):
            for layers, baseline in inputs:
                order = (("per_variant", per_variant), ("shared", shared))
                results = {}
                for label, fn in order if rep % 2 == 0 else order[::-1]:
                    start = time.perf_counter()
                    results[label] = fn(layers, baseline, methods)
                    seconds[label] += time.perf_counter() - start
                if results["per_variant"] != results["shared"]:
                    raise AssertionError(f"scores differ: {results}")
        n = args.repeats * len(inputs)
        print(
            f"methods={name} ({len(methods)}), {len(inputs)} models x {args.repeats}: "
            f"per variant {seconds['per_variant'] / n:.3f} s/model, shared {seconds['shared'] / n:.3f} s/model, "
            f"ratio {seconds['per_variant'] / seconds['shared']:.2f}x (identical scores)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
