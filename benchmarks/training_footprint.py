"""Does training fit the retraining Lambda? Time, memory and installed size of training.

    uv run --extra train python benchmarks/training_footprint.py [--data FILE ...] [--out DIR] [--json OUT]

Trains all three models exactly as `smartgrid train` does (2 LightGBM threads: a 2-core
machine, like a Lambda with 3,538 MB+), then reports wall and CPU time, peak RSS, the ONNX
sizes, and the installed size of what training imports (the distributions' files on disk,
as `pip install --target` would lay them out) against Lambda's limits: 15 minutes, and
250 MB unzipped for code and layers together.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

from smartgrid.engine.csv_files import load_series
from smartgrid.engine.features import HolidayCalendar
from smartgrid.training.pipeline import train_all

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_DATA = [SHARED / "gefcom2014e_hourly.csv.gz", SHARED / "pjme_hourly.csv.gz"]
# What inference imports, by distribution; training adds LightGBM (and scipy, which it
# imports) and onnx (with protobuf) for building graphs.
INFERENCE_DISTS = [
    "numpy",
    "onnxruntime",
    "holidays",
    "python-dateutil",
    "six",
    "pydantic",
    "pydantic-core",
    "pydantic-settings",
    "typing-extensions",
    "annotated-types",
    "typing-inspection",
    "flatbuffers",
    "packaging",
    "coloredlogs",
    "humanfriendly",
    "sympy",
    "mpmath",
    "protobuf",
]
TRAINING_DISTS = [*INFERENCE_DISTS, "lightgbm", "scipy", "onnx"]


def dist_size(name: str) -> int:
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return 0
    total = 0
    for f in dist.files or []:
        p = Path(str(dist.locate_file(f)))
        if p.is_file():
            total += p.stat().st_size
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", nargs="+", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--out", type=Path, default=None, help="Where to write the models (default: a temp dir)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="smartgrid-models-"))
    t_wall, t_cpu = time.perf_counter(), time.process_time()
    series = [load_series(p, min_days=60) for p in args.data]
    metas = train_all(
        series, out, HolidayCalendar("US"), progress=lambda m: print(f"  {m}", file=sys.stderr, flush=True)
    )
    wall, cpu = time.perf_counter() - t_wall, time.process_time() - t_cpu
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    sizes = {d: dist_size(d) for d in sorted(set(TRAINING_DISTS) | set(INFERENCE_DISTS))}
    train_mb = sum(sizes[d] for d in TRAINING_DISTS) / 1e6
    infer_mb = sum(sizes[d] for d in INFERENCE_DISTS) / 1e6
    onnx = {m.name: (out / m.onnx_file).stat().st_size for m in metas.values()}
    report = {
        "data": [str(p) for p in args.data],
        "rows": sum(s.n for s in series),
        "wall_seconds": round(wall, 1),
        "cpu_seconds": round(cpu, 1),
        "peak_rss_mib": round(peak_mib, 1),
        "onnx_bytes": onnx,
        "onnx_total_mb": round(sum(onnx.values()) / 1e6, 3),
        "installed_mb": {"training": round(train_mb, 1), "inference": round(infer_mb, 1)},
        "installed_mb_by_distribution": {k: round(v / 1e6, 1) for k, v in sizes.items()},
        "lambda_limits": {"seconds": 900, "unzipped_mb": 250},
        "fits_lambda": {"time": wall < 900, "size": train_mb < 250},
    }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
