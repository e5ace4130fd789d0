"""Build the Lambda layers from layers/spec.toml without Docker.

    python3 -m uv run --frozen python layers/build.py [--arch x86_64|arm64] [--out build/layers] [--no-smoke]

For each layer: the locked versions (``uv export --frozen --no-dev``) of its packages are
installed with ``pip install --no-deps --platform manylinux_2_28_<arch> --only-binary=:all:
--python-version <runtime> --implementation cp --target <dir>/python`` (manylinux2014 has no
onnxruntime wheel for current Pythons), trimmed, byte-compiled by this interpreter (which must
be the runtime's Python, pinned in .python-version: Lambda cannot write .pyc files, and
without them cold start was 1.9x slower) and zipped. Packages the Lambda runtime provides
(boto3, botocore and theirs) and CLI-only packages are left out. Prints sizes against the
goals, and, when the target matches this machine, runs an import-and-predict smoke test with
nothing but the built layers and the function code on ``sys.path``. Exits 1 if a goal or the
smoke test fails.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import platform
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "layers" / "spec.toml"
FUNCTION_CODE = ROOT / "functions"
MB = 1024 * 1024


def runtime_version() -> str:
    return (ROOT / ".python-version").read_text().strip()


def locked_requirements() -> dict[str, str]:
    """name -> pinned requirement line, from uv.lock (runtime dependencies only)."""
    uv = os.environ.get("UV") or shutil.which("uv")  # `uv run` sets UV to itself
    cmd = [uv] if uv else [sys.executable, "-m", "uv"]
    out = subprocess.run(
        [*cmd, "export", "--frozen", "--no-dev", "--no-hashes", "--no-emit-project"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "UV_PYTHON_DOWNLOADS": "never"},
    ).stdout
    reqs = {}
    for line in out.splitlines():
        line = line.split("#")[0].strip()
        if not line or line.startswith("-"):
            continue
        if ";" in line and "win32" in line:
            continue  # platform markers that never hold on Lambda
        name = line.split("==")[0].strip().lower()
        reqs[name] = line.split(";")[0].strip()
    return reqs


def layer_packages(spec: dict, reqs: dict[str, str]) -> dict[str, list[str]]:
    skip = {n.lower() for n in spec["provided"] + spec["cli_only"] + spec.get("unused", [])}
    named = {p.lower() for layer in spec["layer"] if layer["packages"] != "rest" for p in layer["packages"]}
    missing = named - reqs.keys()
    if missing:
        raise SystemExit(f"spec names packages that are not runtime dependencies in uv.lock: {sorted(missing)}")
    out = {}
    for layer in spec["layer"]:
        if layer["packages"] == "rest":
            names = sorted(n for n in reqs if n not in skip and n not in named)
        else:
            names = [p.lower() for p in layer["packages"]]
        out[layer["name"]] = [reqs[n] for n in names]
    return out


def pip_install(requirements: list[str], target: Path, arch: str) -> None:
    cmd = [
        sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
        "--root-user-action", "ignore",
        "--no-compile", "--platform", f"manylinux_2_28_{arch}", "--platform", f"manylinux_2_17_{arch}",
        "--platform", f"manylinux2014_{arch}", "--only-binary=:all:", "--python-version", runtime_version(),
        "--implementation", "cp", "--target", str(target), *requirements,
    ]  # fmt: skip
    subprocess.run(cmd, check=True)


def trim(root: Path, patterns: list[str]) -> int:
    """Delete what the patterns match (relative to site root); returns bytes removed."""
    removed = 0
    for path in sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        rel = path.relative_to(root).as_posix()
        if any(fnmatch.fnmatch(rel, pat) for pat in patterns) and path.exists():
            removed += tree_size(path)
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    for info in root.glob("*.dist-info"):
        (info / "RECORD").unlink(missing_ok=True)  # stale after trimming; not needed at run time
    return removed


def tree_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def compile_pyc(root: Path) -> None:
    subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0", str(root)], check=True)


def write_zip(src: Path, dest: Path) -> None:
    dest.unlink(missing_ok=True)
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for path in sorted(src.rglob("*")):
            if path.is_file():
                info = zipfile.ZipInfo(path.relative_to(src).as_posix(), date_time=(2020, 1, 1, 0, 0, 0))
                info.external_attr = 0o644 << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, path.read_bytes())


SMOKE = """
import sys, json
import numpy as np
import onnxruntime
from smartgrid.engine.data import readings_from_records
from smartgrid.engine.forecast import Forecaster, ModelSet
from smartgrid.engine.features import HolidayCalendar
body = json.load(open(sys.argv[1]))["history"]
ms = ModelSet.load(sys.argv[2])
fc = Forecaster(ms, HolidayCalendar("US")).forecast_readings(
    readings_from_records(body["timestamps"], body["load"], body["temperature"])
)
assert ms.models_loaded == 3, ms.errors
assert fc.model == "load_forecast" and len(fc.p50) == 24 and np.isfinite(fc.p50).all()
assert not any("site-packages" in p for p in sys.path), sys.path
# the Lambda entry point imports and answers with the layers and the runtime's boto3/botocore
from smartgrid.api import handler
event = {"resource": "/{proxy+}", "path": "/models", "httpMethod": "GET", "headers": {}, "multiValueHeaders": {},
         "queryStringParameters": None, "multiValueQueryStringParameters": None, "body": None,
         "isBase64Encoded": False, "requestContext": {"requestId": "smoke", "stage": "prod", "identity": {}}}
