"""The API contract fuzzed longer: tests/reliability/test_fuzz_api.py's schemathesis run (every
operation of the app's OpenAPI document, positive and negative generation, a valid / no /
wrong API key, schemathesis' checks and ours) with more examples per operation and a random
seed.

    python3 -m uv run --frozen --all-extras python benchmarks/fuzz_api.py [--examples N] [--seed S]
    python3 -m uv run --frozen --all-extras python benchmarks/fuzz_api.py --url http://localhost:8000 --api-key KEY

By default against the ASGI app on moto's in-process AWS (as the test does); with ``--url``
against a running ``smartgrid serve --api-key KEY`` (the API's own AWS emulator behind it).
The test runs in a pytest subprocess (``-n 0``; the seed is printed, so a failing run can be
repeated with ``--seed``). Prints and writes benchmarks/results/fuzz.json: cases tried per
operation and auth mode (by generation mode and phase), the responses' status codes, the
failures found (each operation and auth mode stops at its first), the duration, the seed and the
schemathesis version.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEST = "tests/reliability/test_fuzz_api.py"
RESULTS = ROOT / "benchmarks" / "results" / "fuzz.json"


def summarize(raw: dict) -> dict:
    """Per operation and auth mode: cases (in all, by generation mode and by phase) and statuses."""
    ops: dict[tuple[str, str], dict] = defaultdict(
        lambda: {"cases": 0, "by_mode": defaultdict(int), "by_phase": defaultdict(int), "statuses": {}}
    )
    for t in raw["tried"]:
        row = ops[(t["operation"], t["auth"])]
        row["cases"] += t["cases"]
        row["by_mode"][t["mode"]] += t["cases"]
        row["by_phase"][t["phase"]] += t["cases"]
    for s in raw["statuses"]:
        ops[(s["operation"], s["auth"])]["statuses"][str(s["status"])] = s["responses"]
    return {
        f"{op} [{auth}]": {**row, "by_mode": dict(row["by_mode"]), "by_phase": dict(row["by_phase"])}
        for (op, auth), row in sorted(ops.items())
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=150, help="fuzzing-phase examples per operation and auth mode")
    parser.add_argument("--seed", type=int, help="hypothesis seed (default: random, printed)")
    parser.add_argument("--url", help="fuzz a running `smartgrid serve` at this URL instead of the ASGI app")
    parser.add_argument("--api-key", help="with --url: the key given to `smartgrid serve --api-key`")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"results file (default: {RESULTS})")
    args = parser.parse_args()
    if args.url and not args.api_key:
        parser.error("--url needs --api-key")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    target = args.url or "ASGI app (create_app) on moto's in-process AWS"
    print(f"fuzzing {target}: {args.examples} examples per operation and auth mode, seed {seed}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        env = {
            **os.environ,
            "FUZZ_MAX_EXAMPLES": str(args.examples),
            "FUZZ_SEED": str(seed),
            "FUZZ_REPORT": str(report),
        }
        if args.url:
            env |= {"FUZZ_URL": args.url.rstrip("/"), "FUZZ_API_KEY": args.api_key}
        cmd = [sys.executable, "-m", "pytest", TEST, "-k", "test_contract_", "-n", "0", "-q", "-p", "no:cacheprovider"]
        cmd += ["--show-capture=no"]
        t0 = time.perf_counter()
        out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
        duration = time.perf_counter() - t0
        if not report.exists():
            print(out.stdout[-5000:], out.stderr[-5000:], file=sys.stderr)
            return 2
        raw = json.loads(report.read_text())

    operations = summarize(raw)
    result = {
        "target": target,
        "schemathesis": metadata.version("schemathesis"),
        "hypothesis": metadata.version("hypothesis"),
        "python": platform.python_version(),
        "examples_per_operation": args.examples,
        "seed": seed,
        "duration_s": round(duration, 1),
        "cases_total": sum(row["cases"] for row in operations.values()),
        "failures_found": len(raw["failures"]),
        "pytest": out.stdout.strip().splitlines()[-1] if out.stdout.strip() else "",
        "operations": operations,
        "failures": raw["failures"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")

    width = max(len(k) for k in operations)
    for name, row in operations.items():
        statuses = " ".join(f"{k}:{v}" for k, v in sorted(row["statuses"].items()))
        modes = " ".join(f"{k}:{v}" for k, v in sorted(row["by_mode"].items()))
        print(f"{name:<{width}}  {row['cases']:>6} cases ({modes})  statuses {statuses}")
    for f in raw["failures"]:
        print(f"\nFAILURE {f['operation']} [{f['auth']}]\n{f['failure']}")
    print(
        f"\n{result['cases_total']} cases, {result['failures_found']} failure(s), {duration:.0f} s, "
        f"schemathesis {result['schemathesis']}, seed {seed} -> {args.out}"
    )
    return 1 if raw["failures"] or out.returncode else 0


if __name__ == "__main__":
    sys.exit(main())
