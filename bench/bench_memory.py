"""Memory as the bank grows: where a serial scoring's RSS goes, version by version.

Two measurements (docs/deploy.md, section 4, has the numbers):

- ``scoring``: registers ``--versions`` random-init small UNets (``small_spec("UNet", 1, 2)``) in a local
  sqlite store under ``--work`` (once; a rerun with more versions registers only the new ones) and scores
  them serially on a tiny synthetic target (5 cases of 32x32x24 voxels), printing the RSS after chosen
  versions and around the driver's last steps (rerank, ranking plot). ``--trace`` adds ``tracemalloc``
  (Python-level growth between the 10th and the last version, largest sites first; slow);
  ``--trim`` calls ``gc.collect()`` and ``malloc_trim(0)`` after every version.
- ``plot``: the peak RSS of drawing the ranking plot for 40, 160 and 500 versions, each in a forked
  child (its peak is its own), for the plot of this checkout.

    python bench/bench_memory.py scoring --versions 40  --work /tmp/ccfv-memory
    python bench/bench_memory.py scoring --versions 160 --work /tmp/ccfv-memory
    python bench/bench_memory.py plot
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BANK = "memory"


def _rss() -> float:
    """Resident set size now, MB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def scoring(args) -> None:
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)
    import mlflow
    import torch

    import mlflow_ccfv.pipelines.score as score
    from mlflow_ccfv.data import MSDDataset, make_target
    from mlflow_ccfv.data.synthetic import generate_task
    from mlflow_ccfv.networks import random_state_dict, small_spec
    from mlflow_ccfv.pipelines.executors import SerialExecutor
    from mlflow_ccfv.tracking import bank_versions, register_network

    torch.set_num_threads(1)
    uri = f"sqlite:///{work / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    os.environ["MLFLOW_TRACKING_URI"] = uri
    data = work / "data"
    if not data.exists():
        generate_task("Task07", data, n_cases=5, shape=(32, 32, 24), seed=0, progress=False)
    spec = small_spec("UNet", 1, 2)
    have = len(bank_versions(BANK))
    for i in range(have, args.versions):
        register_network(spec, random_state_dict(spec, i), f"memory-unet-{i // 50:03d}", "none", bank=BANK)
    if have < args.versions:
        print(f"registered {args.versions - have} versions; run again for a scoring process of its own")
        return
    versions = bank_versions(BANK)[: args.versions]
    target = make_target(MSDDataset.load(next(data.iterdir())), "train")
    libc = ctypes.CDLL("libc.so.6") if args.trim else None
    after: list[tuple[int, float, float, float]] = []
    snapshots: dict[int, tracemalloc.Snapshot] = {}
    n = len(versions)

    class Measuring(SerialExecutor):
        def map(self, fn, items, on_done=None):
            out = []
            for i, item in enumerate(items):
                out.append(fn(item))
                if on_done is not None:
                    on_done(i, out[-1])
                if libc is not None:
                    gc.collect()
                    libc.malloc_trim(0)
                traced = tracemalloc.get_traced_memory()[0] / 2**20 if tracemalloc.is_tracing() else 0.0
                after.append((i + 1, _rss(), _peak(), traced))
                if tracemalloc.is_tracing() and i + 1 in (10, n):
                    snapshots[i + 1] = tracemalloc.take_snapshot()
            return out

    phases: dict[str, tuple[float, float]] = {}

    def around(name, fn):
        def wrapped(*a, **k):
            phases[f"before {name}"] = (_rss(), _peak())
            result = fn(*a, **k)
            phases[f"after {name}"] = (_rss(), _peak())
            return result

        return wrapped

    score.ranking_plot = around("plot", score.ranking_plot)  # type: ignore[assignment]
    score.rerank = around("rerank", score.rerank)  # type: ignore[assignment]
    if args.trace:
        tracemalloc.start(10)
    mlflow.set_experiment("ccfv-memory")
    phases["start"] = (_rss(), _peak())
    start = time.perf_counter()
    score.score_versions(versions, target, ["ccfv"], cache_dir=tempfile.mkdtemp(dir=work), executor=Measuring())
    phases["end"] = (_rss(), _peak())
    print(f"scored {n} versions in {time.perf_counter() - start:.0f} s")
    print("version | RSS (MB) | peak RSS (MB) | traced Python memory (MB)")
    for k in (1, 5, 10, 20, 40, 80, 120, 160, 200, 500):
        if k <= len(after):
            print(" | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in after[k - 1]))
    print("phases (RSS, peak RSS) MB:", json.dumps({k: [round(x, 1) for x in v] for k, v in phases.items()}))
    if 10 in snapshots and n in snapshots and n > 10:
        print(f"largest Python-level growth, version 10 -> {n}:")
        for stat in snapshots[n].compare_to(snapshots[10], "traceback")[:12]:
            print(
                f"{stat.size_diff / 1024:8.1f} KiB {stat.count_diff:6d} blocks  {stat.traceback.format()[-2].strip()}"
            )


def plot(args) -> None:
    import numpy as np

    from mlflow_ccfv.study.ranking import rank_table, ranking_plot

    rng = np.random.default_rng(0)
    tmp = tempfile.mkdtemp()

    def table(n: int):
        rows = [
            {"model": f"memory-unet-{i // 50:03d}/{i % 50 + 1}", "source_dataset": "none", "ccfv": float(rng.normal())}
            for i in range(n)
        ]
        return rank_table([{**r, "error": None} for r in rows], ["ccfv"], "Task07")

    ranking_plot(table(3), os.path.join(tmp, "warm-up.png"))  # fonts and imports, outside the measurement
    for n in (40, 160, 500):
        t = table(n)
        pid = os.fork()
        if pid == 0:  # the child's peak starts at its current RSS
            start = _rss()
            path = ranking_plot(t, os.path.join(tmp, f"plot{n}.png"))
            print(f"ranking plot, {n} versions: peak RSS +{_peak() - start:.1f} MB, {path.stat().st_size / 1e3:.0f} kB")
            sys.stdout.flush()
            os._exit(0)
        os.waitpid(pid, 0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    s = sub.add_parser("scoring", help="RSS version by version in a serial scoring")
    s.add_argument("--versions", type=int, default=40)
    s.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "ccfv-memory"))
    s.add_argument("--trace", action="store_true", help="tracemalloc snapshots (slow)")
    s.add_argument("--trim", action="store_true", help="gc.collect() and malloc_trim(0) after every version")
    sub.add_parser("plot", help="peak RSS of the ranking plot at 40, 160 and 500 versions")
    args = ap.parse_args(argv)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    sys.path.insert(0, str(REPO))
    if args.what == "scoring":
        scoring(args)
    else:
        plot(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