class Context:
    function_name, memory_limit_in_mb, aws_request_id = "smoke", 1024, "smoke"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:smoke"
assert handler.handler(event, Context())["statusCode"] == 401
from smartgrid.engine.features import compute_holiday_days
assert len(compute_holiday_days("DE", None)) > 0  # a calendar that is not pre-computed
print(json.dumps({"onnxruntime": onnxruntime.__version__, "model": fc.model, "p50_first": round(float(fc.p50[0]), 3)}))
"""


def lambda_provided(spec: dict, dest: Path) -> Path:
    """A stand-in for what the Lambda runtime provides (boto3, botocore and theirs): links to
    the project environment's copies (``uv sync`` makes it)."""
    import importlib.metadata as md

    site = ROOT / ".venv" / "lib" / f"python{runtime_version()}" / "site-packages"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for name in spec["provided"]:
        found = [d for d in md.distributions(path=[str(site)]) if d.metadata["Name"].lower() == name.lower()]
        if not found:
            raise SystemExit(f"{name} is not in {site}: run `uv sync` first (it stands in for the Lambda runtime)")
        dist = found[0]
        tops = (dist.read_text("top_level.txt") or "").split() or [name.replace("-", "_")]
        for top in tops:
            for src in (Path(str(dist.locate_file(top))), Path(str(dist.locate_file(top + ".py")))):
                if src.exists():
                    (dest / src.name).symlink_to(src)
    return dest


def smoke_test(layer_dirs: list[Path], provided: Path) -> dict:
    """Import and predict with only the layers, the function code and the runtime's own
    packages on ``sys.path`` (no site-packages)."""
    paths = [str(d / "python") for d in layer_dirs] + [str(FUNCTION_CODE), str(provided)]
    code = f"import sys; sys.path[:0] = {paths!r}\n" + SMOKE
    out = subprocess.run(
        [sys.executable, "-S", "-c", code, str(ROOT / "examples" / "predict_single.json"),
         str(FUNCTION_CODE / "smartgrid" / "engine" / "models" / "default")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if out.returncode != 0:
        raise SystemExit(f"smoke test failed:\n{out.stderr[-3000:]}")
    result: dict = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", choices=["x86_64", "aarch64", "arm64"], default="x86_64")
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "layers")
    ap.add_argument("--no-smoke", action="store_true", help="skip the import-and-predict test")
    args = ap.parse_args()
    arch = "aarch64" if args.arch == "arm64" else args.arch
    want = runtime_version()
    have = f"{sys.version_info.major}.{sys.version_info.minor}"
    if have != want:
        raise SystemExit(f"run this with Python {want} (.python-version): .pyc files are per version; this is {have}")
    spec = tomllib.loads(SPEC.read_text())
    packages = layer_packages(spec, locked_requirements())
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict = {"arch": arch, "python": want, "layers": {}}
    dirs = []
    ok = True
    for layer in spec["layer"]:
        name = layer["name"]
        d = args.out / f"{arch}-{name}"
        shutil.rmtree(d, ignore_errors=True)
        site = d / "python"
        pip_install(packages[name], site, arch)
        removed = trim(site, layer.get("trim", []))
        compile_pyc(site)
        z = args.out / f"{arch}-{name}.zip"
        write_zip(d, z)
        entry = {
            "packages": [r.split("==")[0] for r in packages[name]],
            "unzipped_mb": round(tree_size(d) / MB, 1),
            "zipped_mb": round(z.stat().st_size / MB, 1),
            "trimmed_mb": round(removed / MB, 1),
            "zip": str(z.relative_to(ROOT) if z.is_relative_to(ROOT) else z),
        }
        if "max_zipped_mb" in layer:
            entry["goal_zipped_mb"] = layer["max_zipped_mb"]
            entry["goal_met"] = entry["zipped_mb"] <= layer["max_zipped_mb"]
            ok &= entry["goal_met"]
        report["layers"][name] = entry
        dirs.append(d)
    code_mb = tree_size(FUNCTION_CODE / "smartgrid") / MB
    total = sum(e["unzipped_mb"] for e in report["layers"].values()) + code_mb
    limit = spec["limits"]["max_total_unzipped_mb"]
    report["function_code_unzipped_mb"] = round(code_mb, 1)
    report["total_unzipped_mb"] = {"value": round(total, 1), "goal": limit, "goal_met": total <= limit}
    ok &= total <= limit
    host = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}.get(platform.machine())
    if args.no_smoke or host != arch:
        report["smoke_test"] = "skipped" + ("" if args.no_smoke else f" (target {arch}, host {platform.machine()})")
    else:
        report["smoke_test"] = smoke_test(dirs, lambda_provided(spec, args.out / "lambda-runtime-standin"))
    print(json.dumps(report, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
