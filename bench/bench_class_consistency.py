"""Benchmark: batched exact W2 (mlflow_ccfv.estimators.pairwise_w2) against the reference algorithm.

The reference is what the official CC-FV code does for every pair of cases: ``np.cov`` of both
sample sets and ``scipy.linalg.sqrtm`` of the d x d product of the covariances (Eq. 1). It is run
over the N(N-1)/2 unordered pairs (W2 is symmetric; Eq. 2's ordered pairs would double its time).
One run prints both timings, their ratio, and the largest relative difference over all pairs.

    python bench/bench_class_consistency.py                       # N=100, d=256, n=100, float64
    python bench/bench_class_consistency.py --reference-pairs 200 # time 200 reference pairs only

With ``--reference-pairs`` (a random subset) or ``--time-limit`` (stop the reference after so many
seconds, pairs in random order) the reference time is extrapolated from the pairs done; add
``--check-workers K`` to still compare *every* pair: the pairs the timed run skipped are computed
the reference way in K single-threaded worker processes (untimed, accuracy only).

    python bench/bench_class_consistency.py --time-limit 60 --check-workers 15   # a 16-core machine
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import scipy.linalg
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from mlflow_ccfv.estimators import pairwise_w2


def reference_w2(x: np.ndarray, y: np.ndarray) -> float:
    """Eq. 1 the reference way: per pair np.cov + scipy.linalg.sqrtm of the d x d product."""
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    w2_sq = np.sum((x.mean(0) - y.mean(0)) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    return float(np.sqrt(max(w2_sq, 0.0)))


def _reference_chunk(args: tuple[list[np.ndarray], list[tuple[int, int]]]) -> list[float]:
    cases, pairs = args
    with threadpool_limits(1):
        return [reference_w2(cases[i], cases[j]) for i, j in pairs]


def make_cases(n_cases: int, n_samples: int, dim: int, seed: int) -> list[np.ndarray]:
    """Class features of N cases: a shared correlated Gaussian, a per-case shift and scale."""
    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal((dim, dim)) / np.sqrt(dim)
    cases = []
    for _ in range(n_cases):
        shift = 0.3 * rng.standard_normal(dim)
        scale = rng.uniform(0.8, 1.2)
        cases.append(scale * rng.standard_normal((n_samples, dim)) @ mixing + shift)
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=100)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="timings of the batched version")
    parser.add_argument(
        "--reference-pairs", type=int, default=None, help="time only this many (random) reference pairs and extrapolate"
    )
    parser.add_argument(
        "--time-limit", type=float, default=None, help="stop the reference after this many seconds and extrapolate"
    )
    parser.add_argument(
        "--check-workers",
        type=int,
        default=0,
        help="compare every pair: compute the untimed rest in this many processes",
    )
    args = parser.parse_args()

    cases = make_cases(args.cases, args.samples, args.dim, args.seed)
    pairs = list(itertools.combinations(range(args.cases), 2))
    print(
        f"CPUs available: {len(os.sched_getaffinity(0))}; "
        f"N={args.cases} cases, d={args.dim}, n={args.samples} samples per case, float64; "
        f"{len(pairs)} unordered pairs"
    )

    fast_times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        dist = pairwise_w2(cases)
        fast_times.append(time.perf_counter() - t0)
    fast = statistics.median(fast_times)

    if args.reference_pairs is not None and args.reference_pairs < len(pairs):
        chosen = pairs[: args.reference_pairs]
    else:
        chosen = pairs
    if len(chosen) < len(pairs) or args.time_limit is not None:
        # a random order, so that a subset or a run cut short is an unbiased sample of the pairs
        order = np.random.default_rng(args.seed + 1).permutation(len(pairs))
        chosen = [pairs[i] for i in order[: len(chosen)]]
    ref = []
    t0 = time.perf_counter()
    for i, j in tqdm(chosen, desc="reference (np.cov + sqrtm)", mininterval=5, disable=None):
        ref.append(reference_w2(cases[i], cases[j]))
        if args.time_limit is not None and time.perf_counter() - t0 > args.time_limit:
            break
    ref_time = time.perf_counter() - t0
    chosen = chosen[: len(ref)]
    ref = np.asarray(ref)
    ref_total = ref_time * len(pairs) / len(chosen)

    checked, checked_ref = list(chosen), list(ref)
    if args.check_workers > 0 and len(chosen) < len(pairs):
        done = set(chosen)
        rest = [p for p in pairs if p not in done]
        chunks = [rest[k :: args.check_workers] for k in range(args.check_workers)]
        with ProcessPoolExecutor(args.check_workers) as pool:
            results = list(pool.map(_reference_chunk, [(cases, c) for c in chunks]))
        for chunk, values in zip(chunks, results):
            checked += chunk
            checked_ref += values
    fast_vals = np.array([dist[i, j] for i, j in checked])
    rel = np.abs(fast_vals - np.asarray(checked_ref)) / np.abs(np.asarray(checked_ref))
    # time the batched version again after the reference, under the machine load the reference saw
    t0 = time.perf_counter()
    pairwise_w2(cases)
    fast_times.append(time.perf_counter() - t0)
    fast = statistics.median(fast_times)

    scope = "all pairs" if len(chosen) == len(pairs) else f"extrapolated from {len(chosen)} of {len(pairs)} pairs"
    print(f"reference per pair:      {ref_time / len(chosen) * 1e3:.1f} ms")
    print(f"reference, all pairs:    {ref_total:.1f} s ({scope})")
    print(
        f"batched pairwise_w2:     {fast:.3f} s (median of {len(fast_times)}: "
        f"{', '.join(f'{t:.3f}' for t in fast_times)})"
    )
    print(f"speed-up:                {ref_total / fast:.0f}x")
    print(
        f"max relative difference: {rel.max():.2e} over {len(checked)} of {len(pairs)} pairs "
        f"({'OK' if rel.max() <= 1e-6 else 'ABOVE 1e-6'})"
    )


if __name__ == "__main__":
    main()
