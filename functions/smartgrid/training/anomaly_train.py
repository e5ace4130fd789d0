"""Training, exporting and evaluating the anomaly detector.

Real load data has no labelled anomalies, so known ones are injected into copies of real
series (``inject_anomalies``) and a LightGBM multiclass model learns to tell them from the
natural variability of the clean readings around them. Evaluation injects events with a
different seed into held-out data and scores the ONNX model through onnxruntime.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from smartgrid.engine import model_files
from smartgrid.engine.anomaly import (
    ANOMALY_FEATURE_NAMES,
    INPUT_NAME,
    KINDS,
    OUTPUT_NAME,
    anomaly_features,
    predict_probabilities,
)
from smartgrid.engine.anomaly import detect as detect_anomalies
from smartgrid.engine.anomaly import steps as to_steps
from smartgrid.engine.data import DAY_S, Series, iso

SPIKE, DIP, FLATLINE = KINDS.index("spike"), KINDS.index("dip"), KINDS.index("flatline")
TRAIN_FRACTION = 0.8
N_ROUNDS = 200
EVAL_DAYS_PER_EVENT = 5.0
ONNX_TOLERANCE = 1e-5
TRAIN_COPIES = 2  # independently injected copies of each training series
TRAIN_DAYS_PER_EVENT = 4.0  # event density of the training copies
TRAIN_DAYS_PER_WINDOW = 30.0  # one 1-42 day window featurised alone per this many days
NEAR_EVENT_H = 4.0  # clean readings this close to an event are all kept for training
KEEP_FAR_NORMAL = 0.1  # share of the other clean readings kept (weighted up)
MISSING_SHARE = 0.005  # training copies lose this share of single readings ...
DAYS_PER_GAP = 20.0  # ... and one gap of 1-12 hours per this many days
THRESHOLD = 0.5

Progress = Callable[[str], None] | None


def inject_anomalies(
    load: np.ndarray, step_s: int, rng: np.random.Generator, n_events: int
) -> tuple[np.ndarray, np.ndarray]:
    """A corrupted copy of ``load`` and int labels per reading (0 normal, else KINDS index).

    Events (kind chosen uniformly; fewer than ``n_events`` if they no longer fit):
    - spike: one reading multiplied by 1.25..2.0 (a doubled or mis-scaled meter read);
    - dip: one reading multiplied by 0.2..0.75 (a partial or dropped read);
    - flatline: 3..12 hours all equal to the value at the run's start (a stuck meter; the
      whole run, its first reading included, is labelled);
    - level_shift: 6..72 hours multiplied by 1 +- 0.2..0.4 (a feeder switched in or out,
      a wrong scaling factor for a while).
    Events never touch missing readings and are at least one day apart.
    """
    load = np.asarray(load, dtype="float64")
    n = load.shape[0]
    out = load.copy()
    labels = np.zeros(n, dtype="int64")
    taken = np.zeros(n, dtype=bool)
    gap = DAY_S // step_s
    placed = 0
    for _ in range(50 * n_events + 100):
        if placed >= n_events or n < 2:
            break
        kind = int(rng.integers(1, len(KINDS)))
        if kind in (SPIKE, DIP):
            length = 1
        elif kind == FLATLINE:
            length = max(2, to_steps(rng.uniform(3.0, 12.0), step_s))
        else:
            length = to_steps(rng.uniform(6.0, 72.0), step_s)
        if length > n:
            continue
        a = int(rng.integers(0, n - length + 1))
        b = a + length
        if taken[max(0, a - gap) : b + gap].any() or np.isnan(load[a:b]).any():
            continue
        if kind == SPIKE:
            out[a] = load[a] * (1.0 + rng.uniform(0.25, 1.0))
        elif kind == DIP:
            out[a] = load[a] * (1.0 - rng.uniform(0.25, 0.8))
        elif kind == FLATLINE:
            if np.all(load[a:b] == load[a]):
                continue
            out[a:b] = load[a]
        else:
            sign = 1.0 if rng.random() < 0.5 else -1.0
            out[a:b] = load[a:b] * (1.0 + sign * rng.uniform(0.2, 0.4))
        labels[a:b] = kind
        taken[a:b] = True
        placed += 1
    return out, labels


def drop_readings(load: np.ndarray, labels: np.ndarray, step_s: int, rng: np.random.Generator) -> np.ndarray:
    """A copy with some clean readings missing (NaN), so that the model learns to do
    without neighbours: ``MISSING_SHARE`` of single readings plus a gap of 1-12 hours
    every ``DAYS_PER_GAP`` days."""
    out = load.copy()
    n = out.shape[0]
    drop = np.asarray(rng.random(n) < MISSING_SHARE, dtype=bool)
    for _ in range(int(n * step_s / DAY_S / DAYS_PER_GAP)):
        length = to_steps(rng.uniform(1.0, 12.0), step_s)
        a = int(rng.integers(0, max(1, n - length)))
        drop[a : a + length] = True
    out[drop & (labels == 0)] = np.nan
    return out


def _select(
    labels: np.ndarray, present: np.ndarray, step_s: int, rng: np.random.Generator, keep: float
) -> tuple[np.ndarray, np.ndarray]:
    """Rows to train on and their weights: injected readings, clean readings within
    ``NEAR_EVENT_H`` of one, and a ``keep`` share of the rest (weighted 1/keep)."""
    w = to_steps(NEAR_EVENT_H, step_s)
    cs = np.concatenate([[0], np.cumsum(labels > 0)])
    idx = np.arange(labels.shape[0])
    hi = np.minimum(idx + w + 1, labels.shape[0])
    near = cs[hi] - cs[np.maximum(idx - w, 0)] > 0
    chosen = present & (near | (rng.random(labels.shape[0]) < keep))
    rows = np.flatnonzero(chosen)
    return rows, np.where(near[rows], 1.0, 1.0 / keep)


def _training_rows(
    series_list: Sequence[Series], seed: int, copies: int, keep: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features, labels and weights from injected copies of each series. Besides the whole
    series, random windows of 1-42 days are featurised alone, as short requests are."""
    Xs, ys, ws = [], [], []

    def add(load: np.ndarray, labels: np.ndarray, s: Series, a: int, b: int, rng: np.random.Generator) -> None:
        start = s.start + np.timedelta64(a * s.step_s, "s")
        X = anomaly_features(load[a:b], s.step_s, start)
        rows, w = _select(labels[a:b], ~np.isnan(load[a:b]), s.step_s, rng, keep)
        Xs.append(X[rows])
        ys.append(labels[a:b][rows])
        ws.append(w)

    for s_idx, s in enumerate(series_list):
        days = s.n * s.step_s / DAY_S
        n_events = max(1, int(days / TRAIN_DAYS_PER_EVENT))
        spd = DAY_S // s.step_s
        for c in range(copies):
            rng = np.random.default_rng([seed, s_idx, c])
            load, labels = inject_anomalies(s.load, s.step_s, rng, n_events)
            load = drop_readings(load, labels, s.step_s, rng)
            add(load, labels, s, 0, s.n, rng)
            for _ in range(int(days / TRAIN_DAYS_PER_WINDOW)):
                length = min(s.n, round(spd * np.exp(rng.uniform(0.0, np.log(42.0)))))
                a = int(rng.integers(0, s.n - length + 1))
                add(load, labels, s, a, a + length, rng)
    return np.concatenate(Xs), np.concatenate(ys), np.concatenate(ws)


