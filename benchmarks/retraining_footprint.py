"""Does the monthly retraining fit its Lambda? One champion/challenger round on the shared data.

    uv run --all-extras python benchmarks/retraining_footprint.py [--data FILE ...] [--json OUT]

Runs ``smartgrid.domain.retraining.retrain`` exactly as the job does, against moto's in-process S3:
the bundled models are published as the champion (a first deploy), each data file becomes one
site whose readings arrive as monthly CSV files under ``accepted/``, and the round gathers
them, trains the challenger with 2 LightGBM threads (the retraining function's 3,538 MB buy
two vCPUs), scores both sets on the last 14 days and decides. Reports wall and CPU time (per
phase), peak RSS, rows and both MAPEs against Lambda's limits (15 minutes, 10,240 MB).

Caveat: the bundled champion was trained on these same files up to their end, so it has seen
the holdout days; its MAPE here is optimistic and the round is expected to keep it. The
footprint does not depend on that.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

from smartgrid.engine.data import Series

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
DEFAULT_DATA = [SHARED / "gefcom2014e_hourly.csv.gz", SHARED / "pjme_hourly.csv.gz"]
LAMBDA_TIMEOUT_S = 900
LAMBDA_MAX_MEMORY_MB = 10_240
TOTALS = ("duration_s", "cpu_s", "peak_rss_mib")  # the decision's resources that are not phases


def monthly_csv(series: Series) -> list[bytes]:
    """The series as one CSV per calendar month (timestamp,load[,temperature], ISO 8601 UTC)."""
    ts = series.timestamps
    month = ts.astype("datetime64[M]")
    stamps = np.datetime_as_string(ts, unit="s")
    out = []
    for m in np.unique(month):
        sel = np.flatnonzero((month == m) & np.isfinite(series.load))
        if series.temperature is None:
            rows = [f"{stamps[i]}Z,{series.load[i]:.3f}" for i in sel]
            header = "timestamp,load"
        else:
            t = series.temperature
            rows = [f"{stamps[i]}Z,{series.load[i]:.3f},{'' if np.isnan(t[i]) else f'{t[i]:.2f}'}" for i in sel]
            header = "timestamp,load,temperature"
        out.append(("\n".join([header, *rows]) + "\n").encode())
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", nargs="+", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--threads", type=int, default=2, help="LightGBM threads (default 2)")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "retraining.json")
    args = ap.parse_args()

    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1",
            "SMARTGRID_TRAIN_THREADS": str(args.threads),
            "POWERTOOLS_SERVICE_NAME": "smartgrid",
        }
    )
    os.environ.pop("AWS_ENDPOINT_URL", None)
    import boto3
    from moto import mock_aws

    from smartgrid.config import BUNDLED_MODEL_DIR, get_settings
    from smartgrid.domain import retraining
    from smartgrid.domain.champion import publish
    from smartgrid.engine.csv_files import load_series

    with mock_aws():
        settings = get_settings()
        s3 = boto3.client("s3", region_name=settings.aws_region)
        for bucket in (settings.models_bucket, settings.meter_data_bucket):
            s3.create_bucket(Bucket=bucket)
        champion = publish(settings, BUNDLED_MODEL_DIR, reason="benchmark: first deploy")
        files = 0
        for path in args.data:
            site = path.name.split(".")[0].split("_")[0]
            for body in monthly_csv(load_series(path, min_days=60)):
                key = f"accepted/benchmark/{site}/{hashlib.sha256(body).hexdigest()}.csv"
                s3.put_object(Bucket=settings.meter_data_bucket, Key=key, Body=body)
                files += 1
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"{files} accepted files uploaded; retraining...", file=sys.stderr, flush=True)
        t_wall, t_cpu = time.perf_counter(), time.process_time()
        decision = retraining.retrain(settings)
        wall, cpu = time.perf_counter() - t_wall, time.process_time() - t_cpu
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    ch, cl = decision.champion or {}, decision.challenger or {}
    result = {
        "data": [str(p) for p in args.data],
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "lightgbm_threads": args.threads,
        "sites": decision.sites.get("trained_on"),
        "accepted_files": files,
        "rows": decision.sites.get("readings"),
        "training_rows": cl.get("training_rows"),
        "wall_seconds": round(wall, 1),
        "cpu_seconds": round(cpu, 1),
        "peak_rss_mib": round(peak, 1),
        "peak_rss_mib_before_retraining": round(rss_before, 1),
        "phases_seconds": {k: v for k, v in decision.resources.items() if k not in TOTALS},
        "holdout_window": decision.holdout_window,
        "champion": {"set_id": champion.info.set_id, "source": "bundled models", "mape": ch.get("mape")},
        "challenger_mape": cl.get("mape"),
        "champion_mape": ch.get("mape"),
        "points_scored": cl.get("points"),
        "decision": {"status": decision.status, "reason": decision.reason},
        "lambda": {
            "timeout_s": LAMBDA_TIMEOUT_S,
            "max_memory_mb": LAMBDA_MAX_MEMORY_MB,
            "share_of_timeout": round(wall / LAMBDA_TIMEOUT_S, 3),
        },
        "caveat": "the bundled champion was trained on these files up to their end (it has seen the holdout days)",
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
