"""LightGBM boosters to one ONNX ``ai.onnx.ml`` opset-5 ``TreeEnsemble`` node.

Why not onnxmltools: its converter emits the opset-1/3 ``TreeEnsembleRegressor``, which
stores a string per node; for our trees that was ~4x the bytes of opset 5, and the bundled
models must stay around 3 MB. This module is small, exact, and tested against
``Booster.predict`` (tests/unit/test_models.py: ``test_each_expert_tree_export_is_exact``;
tests/unit/test_anomaly.py: ``test_onnx_matches_booster``).

Several boosters become several targets of one node: ``targets[k]`` is the output column
of booster ``k``'s trees (for a multiclass booster, class ``c`` of tree ``t`` goes to
column ``targets[k] + t % num_class``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

BRANCH_LEQ = 0


def _floor_f32(threshold: float) -> np.float32:
    """Largest float32 <= threshold, so that ``x32 <= t32`` iff ``x32 <= threshold``."""
    t = np.float32(threshold)
    if float(t) > threshold:
        t = np.nextafter(t, np.float32(-np.inf))
    return t


class _Builder:
    def __init__(self) -> None:
        self.feature: list[int] = []
        self.split: list[np.float32] = []
        self.true_id: list[int] = []
        self.true_leaf: list[int] = []
        self.false_id: list[int] = []
        self.false_leaf: list[int] = []
        self.missing_true: list[int] = []
        self.leaf_target: list[int] = []
        self.leaf_weight: list[float] = []
        self.roots: list[int] = []

    def _leaf(self, value: float, target: int) -> int:
        self.leaf_target.append(target)
        self.leaf_weight.append(value)
        return len(self.leaf_weight) - 1

    def _node(self) -> int:
        for lst in (
            self.feature,
            self.true_id,
            self.true_leaf,
            self.false_id,
            self.false_leaf,
            self.missing_true,
        ):
            lst.append(0)
        self.split.append(np.float32(0))
        return len(self.feature) - 1

    def add_tree(self, structure: dict[str, Any], target: int) -> None:
        if "leaf_value" in structure and "split_feature" not in structure:
            # A tree without splits: one node whose both branches reach the same leaf.
            nid = self._node()
            leaf = self._leaf(float(structure["leaf_value"]), target)
            self.true_id[nid] = self.false_id[nid] = leaf
            self.true_leaf[nid] = self.false_leaf[nid] = 1
            self.split[nid] = np.float32(0)
            self.roots.append(nid)
            return
        self.roots.append(self._add(structure, target))

    def _add(self, node: dict[str, Any], target: int) -> int:
        if node.get("decision_type", "<=") != "<=":
            raise ValueError(f"unsupported LightGBM split {node.get('decision_type')!r} (categorical?)")
        nid = self._node()
        thr = float(node["threshold"])
        self.feature[nid] = int(node["split_feature"])
        self.split[nid] = _floor_f32(thr)
        missing = node.get("missing_type", "None")
        if missing == "NaN":
            self.missing_true[nid] = int(bool(node["default_left"]))
        elif missing == "None":  # LightGBM maps NaN to 0.0 for such features
            self.missing_true[nid] = int(thr >= 0.0)
        else:
            raise ValueError(f"unsupported LightGBM missing_type {missing!r}")
        for side, ids, leafs in (
            ("left_child", self.true_id, self.true_leaf),
            ("right_child", self.false_id, self.false_leaf),
        ):
            child = node[side]
            if "split_feature" in child:
                ids[nid] = self._add(child, target)
                leafs[nid] = 0
            else:
                ids[nid] = self._leaf(float(child["leaf_value"]), target)
                leafs[nid] = 1
        return nid


def tree_ensemble_node(boosters: list[Any], input_name: str, output_name: str) -> tuple[Any, int]:
    """An ONNX ``TreeEnsemble`` node summing each booster's trees into its own column(s).

    Returns the node and the number of output columns.
    """
    from onnx import helper, numpy_helper

    b = _Builder()
    col = 0
    for booster in boosters:
        dump = booster.dump_model()
        n_class = int(dump.get("num_class", 1))
        per_iter = int(dump.get("num_tree_per_iteration", n_class))
        for i, tree in enumerate(dump["tree_info"]):
            b.add_tree(tree["tree_structure"], col + i % per_iter)
        col += per_iter
    node = helper.make_node(
        "TreeEnsemble",
        [input_name],
        [output_name],
        domain="ai.onnx.ml",
        n_targets=col,
        aggregate_function=1,  # SUM
        post_transform=0,  # NONE
        tree_roots=b.roots,
        nodes_modes=numpy_helper.from_array(np.zeros(len(b.feature), dtype=np.uint8)),
        nodes_featureids=b.feature,
        nodes_splits=numpy_helper.from_array(np.array(b.split, dtype=np.float32)),
        nodes_truenodeids=b.true_id,
        nodes_trueleafs=b.true_leaf,
        nodes_falsenodeids=b.false_id,
        nodes_falseleafs=b.false_leaf,
        nodes_missing_value_tracks_true=b.missing_true,
        leaf_targetids=b.leaf_target,
        leaf_weights=numpy_helper.from_array(np.array(b.leaf_weight, dtype=np.float32)),
    )
    return node, col


OPSET = 21
ML_OPSET = 5
IR_VERSION = 10


def make_model(nodes: list[Any], name: str, inputs: list[Any], outputs: list[Any], initializers: list[Any]) -> bytes:
    import onnx
    from onnx import helper

    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=initializers)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("ai.onnx.ml", ML_OPSET)],
        producer_name="smartgrid",
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()