def train_detector(
    series_list: Sequence[Series],
    *,
    seed: int = 0,
    n_rounds: int = N_ROUNDS,
    copies: int = TRAIN_COPIES,
    keep: float = KEEP_FAR_NORMAL,
    threads: int = 1,
    progress: Progress = None,
) -> Any:
    """A LightGBM multiclass booster (classes = KINDS) trained on injected copies."""
    import lightgbm as lgb

    say = progress or (lambda _msg: None)
    X, y, w = _training_rows(series_list, seed, copies, keep)
    counts = np.bincount(y, minlength=len(KINDS)).tolist()
    say(f"{X.shape[0]} training rows, per kind {dict(zip(KINDS, counts, strict=True))}")
    params = {
        "objective": "multiclass",
        "num_class": len(KINDS),
        "learning_rate": 0.1,
        "num_leaves": 15,
        # Rare kinds (one reading per spike) need leaves of their own in small data sets.
        "min_data_in_leaf": int(np.clip(min(counts[1:]) // 25, 5, 40)),
        "max_bin": 255,
        "feature_fraction": 0.9,
        "bagging_fraction": 0.7,
        "bagging_freq": 1,
        "lambda_l2": 1.0,
        "seed": seed,
        "num_threads": threads,
        "verbose": -1,
        "deterministic": True,
        "force_row_wise": True,
    }
    ds = lgb.Dataset(X, y, weight=w, feature_name=list(ANOMALY_FEATURE_NAMES), free_raw_data=True)
    return lgb.train(params, ds, num_boost_round=n_rounds)


def export_detector_onnx(booster: Any) -> bytes:
    """ONNX graph: ``features`` float32 [N, F] -> ``probabilities`` float32 [N, 5]."""
    from onnx import TensorProto, helper

    from smartgrid.training.onnx_trees import make_model, tree_ensemble_node

    with np.errstate(over="ignore"):  # LightGBM's 1e300 "NaN vs rest" thresholds
        trees, n_out = tree_ensemble_node([booster], INPUT_NAME, "raw_scores")
    if n_out != len(KINDS):
        raise ValueError(f"expected a {len(KINDS)}-class booster, got {n_out} outputs")
    nodes = [trees, helper.make_node("Softmax", ["raw_scores"], [OUTPUT_NAME], axis=1)]
    return make_model(
        nodes,
        "anomaly_detector",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [None, len(ANOMALY_FEATURE_NAMES)])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [None, len(KINDS)])],
        [],
    )


