"""Anomaly detector benchmark: train on the first 80% of each file, evaluate on the rest.

Known events (spikes, dips, flatlines, level shifts; see ``inject_anomalies``) are injected
into the held-out data with a seed the training never used, and the saved ONNX model is
scored through onnxruntime: per kind precision/recall, overall precision/recall/F1 per
reading, and the share of clean readings flagged. The held-out data is scored as a whole,
then cut into independent windows (short API requests) and with readings missing.

    .venv/bin/python benchmarks/anomaly_benchmark.py --json anomaly_benchmark.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from smartgrid.engine import model_files
from smartgrid.engine.csv_files import load_series
from smartgrid.engine.data import iso
from smartgrid.training import anomaly_train as at

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_DATA = [SHARED / "gefcom2014e_hourly.csv.gz", SHARED / "pjme_hourly.csv.gz"]
TARGET_F1 = 0.9
TARGET_FP_RATE = 0.01
# The same events scored again: in independent windows (short API requests, less context
# for level shifts), and with 1% of the clean readings missing.
SCENARIOS: dict[str, dict[str, float]] = {
    "cut into independent 28-day windows": {"window_days": 28.0},
    "cut into independent 7-day windows": {"window_days": 7.0},
    "cut into independent 3-day windows": {"window_days": 3.0},
    "with 1% of the clean readings missing": {"missing_share": 0.01},
}


def _pct(x: float | None) -> str:
    return "   n/a" if x is None else f"{100 * x:6.2f}"


def table(title: str, m: dict[str, Any]) -> str:
    lines = [
        title,
        f"  {'kind':<12} {'events':>6} {'readings':>8} {'recall%':>8} {'kind rec%':>9} "
        f"{'precision%':>10} {'event rec%':>10}",
    ]
    for kind, k in m["per_kind"].items():
        lines.append(
            f"  {kind:<12} {k['events']:>6} {k['readings']:>8} {_pct(k['recall']):>8} "
            f"{_pct(k['kind_recall']):>9} {_pct(k['precision']):>10} {_pct(k['event_recall']):>10}"
        )
    lines.append(
        f"  overall: precision {_pct(m['precision'])}%  recall {_pct(m['recall'])}%  "
        f"F1 {m['f1']:.4f}  kind accuracy {_pct(m['kind_accuracy'])}%  "
        f"clean readings flagged {_pct(m['clean_fp_rate'])}% "
        f"({m['flagged']} flagged of {m['readings']} readings)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", nargs="+", type=Path, default=DEFAULT_DATA, help="CSV files")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--out", type=Path, help="keep the trained model in this directory")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=at.N_ROUNDS, help="boosting rounds")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    series = [load_series(p) for p in args.data]
    steps = {s.step_s for s in series}
    if len(steps) != 1:
        print(f"error: the files have different resolutions {sorted(steps)} s", file=sys.stderr)
        return 2
    load_s = time.perf_counter() - t0
    parts = [at.split_series(s) for s in series]
    window = {
        "start": iso(min(p[0].start for p in parts)),
        "end": iso(max(p[0].end for p in parts)),
    }
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = args.out or Path(tmp)
        meta = at.train_and_save(
            series,
            out_dir,
            training_window=window,
            resolution_minutes=series[0].resolution_minutes,
            seed=args.seed,
            n_rounds=args.rounds,
            progress=lambda msg: print(f"  {msg}", flush=True),
        )
        model = model_files.load_model(out_dir, model_files.ANOMALY_DETECTOR)
    m = meta.metrics
    test = [p[1] for p in parts]
    events = [at.eval_events(s) for s in test]
    extra: dict[str, Any] = {}
    for name, kwargs in SCENARIOS.items():
        extra[name] = at.evaluate_detector(test, model, seed=args.seed + 1000, n_events_per_series=events, **kwargs)

    print()
    for path, (train, held) in zip(args.data, parts, strict=True):
        print(
            f"{path.name}: train {iso(train.start)}..{iso(train.end)} ({train.n} readings), "
            f"test {iso(held.start)}..{iso(held.end)} ({held.n} readings)"
        )
    print(
        f"training {m['train_seconds']:.1f} s wall, {m['train_cpu_seconds']:.1f} s CPU ({m['n_rounds']} rounds), ONNX "
        f"{m['onnx_bytes'] / 1024:.0f} KB, ONNX vs booster max diff {m['onnx_max_abs_diff']:.1e}"
    )
    print()
    print(table("held-out data scored as a whole", m))
    for name, w in extra.items():
        print()
        print(table(f"held-out data, {name}", w))
    ok = m["f1"] >= TARGET_F1 and m["clean_fp_rate"] < TARGET_FP_RATE
    print()
    print(
        f"target F1 >= {TARGET_F1} with < {100 * TARGET_FP_RATE:g}% clean readings flagged: "
        f"{'reached' if ok else 'NOT reached'} (F1 {m['f1']:.4f}, "
        f"{100 * m['clean_fp_rate']:.3f}% flagged)"
    )
    if args.json:
        result = {
            "data": [str(p) for p in args.data],
            "model": {
                "version": meta.version,
                "sha256": meta.sha256,
                "params": meta.params,
                "training_window": meta.training_window,
            },
            "load_seconds": round(load_s, 2),
            "metrics": m,
            "scenarios": extra,
            "target_reached": ok,
        }
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
