"""Benchmark: sample_features against plain MONAI sliding_window_inference, and its peak memory.

Time: the same network, ROI, overlap, window batch and volumes; runs interleaved (MONAI, sampler
default config; when it skips windows without planned voxels, also the sampler running every
window), medians reported, with the ratios sampler / MONAI. Target: <= 1.10 (the forward passes are
the floor; hooks and point reads are the overhead).

Memory: peak RSS (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) of a fresh subprocess that builds
one volume and samples it, for a 128³ and a 256×256×128 volume, so the two runs cannot share a
peak. Target: <= 10 % growth (no full-volume feature or output map is ever built; the input volume
itself is part of the figure).

    python bench/bench_sampler.py                 # both parts, a few minutes on 2 CPU cores
    python bench/bench_sampler.py --repeats 7 --shape 96 96 64
    python bench/bench_sampler.py --skip-time     # memory only
    python bench/bench_sampler.py --threads 1     # one torch thread (steadier on a shared machine)
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

import torch


@dataclass
class Case:
    case_id: str
    image: torch.Tensor
    label: torch.Tensor


def make_case(shape, seed=0, case_id="bench") -> Case:
    """A 1-channel volume with three blob classes (float32 image, uint8 labels)."""
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(1, *shape, generator=g)
    label = torch.zeros(shape, dtype=torch.uint8)
    for k in (1, 2, 3):
        c = [int(torch.randint(s // 4, 3 * s // 4, (1,), generator=g)) for s in shape]
        r = [max(2, s // (4 + 2 * k)) for s in shape]
        label[tuple(slice(ci - ri, ci + ri) for ci, ri in zip(c, r))] = k
    return Case(case_id, image, label)


def build(arch: str, roi):
    from mlflow_ccfv.networks import small_spec

    torch.manual_seed(0)
    return small_spec(arch, 1, 4, tuple(roi)).build().eval()


def time_part(args) -> dict:
    from monai.inferers import sliding_window_inference

    from mlflow_ccfv.features import SamplerConfig, sample_features

    model = build(args.arch, args.roi)
    cases = [make_case(tuple(args.shape), seed=i, case_id=f"v{i}") for i in range(args.volumes)]
    common = dict(roi_size=tuple(args.roi), overlap=args.overlap, sw_batch_size=args.sw_batch_size)
    every = SamplerConfig(**common, skip_empty_windows=False)
    default = SamplerConfig(**common)

    def monai_run():
        with torch.inference_mode():
            for c in cases:
                sliding_window_inference(
                    c.image[None], tuple(args.roi), args.sw_batch_size, model, overlap=args.overlap
                )

    from mlflow_ccfv.features.windows import window_grid

    total = len(window_grid(tuple(args.shape), tuple(args.roi), args.overlap)[0])
    fs = sample_features(model, cases, config=default, progress=False)
    visited = max(len({tuple(s) for s in fs.case(i).window_starts.tolist()}) for i in range(len(cases)))
    runs = {
        "monai": monai_run,
        "sampler": lambda: sample_features(model, cases, config=default, progress=False),
    }
    if visited < total:  # the default skips windows without planned voxels: also time running them all
        runs["sampler_every_window"] = lambda: sample_features(model, cases, config=every, progress=False)
    for fn in runs.values():  # warm-up
        fn()
    times = {k: [] for k in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "median_s": med,
        "ratio": {k: med[k] / med["monai"] for k in med if k != "monai"},
        "windows_visited": visited,
        "windows_total": total,
        "samples_per_case": int(len(fs.case(0).labels)),
    }


def rss_child(args) -> None:
    """Child process: one volume, one sample_features call, print peak RSS (MiB) as JSON."""
    from mlflow_ccfv.features import SamplerConfig, sample_features

    model = build(args.arch, args.roi)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    case = make_case(tuple(args.shape))
    config = SamplerConfig(roi_size=tuple(args.roi), overlap=args.overlap, sw_batch_size=args.sw_batch_size)
    fs = sample_features(model, [case], config=config, progress=False)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "shape": args.shape,
                "peak_mib": peak / 1024,
                "before_volume_mib": base / 1024,
                "samples": int(len(fs.case(0).labels)),
            }
        )
    )


def rss_part(args) -> dict:
    out = {}
    for shape in ((128, 128, 128), (256, 256, 128)):
        cmd = [
            sys.executable,
            __file__,
            "--rss-child",
            "--arch",
            args.arch,
            "--roi",
            *map(str, args.roi),
            "--overlap",
            str(args.overlap),
            "--sw-batch-size",
            str(args.sw_batch_size),
            "--shape",
            *map(str, shape),
        ] + (["--threads", str(args.threads)] if args.threads else [])
        res = subprocess.run(cmd, check=True, capture_output=True, text=True)
        out["x".join(map(str, shape))] = json.loads(res.stdout.strip().splitlines()[-1])
    small, large = out["128x128x128"]["peak_mib"], out["256x256x128"]["peak_mib"]
    out["growth"] = large / small - 1
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="UNet")
    p.add_argument("--roi", type=int, nargs=3, default=(32, 32, 32))
    p.add_argument("--overlap", type=float, default=0.25)
    p.add_argument("--sw-batch-size", type=int, default=4)
    p.add_argument("--shape", type=int, nargs=3, default=(96, 96, 64), help="volume for the timing part")
    p.add_argument("--volumes", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--skip-time", action="store_true")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.rss_child:
        rss_child(args)
        return
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, network {args.arch}, roi {args.roi}, "
        f"overlap {args.overlap}, sw_batch_size {args.sw_batch_size}"
    )
    if not args.skip_time:
        t = time_part(args)
        m = t["median_s"]
        print(f"time ({args.volumes} volumes {tuple(args.shape)}, median of {args.repeats} interleaved runs):")
        print(f"  sliding_window_inference           {m['monai']:.3f} s")
        print(
            f"  sample_features                    {m['sampler']:.3f} s   ratio {t['ratio']['sampler']:.3f}"
            f"   ({t['windows_visited']}/{t['windows_total']} windows hold planned voxels;"
            f" {t['samples_per_case']} samples per case)"
        )
        if "sampler_every_window" in m:
            print(
                f"  sample_features, every window      {m['sampler_every_window']:.3f} s"
                f"   ratio {t['ratio']['sampler_every_window']:.3f}"
            )
    if not args.skip_memory:
        r = rss_part(args)
        print("peak RSS (fresh process per volume, default sampler; the input volume is included):")
        for key in ("128x128x128", "256x256x128"):
            print(
                f"  {key:12s} {r[key]['peak_mib']:.1f} MiB (before the volume: {r[key]['before_volume_mib']:.1f} MiB)"
            )
        print(f"  growth {100 * r['growth']:.1f} %")


if __name__ == "__main__":
    main()