def session_model(onnx_bytes: bytes, resolution_minutes: int = 60) -> model_files.LoadedModel:
    """Wrap ONNX bytes in a ``LoadedModel`` (one thread), e.g. to evaluate before saving."""
    session = model_files.make_session(onnx_bytes, threads=1)
    meta = model_files.ModelMetadata(
        name=model_files.ANOMALY_DETECTOR,
        version="unsaved",
        created_at="",
        training_window={},
        resolution_minutes=resolution_minutes,
        features=list(ANOMALY_FEATURE_NAMES),
        metrics={},
    )
    return model_files.LoadedModel(meta, session)


def _ratio(a: float, b: float) -> float | None:
    return float(a / b) if b else None


def evaluate_detector(
    series_list: Sequence[Series],
    model_or_session: Any,
    *,
    seed: int,
    n_events_per_series: int | Sequence[int],
    threshold: float = THRESHOLD,
    window_days: float | None = None,
    missing_share: float = 0.0,
) -> dict[str, Any]:
    """Inject known events into each series and score the ONNX model's detections.

    Per reading: a true positive is an injected reading flagged as any anomaly kind.
    ``clean_fp_rate`` is the share of non-injected readings flagged. Per kind: ``recall``
    (flagged at all), ``kind_recall`` (flagged as that kind), ``precision`` (readings called
    that kind that are that kind) and ``event_recall`` (events with any reading flagged).
    ``window_days``: score independent windows of this length (short requests) instead of
    whole series. ``missing_share``: drop this share of clean readings first.
    """
    model = model_or_session
    if not isinstance(model, model_files.LoadedModel):
        meta = model_files.ModelMetadata(
            name=model_files.ANOMALY_DETECTOR,
            version="unsaved",
            created_at="",
            training_window={},
            resolution_minutes=0,
            features=list(ANOMALY_FEATURE_NAMES),
            metrics={},
        )
        model = model_files.LoadedModel(meta, model_or_session)
    counts = (
        [n_events_per_series] * len(series_list) if isinstance(n_events_per_series, int) else list(n_events_per_series)
    )
    trues, preds, flags, event_ids = [], [], [], []
    n_events = 0
    for s_idx, s in enumerate(series_list):
        rng = np.random.default_rng([seed, s_idx, 7919])
        load, labels = inject_anomalies(s.load, s.step_s, rng, counts[s_idx])
        if missing_share > 0:
            gone = (rng.random(s.n) < missing_share) & (labels == 0)
            load[gone] = np.nan
        corrupted = Series(s.start, s.step_s, load, s.temperature, source=s.source)
        win = s.n if window_days is None else max(1, round(window_days * DAY_S / s.step_s))
        flagged = np.zeros(s.n, dtype=bool)
        kinds = np.zeros(s.n, dtype="int64")
        for a in range(0, s.n, win):
            det = detect_anomalies(corrupted.slice(a, min(s.n, a + win)), model, threshold)
            flagged[a : a + win] = det.flagged
            kinds[a : a + win] = [KINDS.index(k) if k in KINDS else 0 for k in det.kind]
        # Events are runs of one label, at least a day apart: number them.
        starts = (labels > 0) & np.r_[True, labels[1:] != labels[:-1]]
        ev = np.where(labels > 0, n_events + np.cumsum(starts) - 1, -1)
        n_events += int(starts.sum())
        present = ~np.isnan(load)
        trues.append(labels[present])
        preds.append(kinds[present])
        flags.append(flagged[present])
        event_ids.append(ev[present])
    y = np.concatenate(trues)
    k = np.concatenate(preds)
    f = np.concatenate(flags)
    ev_all = np.concatenate(event_ids)
    inj = y > 0
    tp = int(np.sum(inj & f))
    n_flag, n_inj = int(f.sum()), int(inj.sum())
    precision, recall = _ratio(tp, n_flag), _ratio(tp, n_inj)
    f1 = 2 * precision * recall / (precision + recall) if precision and recall else 0.0
    per_kind: dict[str, Any] = {}
    for c, name in enumerate(KINDS[1:], start=1):
        is_c = y == c
        ids = np.unique(ev_all[is_c])
        hit = np.unique(ev_all[is_c & f])
        per_kind[name] = {
            "events": int(ids.size),
            "readings": int(is_c.sum()),
            "recall": _ratio(int(np.sum(is_c & f)), int(is_c.sum())),
            "kind_recall": _ratio(int(np.sum(is_c & f & (k == c))), int(is_c.sum())),
            "precision": _ratio(int(np.sum(is_c & f & (k == c))), int(np.sum(f & (k == c)))),
            "event_recall": _ratio(int(hit.size), int(ids.size)),
        }
    return {
        "readings": int(y.size),
        "injected_readings": n_inj,
        "events": n_events,
        "flagged": n_flag,
        "precision": precision,
        "recall": recall,
        "f1": float(f1),
        "kind_accuracy": _ratio(int(np.sum(inj & f & (k == y))), tp),
        "clean_fp_rate": _ratio(int(np.sum(~inj & f)), int(np.sum(~inj))),
        "threshold": threshold,
        "per_kind": per_kind,
    }


