"""Memory as the bank grows: where a serial scoring's RSS goes, version by version.

Three measurements (docs/deploy.md, section 4, has the numbers):

- ``scoring``: registers ``--versions`` random-init small UNets (``small_spec("UNet", 1, 2)``) in a local
  sqlite store under ``--work`` (once; a rerun with more versions registers only the new ones) and scores
  them serially on a tiny synthetic target (5 cases of 32x32x24 voxels), printing the RSS after chosen
  versions and around the driver's last steps (rerank, ranking plot). ``--trace`` adds ``tracemalloc``
  (Python-level growth between the 10th and the last version, largest sites first; slow);
  ``--release none|collect|freeze`` replaces what ``score`` does after every version (its
  ``MemoryReleaser``): nothing, ``gc.collect()`` + ``malloc_trim(0)``, or that with the long-lived
  objects frozen after the first version (the default, what ``score`` does).
- ``release``: the three ``--release`` variants side by side, each a fresh ``scoring`` process on the
  same versions: seconds per version, the releaser's own seconds per version, RSS after the 10th and
  the last version, peak RSS, and the ratios to ``collect``.
- ``plot``: the peak RSS of drawing the ranking plot for 40, 160 and 500 versions, each in a forked
  child (its peak is its own), for the plot of this checkout.
- ``driver``: what the ``score`` driver does outside the per-version loop, as a function of the number
  of versions N, without scoring any network. For each N of ``--versions`` (default 50,200) a local
  sqlite store under ``--work`` gets (once) N versions: the first registered for real
  (``small_spec("UNet", 1, 2)``, random init), the others new versions pointing at its LoggedModel with
  the same tags plus their ``ccfv`` score tags as a scoring writes them, its random-init twin, and one
  nested run per version. Then a fresh process per N (and one more with ``tracemalloc``) runs the
  driver's steps in order and measures each: ``resolve_versions`` (the whole bank), ``register_twins``
  (reusing the twin), the rows of the versions' results, ``rerank`` (auto, ranks written afresh:
  every rank tag is removed first, outside the measurement), ``rank_table`` with the ``ccfv_twin``
  column, ``_log_twin_metrics`` and the artifacts (CSV, ``table_markdown``, ``ranking_plot``, logged).
  Printed per step: the peak RSS above the RSS before it (``VmHWM`` reset through
  ``/proc/self/clear_refs``), the RSS it leaves held, the ``tracemalloc`` peak, and MB per version
  between the smallest and the largest N. ``--server`` runs the steps through an ``mlflow server`` on
  each store (the REST client, as against a team server) instead of the sqlite store in process.

    python bench/bench_memory.py scoring --versions 40  --work /tmp/ccfv-memory
    python bench/bench_memory.py scoring --versions 160 --work /tmp/ccfv-memory
    python bench/bench_memory.py release --versions 60 --work /tmp/ccfv-release
    python bench/bench_memory.py plot
    python bench/bench_memory.py driver --versions 50,200 --work /tmp/ccfv-driver
    python bench/bench_memory.py driver --versions 50,200 --work /tmp/ccfv-driver --server
"""

from __future__ import annotations

