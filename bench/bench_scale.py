"""Scale: a large bank on a PostgreSQL-backed MLflow server, scored serially and with Ray, in one run.

Starts a throw-away PostgreSQL (``initdb``/``pg_ctl``, as in tests/postgres_server.py) and an
``mlflow server`` on it with served artifacts (unless ``--tracking-uri`` names a server), generates a
tiny target (synthetic Task07: 5 cases of 32x32x24 voxels, 4 in the train split), registers
``--bank-size`` randomly initialised small UNets (``small_spec("UNet", 1, 2)``: the cheapest spec,
~0.1 M parameters), then:

1. registry paging: ``search_versions`` with 100 versions a page and ``bank_versions`` (1000 a page)
   must both return every version (no silent truncation at one page);
2. scoring (CC-FV only, features never cached: a fresh cache folder per measurement), each in its own
   process so that its peak RSS is its own: serial on the first ``--small-size`` versions, serial on
   the whole bank, and Ray with ``--workers`` local workers on the whole bank;

and prints, side by side: versions, seconds, versions per minute, seconds per version and the
scoring process's peak RSS (for Ray: the driver's; each worker holds one network at a time).
Every result is also written to ``--out`` (JSON) as soon as it is measured.

    nice python bench/bench_scale.py                          # 500 versions, 100 for the small bank
    python bench/bench_scale.py --bank-size 60 --small-size 20  # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_memory import _rss as _rss_mb  # noqa: E402  (this process's RSS now, MB)

BANK = "scale"
PER_NAME = 50  # versions per registered model


def _score(args) -> int:
    """Child process: score the first ``--versions`` versions of the bank; print one JSON line."""
    import mlflow

    from mlflow_ccfv.data import MSDDataset, make_target
    from mlflow_ccfv.pipelines.executors import RayExecutor, SerialExecutor
    from mlflow_ccfv.pipelines.score import ScoreConfig, score_versions
    from mlflow_ccfv.tracking import bank_versions

    mlflow.set_experiment("ccfv-scale")
    before = _rss_mb()
    versions = bank_versions(BANK)[: args.versions]
    target = make_target(MSDDataset.load(args.target), "train")
    executor = RayExecutor(num_cpus=1, local_cpus=args.workers) if args.executor == "ray" else SerialExecutor()
    # RSS sampled twice a second while scoring: at a steady rate of versions per second, the fraction of
    # the time elapsed is the fraction of the versions scored, so the trajectory shows whether the RSS
    # grows version after version or only at the start and the end (the driver's rank/alias pass).
    samples: list[tuple[float, float]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.5):
            samples.append((time.perf_counter(), _rss_mb()))

    sampler = threading.Thread(target=sample, daemon=True)
    start = time.perf_counter()
    sampler.start()
    try:
        table = score_versions(versions, target, ScoreConfig(["ccfv"], cache_dir=args.cache), executor=executor)
    finally:
        executor.close()
        done.set()
        sampler.join()
    seconds = time.perf_counter() - start
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    failed = int(table["error"].notna().sum())
    at = {}
    for frac in (0.1, 0.5, 0.9):
        seen = [r for t, r in samples if t - start <= frac * seconds]
        at[f"{int(frac * 100)}%"] = round(seen[-1], 1) if seen else None
    print(
        json.dumps(
            {
                "n": len(versions),
                "seconds": seconds,
                "peak_rss_mb": rss_mb,
                "rss_before_mb": round(before, 1),
                "rss_at_mb": at,
                "failed": failed,
            }
        )
    )
    return 0


def _measure(label: str, executor: str, n: int, target: Path, work: Path, workers: int) -> dict:
    cache = tempfile.mkdtemp(prefix="cache-", dir=work)
    cmd = [sys.executable, __file__, "_score", "--versions", str(n), "--executor", executor]
    cmd += ["--target", str(target), "--cache", cache, "--workers", str(workers)]
    print(f"\n[{label}] scoring {n} versions ({executor}) ...", flush=True)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=work)
    if proc.returncode != 0:
        raise RuntimeError(f"{label} failed:\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result.update(label=label, executor=executor, per_minute=60 * result["n"] / result["seconds"])
    result["seconds_per_version"] = result["seconds"] / result["n"]
    print(f"[{label}] {json.dumps(result)}", flush=True)
    return result


def _register(n: int) -> float:
    from mlflow_ccfv.networks import random_state_dict, small_spec
    from mlflow_ccfv.tracking import register_network

    spec = small_spec("UNet", 1, 2)
    start = time.perf_counter()
    for i in range(n):
        register_network(
            spec,
            random_state_dict(spec, i),
            f"scale-unet-{i // PER_NAME:03d}",
            "none",
            bank=BANK,
            extra_tags={"init": f"random(seed={i})"},
        )
        if (i + 1) % 50 == 0:
            rate = 60 * (i + 1) / (time.perf_counter() - start)
            print(f"registered {i + 1}/{n} ({rate:.0f} versions/min)", flush=True)
    return time.perf_counter() - start


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bank-size", type=int, default=500)
    ap.add_argument("--small-size", type=int, default=100, help="the smaller bank for the memory comparison")
    ap.add_argument("--workers", type=int, default=2, help="local Ray workers")
    ap.add_argument("--tracking-uri", default="", help="an existing server (default: start PostgreSQL + mlflow server)")
    ap.add_argument("--out", default="bench_scale.json")
    args = ap.parse_args(argv)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    sys.path[:0] = [str(REPO), str(REPO / "tests")]  # this checkout's package and its test servers
    import mlflow

    from mlflow_ccfv.data.synthetic import generate_task
    from mlflow_ccfv.tracking.search import bank_versions, search_versions

    work = Path(tempfile.mkdtemp(prefix="ccfv-scale-"))
    out = Path(args.out).resolve()
    results: dict = {"bank_size": args.bank_size, "small_size": args.small_size, "workers": args.workers}
    pg = server = None
    try:
        if args.tracking_uri:
            uri = args.tracking_uri
        else:
            from mlflow_server import MlflowServer
            from postgres_server import PostgresServer, postgres_bindir

            pg = PostgresServer(postgres_bindir())
            (work / "server").mkdir()
            server = MlflowServer(work / "server", backend_store_uri=pg.create_database("mlflow"), workers=2)
            server.wait_ready(timeout=300)
            uri = server.url
            results["backend"] = "postgresql + mlflow server (served artifacts)"
        os.environ["MLFLOW_TRACKING_URI"] = uri
        mlflow.set_tracking_uri(uri)
        target = generate_task("Task07", work / "data", n_cases=5, shape=(32, 32, 24), seed=0, progress=False)

        have = len(bank_versions(BANK))
        reg_seconds = _register(args.bank_size - have) if have < args.bank_size else 0.0
        results["register_seconds"] = reg_seconds
        results["register_per_minute"] = 60 * (args.bank_size - have) / reg_seconds if reg_seconds else None
        print(f"registered {args.bank_size - have} versions in {reg_seconds:.0f} s", flush=True)

        start = time.perf_counter()
        paged = search_versions(f"tags.`ccfv.bank` = '{BANK}'", page_size=100)
        page_seconds = time.perf_counter() - start
        start = time.perf_counter()
        bank = bank_versions(BANK)
        results["paging"] = {
            "search_versions_100_per_page": len(paged),
            "pages": -(-len(paged) // 100),
            "seconds_100_per_page": page_seconds,
            "bank_versions": len(bank),
            "bank_versions_seconds": time.perf_counter() - start,
        }
        assert len(paged) == len(bank) >= args.bank_size, results["paging"]
        print(f"paging: {json.dumps(results['paging'])}", flush=True)
        out.write_text(json.dumps(results, indent=1))

        runs = []
        for label, executor, n in (
            (f"serial {args.small_size}", "serial", args.small_size),
            (f"serial {args.bank_size}", "serial", args.bank_size),
            (f"ray x{args.workers} {args.bank_size}", "ray", args.bank_size),
        ):
            runs.append(_measure(label, executor, n, target, work, args.workers))
            results["runs"] = runs
            out.write_text(json.dumps(results, indent=1))

        print(
            "\n| run | versions | seconds | versions/min | s/version | peak RSS (MB) "
            "| RSS before / at 10% / 50% / 90% of the time (MB) | failed |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for r in runs:
            trajectory = " / ".join(f"{v:.0f}" if v else "–" for v in (r["rss_before_mb"], *r["rss_at_mb"].values()))
            print(
                f"| {r['label']} | {r['n']} | {r['seconds']:.0f} | {r['per_minute']:.1f} | "
                f"{r['seconds_per_version']:.2f} | {r['peak_rss_mb']:.0f} | {trajectory} | {r['failed']} |"
            )
        print(f"\nresults: {out}")
    finally:
        if server is not None:
            server.stop()
        if pg is not None:
            pg.stop()
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_score":
        sys.path.insert(0, str(REPO))
        ap = argparse.ArgumentParser()
        ap.add_argument("_score")
        ap.add_argument("--versions", type=int, required=True)
        ap.add_argument("--executor", choices=("serial", "ray"), required=True)
        ap.add_argument("--target", required=True)
        ap.add_argument("--cache", required=True)
        ap.add_argument("--workers", type=int, default=2)
        sys.exit(_score(ap.parse_args()))
    sys.exit(main())