def split_series(s: Series, fraction: float = TRAIN_FRACTION) -> tuple[Series, Series]:
    """The first ``fraction`` of a series and the rest."""
    cut = int(s.n * fraction)
    return s.slice(0, cut), s.slice(cut, s.n)


def eval_events(s: Series) -> int:
    """Events to inject into a held-out series: one per ``EVAL_DAYS_PER_EVENT``, at least 10."""
    return max(10, int(s.n * s.step_s / DAY_S / EVAL_DAYS_PER_EVENT))


def onnx_max_abs_diff(booster: Any, model: model_files.LoadedModel, X: np.ndarray) -> float:
    """Largest difference between the booster's and the ONNX model's probabilities."""
    X32 = np.ascontiguousarray(X, dtype="float32")
    ref = booster.predict(X32.astype("float64"), num_threads=1)
    got = predict_probabilities(model, X32)
    return float(np.max(np.abs(ref - got))) if X32.shape[0] else 0.0


def summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """The headline figures of an ``evaluate_detector`` result."""
    keys = ("precision", "recall", "f1", "clean_fp_rate")
    out: dict[str, Any] = {k: metrics[k] for k in keys}
    out["recall_per_kind"] = {k: v["recall"] for k, v in metrics["per_kind"].items()}
    return out


def train_and_save(
    series_list: Sequence[Series],
    out_dir: str | Path,
    *,
    training_window: dict[str, str],
    resolution_minutes: int,
    seed: int = 0,
    n_rounds: int = N_ROUNDS,
    n_events_per_series: int | None = None,
    progress: Progress = None,
) -> model_files.ModelMetadata:
    """Train on the first 80% of each series, evaluate on the rest (``n_events_per_series``
    events, default one per ``EVAL_DAYS_PER_EVENT`` days, injected with another seed), and
    save ONNX + metadata. Raises if ONNX and booster disagree."""
    say = progress or (lambda _msg: None)
    parts = [split_series(s) for s in series_list]
    train = [p[0] for p in parts]
    test = [p[1] for p in parts]
    t0, c0 = time.perf_counter(), time.process_time()
    booster = train_detector(train, seed=seed, n_rounds=n_rounds, progress=progress)
    train_s, train_cpu = time.perf_counter() - t0, time.process_time() - c0
    onnx_bytes = export_detector_onnx(booster)
    say(f"trained in {train_s:.1f} s; ONNX {len(onnx_bytes) / 1024:.0f} KB; evaluating")
    model = session_model(onnx_bytes, resolution_minutes)
    X = np.concatenate([anomaly_features(s.load, s.step_s, s.start) for s in test])
    diff = onnx_max_abs_diff(booster, model, X)
    if diff > ONNX_TOLERANCE:
        raise RuntimeError(f"ONNX export differs from the booster by {diff:g}")
    events = [eval_events(s) if n_events_per_series is None else n_events_per_series for s in test]
    metrics = evaluate_detector(test, model, seed=seed + 1000, n_events_per_series=events)
    short = evaluate_detector(test, model, seed=seed + 1000, n_events_per_series=events, window_days=7.0)
    metrics.update(
        windows_7d=summary(short),
        train_seconds=round(train_s, 2),
        train_cpu_seconds=round(train_cpu, 2),
        onnx_bytes=len(onnx_bytes),
        onnx_max_abs_diff=diff,
        n_rounds=n_rounds,
        eval_window={"start": iso(min(s.start for s in test)), "end": iso(max(s.end for s in test))},
    )
    meta = model_files.ModelMetadata(
        name=model_files.ANOMALY_DETECTOR,
        version=model_files.new_version(),
        created_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        training_window=training_window,
        resolution_minutes=resolution_minutes,
        features=list(ANOMALY_FEATURE_NAMES),
        metrics=metrics,
        params={"threshold": THRESHOLD, "kinds": list(KINDS)},
    )
    return model_files.save_model(out_dir, meta, onnx_bytes)