import argparse
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


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> None:
    """Reset ``VmHWM`` (the peak RSS) to the current RSS (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def scoring(args) -> None:
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)
    import mlflow
    import torch

    import mlflow_ccfv.pipelines.score as score
    import mlflow_ccfv.pipelines.score_ranking as score_ranking
    from mlflow_ccfv.data import MSDDataset, make_target
    from mlflow_ccfv.data.synthetic import generate_task
    from mlflow_ccfv.networks import random_state_dict, small_spec
    from mlflow_ccfv.pipelines.executors import SerialExecutor
    from mlflow_ccfv.tracking import bank_versions, register_network

    torch.set_num_threads(1)
    uri = args.tracking_uri or f"sqlite:///{work / 'mlflow.db'}"
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
    from mlflow_ccfv.features.resources import MemoryReleaser

    release_seconds = [0.0]

    class Variant(MemoryReleaser):
        """``score``'s releaser as ``--release`` says, timed."""

        def __init__(self, every: int = 1, freeze: bool = False):
            super().__init__(every, freeze=args.release == "freeze")

        def tick(self) -> bool:
            if args.release == "none":
                self.calls += 1
                return False
            t = time.perf_counter()
            try:
                return super().tick()
            finally:
                release_seconds[0] += time.perf_counter() - t

    score.MemoryReleaser = Variant  # type: ignore[misc]
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
                traced = tracemalloc.get_traced_memory()[0] / 2**20 if tracemalloc.is_tracing() else 0.0
                after.append((i + 1, _rss(), _peak(), traced))
                clock.append(time.perf_counter())
                if tracemalloc.is_tracing() and i + 1 in (10, n):
                    snapshots[i + 1] = tracemalloc.take_snapshot()
            return out

    phases: dict[str, tuple[float, float]] = {}
    clock: list[float] = []  # when each version was done

    def around(name, fn):
        def wrapped(*a, **k):
            phases[f"before {name}"] = (_rss(), _peak())
            result = fn(*a, **k)
            phases[f"after {name}"] = (_rss(), _peak())
            return result

        return wrapped

    score_ranking.ranking_plot = around("plot", score_ranking.ranking_plot)  # type: ignore[assignment]
    score.rerank = around("rerank", score.rerank)  # type: ignore[assignment]
    if args.trace:
        tracemalloc.start(10)
    mlflow.set_experiment("ccfv-memory")
    phases["start"] = (_rss(), _peak())
    start = time.perf_counter()
    score.score_versions(
        versions, target, score.ScoreConfig(["ccfv"], cache_dir=tempfile.mkdtemp(dir=work)), executor=Measuring()
    )
    phases["end"] = (_rss(), _peak())
    seconds = time.perf_counter() - start
    print(f"scored {n} versions in {seconds:.0f} s (--release {args.release}: {release_seconds[0]:.1f} s releasing)")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "release": args.release,
                    "versions": n,
                    "seconds": seconds,
                    "release_seconds": release_seconds[0],
                    "rss_after": {str(k): after[k - 1][1] for k in (10, n) if k <= len(after)},
                    "peak_rss": max(a[2] for a in after),
                }
            )
        )
    print("version | RSS (MB) | peak RSS (MB) | traced Python memory (MB) | s/version since the previous row")
    previous = 0
    for k in (1, 5, 10, 20, 40, 80, 120, 160, 200, 500):
        if k <= len(after):
            rate = (clock[k - 1] - clock[previous - 1]) / (k - previous) if previous else float("nan")
            cells = [f"{v:.2f}" if isinstance(v, float) else str(v) for v in after[k - 1]]
            print(" | ".join([*cells, f"{rate:.3f}"]))
            previous = k
    print("phases (RSS, peak RSS) MB:", json.dumps({k: [round(x, 1) for x in v] for k, v in phases.items()}))
    if 10 in snapshots and n in snapshots and n > 10:
        print(f"largest Python-level growth, version 10 -> {n}:")
        for stat in snapshots[n].compare_to(snapshots[10], "traceback")[:12]:
            print(
                f"{stat.size_diff / 1024:8.1f} KiB {stat.count_diff:6d} blocks  {stat.traceback.format()[-2].strip()}"
            )


RELEASES = ("none", "collect", "freeze")


