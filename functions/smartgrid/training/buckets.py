"""Hour-of-day buckets for per-hour interval offsets, in numpy and as ONNX nodes.

The fallback, the mixture of experts and the naive baselines all look up P10/P90 offsets
in 24-row tables by the (fractional) hour of the forecast step; this is that lookup, once.
"""

from __future__ import annotations

from typing import Any

import numpy as np

HOUR_BUCKETS = 24


def hour_bucket(hour: np.ndarray) -> np.ndarray:
    """Bucket 0..23 of each (fractional) hour of day."""
    return np.clip(np.floor(hour).astype(int), 0, HOUR_BUCKETS - 1)


def onnx_bucket_lookup(hour: str, tables: dict[str, np.ndarray], prefix: str) -> tuple[list[Any], list[Any]]:
    """ONNX nodes and initializers gathering row ``hour_bucket(hour)`` of each table.

    ``hour`` names a float [N, 1] tensor; each table is [24] (stored as [24, 1]) and its
    gathered [N, 1] output is named after its key. Returns (nodes, initializers).
    """
    from onnx import TensorProto, helper, numpy_helper

    p = prefix
    inits = [
        numpy_helper.from_array(np.array(0.0, dtype="float32"), f"{p}min"),
        numpy_helper.from_array(np.array(HOUR_BUCKETS - 1.0, dtype="float32"), f"{p}max"),
        numpy_helper.from_array(np.array([-1], dtype="int64"), f"{p}flat"),
    ]
    N = helper.make_node
    nodes = [
        N("Floor", [hour], [f"{p}floor"]),
        N("Clip", [f"{p}floor", f"{p}min", f"{p}max"], [f"{p}clip"]),
        N("Cast", [f"{p}clip"], [f"{p}int"], to=TensorProto.INT64),
        N("Reshape", [f"{p}int", f"{p}flat"], [f"{p}index"]),
    ]
    for out, table in tables.items():
        inits.append(numpy_helper.from_array(np.asarray(table, dtype="float32").reshape(-1, 1), f"{p}{out}_table"))
        nodes.append(N("Gather", [f"{p}{out}_table", f"{p}index"], [out], axis=0))
    return nodes, inits
