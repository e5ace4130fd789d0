"""The Lambda layers build without Docker from layers/spec.toml, meet their size goals, and the
built layers alone (plus the runtime's boto3/botocore) import the handler and predict."""

from __future__ import annotations

import zipfile

import pytest

pytestmark = [
    pytest.mark.xdist_group("layers"),  # one worker builds the layers (built_layers)
    pytest.mark.slow,  # a layer build: pip downloads and installs each layer's packages
]


def test_layers_build_small_and_working(built_layers):
    tmp_path, report = built_layers
    onnx = report["layers"]["onnxruntime"]
    assert onnx["zipped_mb"] <= 30 and onnx["goal_met"]
    assert report["total_unzipped_mb"]["value"] <= 110 and report["total_unzipped_mb"]["goal_met"]
    assert report["smoke_test"]["model"] == "load_forecast"  # imported and predicted from the layers
    names = zipfile.ZipFile(tmp_path / "x86_64-onnxruntime.zip").namelist()
    assert all(n.startswith("python/") for n in names)
    assert any(n.endswith(".cpython-312.pyc") for n in names)  # compiled by the runtime's Python
    assert not any(n.startswith("python/onnxruntime/transformers/") for n in names)  # trimmed
    runtime = zipfile.ZipFile(tmp_path / "x86_64-runtime.zip").namelist()
    assert not any(n.startswith(("python/boto3/", "python/botocore/", "python/typer/")) for n in runtime)
    assert any(n.startswith("python/fastapi/") for n in runtime)
