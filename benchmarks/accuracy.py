"""Accuracy benchmark: the default day-ahead backtest on the shared datasets, with a
LightGBM reference built here on the same features in the same backtest.

    uv run --extra train python benchmarks/accuracy.py [--data FILE ...] [--json OUT.json]

The reference is a single LightGBM regressor of the same normalised target (load / 7-day
mean) on the same feature matrix, with its number of trees chosen by early stopping on the
last 15% of the training days (max 4000, learning rate 0.05) and then refitted on all
training days; it is tried with 31 and 63 leaves and the better of the two is the bar.
Bars: MoE MAPE at least 30% below the better naive baseline, and no worse than
the LightGBM reference; P10-P90 coverage within 75-85%.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from smartgrid.engine.csv_files import load_series
from smartgrid.engine.features import HolidayCalendar
from smartgrid.training.backtest import run_backtest
from smartgrid.training.baseline import relative_offsets
from smartgrid.training.buckets import hour_bucket
from smartgrid.training.pipeline import TrainingRows

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_DATA = [SHARED / "gefcom2014e_hourly.csv.gz", SHARED / "pjme_hourly.csv.gz"]


def lightgbm_reference(num_leaves: int):
    def fit_predict(train: TrainingRows, test: TrainingRows) -> np.ndarray:
        import lightgbm as lgb

        days = np.unique(train.day_id)
        val_days = days[-max(1, int(len(days) * 0.15)) :]
        val = np.isin(train.day_id, val_days)
        params = {
            "objective": "regression",
            "learning_rate": 0.05,
            "num_leaves": num_leaves,
            "bagging_fraction": 0.8,
            "bagging_freq": 1,
            "feature_fraction": 0.8,
            "verbose": -1,
            "num_threads": 2,
            "seed": 1,
        }
        r = train.y / train.scale
        probe = lgb.train(
            params,
            lgb.Dataset(train.X[~val], r[~val]),
            num_boost_round=4000,
            valid_sets=[lgb.Dataset(train.X[val], r[val])],
            callbacks=[lgb.early_stopping(100, verbose=False)],
        )
        best = probe.best_iteration or 4000
        lo, hi = relative_offsets(
            probe.predict(train.X[val], num_iteration=best) * train.scale[val], train.y[val], train.hour[val]
        )
        model = lgb.train(params, lgb.Dataset(train.X, r), num_boost_round=best)
        p50 = model.predict(test.X) * test.scale
        h = hour_bucket(test.hour)
        fit_predict.trees = best  # type: ignore[attr-defined]
        return np.stack([p50 * (1 + lo[h]), p50, p50 * (1 + hi[h])], axis=1)

    return fit_predict


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", nargs="+", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--country", default="US")
    args = ap.parse_args()
    report = {}
    ok_all = True
    for path in args.data:
        t0 = time.perf_counter()
        series = load_series(path, min_days=30)
        refs = {"lightgbm_31": lightgbm_reference(31), "lightgbm_63": lightgbm_reference(63)}
        res = run_backtest(
            series,
            HolidayCalendar(args.country),
            references=refs,
            progress=lambda m, name=path.name: print(f"  {name}: {m}", file=sys.stderr, flush=True),
        )
        m = res.methods
        best_naive = min(m["naive_day"]["mape"], m["naive_week"]["mape"])
        best_ref = min(m["lightgbm_31"]["mape"], m["lightgbm_63"]["mape"])
        checks = {
            "moe_30pct_better_than_best_naive": m["moe"]["mape"] <= 0.7 * best_naive,
            "moe_at_least_as_good_as_lightgbm": m["moe"]["mape"] <= best_ref,
            "coverage_75_85": 0.75 <= m["moe"]["coverage_80"] <= 0.85,
        }
        ok_all &= all(checks.values())
        entry = {
            **res.to_json(),
            "improvement_vs_best_naive_pct": round(100 * (1 - m["moe"]["mape"] / best_naive), 1),
            "moe_vs_best_lightgbm_ratio": round(m["moe"]["mape"] / best_ref, 4),
            "reference_trees": {k: getattr(v, "trees", None) for k, v in refs.items()},
            "checks": checks,
            "wall_seconds": round(time.perf_counter() - t0, 1),
        }
        report[path.name] = entry
        print(
            f"\n{path.name}: {res.test_days} test days {res.test_start} .. {res.test_end}, temperature: "
            f"{res.temperature}"
        )
        print(f"{'method':<14}{'MAPE %':>8}{'MAE':>10}{'rMAE':>9}{'pinball':>10}{'cover80':>9}")
        for name, v in m.items():
            print(
                f"{name:<14}{v['mape']:>8.3f}{v['mae']:>10.1f}{v['rmae']:>9.4f}{v['pinball']:>10.1f}"
                f"{v['coverage_80'] * 100:>8.1f}%"
            )
        print(
            f"MoE vs best naive: {entry['improvement_vs_best_naive_pct']}% better; MoE/LightGBM MAPE ratio "
            f"{entry['moe_vs_best_lightgbm_ratio']}; checks: {checks}"
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main())