def release(args) -> None:
    """The ``--release`` variants side by side, each in a fresh ``scoring`` process, same versions."""
    import subprocess

    def run(*extra: str) -> None:
        cmd = [sys.executable, __file__, "scoring", "--versions", str(args.versions), "--work", args.work, *extra]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)

    run("--release", "none")  # registers the versions when the store lacks them (then scores nothing)
    found = {}
    for variant in RELEASES:
        out = Path(tempfile.mkdtemp()) / "figures.json"
        run("--release", variant, "--json", str(out))
        found[variant] = json.loads(out.read_text())
        print(f"{variant}: {found[variant]['seconds']:.0f} s", flush=True)
    n = args.versions
    print(f"\n{n} versions, serial, tiny target (5 cases of 32x32x24), local sqlite store")
    print("release | s/version | releasing s/version | RSS after 10th (MB) | RSS after last (MB) | peak RSS (MB)")
    for variant in RELEASES:
        f = found[variant]
        rss = f["rss_after"]
        print(
            f"{variant} | {f['seconds'] / n:.3f} | {f['release_seconds'] / n:.3f} | {rss.get('10', 0):.1f} | "
            f"{rss.get(str(n), 0):.1f} | {f['peak_rss']:.1f}"
        )
    base = found["collect"]
    for variant in ("none", "freeze"):
        f = found[variant]
        print(
            f"{variant} / collect: time {f['seconds'] / base['seconds']:.2f}x, releasing "
            f"{f['release_seconds'] / max(base['release_seconds'], 1e-9):.2f}x, "
            f"RSS growth 10th->last {f['rss_after'].get(str(n), 0) - f['rss_after'].get('10', 0):+.1f} MB "
            f"(collect: {base['rss_after'].get(str(n), 0) - base['rss_after'].get('10', 0):+.1f} MB)"
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


DRIVER_DATASET = "Task07"
DRIVER_DIGEST = "0123456789abcdef"
DRIVER_PHASES = (
    "resolve_versions",
    "register_twins",
    "result rows",
    "rerank",
    "rank_table",
    "log twin metrics",
    "artifacts",
)


def _driver_store(work: Path, n: int) -> Path:
    """The sqlite store of ``n`` versions under ``work`` (populated once; see ``driver``)."""
    import mlflow
    import numpy as np

    import mlflow_ccfv.tracking.tags as T
    from mlflow_ccfv.networks import random_state_dict, small_spec
    from mlflow_ccfv.pipelines.controls import register_twins
    from mlflow_ccfv.tracking import register_network
    from mlflow_ccfv.tracking.ranking_writes import write_version_scores

    store = work / f"driver-{n}"
    if (store / "runs.json").exists():
        return store
    store.mkdir(parents=True, exist_ok=True)
    os.chdir(store)
    mlflow.set_tracking_uri(f"sqlite:///{store / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    rng = np.random.default_rng(n)
    spec = small_spec("UNet", 1, 2)
    first = register_network(spec, random_state_dict(spec, 0), "memory-unet-000", "none", bank=BANK)
    write_version_scores(
        first.name, first.version, DRIVER_DATASET, {"ccfv": float(rng.normal())}, data_digest=DRIVER_DIGEST
    )
    tags = dict(client.get_model_version(first.name, first.version).tags)
    start = time.perf_counter()
    for i in range(1, n):
        name = f"memory-unet-{i // 50:03d}"
        if i % 50 == 0:
            client.create_registered_model(name, tags={T.BANK: BANK})
        score = {T.score_tag("ccfv", DRIVER_DATASET): f"{rng.normal():.6g}"}
        client.create_model_version(name, first.source, tags={**tags, **score}, model_id=first.model_id)
        if (i + 1) % 50 == 0:
            print(f"driver store {n}: {i + 1}/{n} versions ({time.perf_counter() - start:.0f} s)", flush=True)
    (twin,) = register_twins([first])
    write_version_scores(twin.name, twin.version, DRIVER_DATASET, {"ccfv": -1.0}, data_digest=DRIVER_DIGEST)
    experiment = client.create_experiment("ccfv-driver")
    parent = client.create_run(experiment).info.run_id
    runs = {}
    for i in range(n):
        label = f"memory-unet-{i // 50:03d}/{i % 50 + 1}"
        runs[label] = client.create_run(experiment, tags={"mlflow.parentRunId": parent}).info.run_id
    (store / "runs.json").write_text(json.dumps({"experiment": experiment, "parent": parent, "runs": runs}))
    return store


def _driver_child(args) -> None:
    """One process: the driver's steps over the store ``args.store``; prints one JSON line."""
    import mlflow

    import mlflow_ccfv.tracking.tags as T
    from mlflow_ccfv.pipelines.controls import register_twins
    from mlflow_ccfv.pipelines.score import VersionResult, _log_twin_metrics
    from mlflow_ccfv.pipelines.score_ranking import ranked_table
    from mlflow_ccfv.scoring import ModelScores
    from mlflow_ccfv.scoring.ranking import TWIN_METHOD
    from mlflow_ccfv.study.ranking import rank_table, ranking_plot, table_markdown
    from mlflow_ccfv.tracking.ranking_writes import delete_version_tag, rerank
    from mlflow_ccfv.tracking.search import resolve_versions, search_versions

    store = Path(args.store)
    os.chdir(store)
    mlflow.set_tracking_uri(args.uri or f"sqlite:///{store / 'mlflow.db'}")
    saved = json.loads((store / "runs.json").read_text())
    tmp = Path(tempfile.mkdtemp())
    # outside the measurement: the store's engine, fonts and imports; every rank tag removed (written afresh)
    for mv in search_versions(f"tags.`{T.rank_tag(DRIVER_DATASET)}` LIKE '%'"):
        delete_version_tag(mv.name, mv.version, T.rank_tag(DRIVER_DATASET))
    warm = rank_table([{"model": "a/1", "source_dataset": "none", "ccfv": 0.0, "error": None}], ["ccfv"], "x")
    ranking_plot(warm, tmp / "warm.png")
    table_markdown(warm, ["ccfv"])
    mlflow.start_run(run_id=saved["parent"])
    state: dict = {}

    def rows():
        results = []
        for mv in state["versions"]:
            tags = dict(mv.tags or {})
            label = f"{mv.name}/{mv.version}"
            score = ModelScores({"ccfv": float(tags[T.score_tag("ccfv", DRIVER_DATASET)])}, [], [])
            results.append(
                VersionResult(
                    label, mv.name, str(mv.version), mv.model_id, tags, score, 0.5, run_id=saved["runs"].get(label)
                )
            )
        state["results"] = results
        state["rows"] = [r.row() for r in results]

    def table():
        ranking = state["ranking"]
        state["table"] = ranked_table(state["rows"], ["ccfv"], DRIVER_DATASET, ranking.order, stored=[ranking])

    def artifacts():
        stem = tmp / f"ranking_{DRIVER_DATASET}"
        state["table"].to_csv(f"{stem}.csv", index=False)
        Path(f"{stem}.md").write_text(table_markdown(state["table"], ["ccfv", TWIN_METHOD]))
        ranking_plot(state["table"], f"{stem}.png", method=state["ranking"].method)
        for suffix in ("csv", "md", "png"):
            mlflow.log_artifact(f"{stem}.{suffix}", artifact_path="ranking")

    steps = {
        "resolve_versions": lambda: state.update(versions=resolve_versions([], bank=BANK)),
        "register_twins": lambda: state.update(versions=[*state["versions"], *register_twins(state["versions"])]),
        "result rows": rows,
        "rerank": lambda: state.update(
            ranking=rerank(DRIVER_DATASET, T.DEFAULT_SETTINGS, DRIVER_DIGEST, method="auto")
        ),
        "rank_table": table,
        "log twin metrics": lambda: _log_twin_metrics(state["results"], state["table"]),
        "artifacts": artifacts,
    }
    if args.trace:
        tracemalloc.start()
    out: dict[str, dict[str, float]] = {}
    for name in DRIVER_PHASES:
        gc.collect()
        before = _rss()
        traced_before = tracemalloc.get_traced_memory()[0] if args.trace else 0
        if args.trace:
            tracemalloc.reset_peak()
        _reset_peak()
        start = time.perf_counter()
        steps[name]()
        seconds = time.perf_counter() - start
        peak = _status_mb("VmHWM") - before
        gc.collect()
        out[name] = {"peak": peak, "held": _rss() - before, "seconds": seconds}
        if args.trace:
            current, traced_peak = tracemalloc.get_traced_memory()
            out[name].update(
                traced_peak=(traced_peak - traced_before) / 2**20, traced_held=(current - traced_before) / 2**20
            )
    mlflow.end_run()
    out["_"] = {"versions": len(state["versions"]), "ranked": len(state["ranking"].ranked), "rss": _rss()}
    print("DRIVER " + json.dumps(out), flush=True)


def _start_server(store: Path):
    """An ``mlflow server`` on ``store``'s sqlite database; returns the process and its URL once healthy."""
    import socket
    import subprocess
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}"]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    log = open(store / "server.log", "w")  # noqa: SIM115 (kept open for the server's life)
    process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=store)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"mlflow server exited:\n{(store / 'server.log').read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return process, url
        except OSError:
            time.sleep(1)
    process.terminate()
    sys.exit("mlflow server not ready after 300 s")


def driver(args) -> None:
    import subprocess

    counts = sorted({int(x) for x in args.versions.split(",")})
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    stores = {n: _driver_store(work, n) for n in counts}
    measured: dict[tuple[int, bool], dict] = {}
    for n in counts:
        server, uri = _start_server(stores[n]) if args.server else (None, "")
        try:
            for trace in (False, True):
                cmd = [sys.executable, str(Path(__file__).resolve()), "_driver-child", "--store", str(stores[n])]
                cmd += ["--uri", uri] if uri else []
                done = subprocess.run(cmd + (["--trace"] if trace else []), capture_output=True, text=True, check=False)
                line = next((l for l in done.stdout.splitlines() if l.startswith("DRIVER ")), None)
                if done.returncode or line is None:
                    sys.exit(f"driver child for {n} versions failed:\n{done.stderr[-3000:]}")
                measured[n, trace] = json.loads(line.removeprefix("DRIVER "))
        finally:
            if server is not None:
                server.terminate()
                server.wait(timeout=60)
    print("tracking:", "an mlflow server on each sqlite store (REST)" if args.server else "sqlite, in process")
    low, high = counts[0], counts[-1]
    print("versions in the bank (with the twin):", {n: measured[n, False]["_"]["versions"] for n in counts})
    head = " | ".join(f"{what} N={n}" for what in ("peak RSS", "traced peak") for n in counts)
    print(f"step | {head} | peak RSS MB/version | traced MB/version | held RSS N={high} | seconds N={high}")
    for name in DRIVER_PHASES:
        rss = [measured[n, False][name]["peak"] for n in counts]
        traced = [measured[n, True][name]["traced_peak"] for n in counts]
        per = [(v[-1] - v[0]) / (high - low) if high > low else float("nan") for v in (rss, traced)]
        cells = " | ".join(f"{v:.2f}" for v in (*rss, *traced, *per))
        last = measured[high, False][name]
        print(f"{name} | {cells} | {last['held']:.2f} | {last['seconds']:.1f}")
    print("(MB; peak = highest RSS during the step minus the RSS before it; traced = tracemalloc's peak)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    s = sub.add_parser("scoring", help="RSS version by version in a serial scoring")
    s.add_argument("--versions", type=int, default=40)
    s.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "ccfv-memory"))
    s.add_argument("--trace", action="store_true", help="tracemalloc snapshots (slow)")
    s.add_argument(
        "--tracking-uri", default="", help="a running server (e.g. http://127.0.0.1:5000) instead of --work's sqlite"
    )
    s.add_argument("--release", choices=RELEASES, default="freeze", help="what score does after every version")
    s.add_argument("--json", default="", help="also write the figures to this file")
    r = sub.add_parser("release", help="score's memory release after every version: none, collect, freeze")
    r.add_argument("--versions", type=int, default=60)
    r.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "ccfv-release"))
    sub.add_parser("plot", help="peak RSS of the ranking plot at 40, 160 and 500 versions")
    d = sub.add_parser("driver", help="peak RSS of the score driver's steps outside the loop, per bank size")
    d.add_argument("--versions", default="50,200", help="bank sizes, comma-separated")
    d.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "ccfv-driver"))
    d.add_argument("--server", action="store_true", help="through an `mlflow server` on each store (REST client)")
    c = sub.add_parser("_driver-child", help=argparse.SUPPRESS)
    c.add_argument("--store", required=True)
    c.add_argument("--trace", action="store_true")
    c.add_argument("--uri", default="")
    args = ap.parse_args(argv)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    sys.path.insert(0, str(REPO))
    {"scoring": scoring, "release": release, "plot": plot, "driver": driver, "_driver-child": _driver_child}[args.what](
        args
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
