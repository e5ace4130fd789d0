"""Cold-start floor: the least a process can do to answer one forecast with the same model.

    python benchmarks/baselines/floor.py [SPAWN_EPOCH_SECONDS]

Imports onnxruntime and numpy, creates an InferenceSession on the primary model
(``load_forecast.onnx``, 1 intra-op thread), runs ONE row of plausible feature values, and
prints the process's CPU time since start-up (interpreter start included) as JSON on a line
starting with ``BENCH ``. With the spawn time (``time.time()`` of the parent just before it
started this process), the wall time since spawn is printed too.
"""

import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

MODEL = Path(__file__).resolve().parents[2] / "functions" / "smartgrid" / "models" / "default" / "load_forecast.onnx"
# Row 12 (noon) of the features the product builds for examples/predict_single.json:
# calendar, normalised load lags and levels, temperature (NaN where the model has no value).
NAN = float("nan")
ROW = [
    *(0.0, -1.0, 12.0, 2.0, 0.0, 0.0, 0.0, 0.5322, -0.8466, 0.0),
    *(1.2846, 1.0989, 1.1436, 1.1587, 1.1489, 0.8835, 1.0918, 1.2881, 0.7686, 0.1675, 1.0586),
    *(NAN, 22.96, NAN, 18.9813, NAN, NAN, NAN, NAN, NAN, NAN),
]
SCALE = 3106.8  # the 7-day mean load (MW) the features are divided by


def main() -> None:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(MODEL), sess_options=opts, providers=["CPUExecutionProvider"])
    feeds = {}
    for inp in session.get_inputs():
        width = inp.shape[-1] if isinstance(inp.shape[-1], int) else 1
        values = ROW if width == len(ROW) else [SCALE] * width
        feeds[inp.name] = np.asarray([values], dtype=np.float32)
    out = session.run(None, feeds)
    assert np.isfinite(out[0]).all(), out[0]
    cpu = time.process_time()
    wall = time.time() - float(sys.argv[1]) if len(sys.argv) > 1 else None
    with open("/proc/self/status") as f:  # peak RSS of this image (ru_maxrss keeps the parent's)
        rss = next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:"))
    wall_text = "null" if wall is None else repr(wall)
    print(f'BENCH {{"cpu_s": {cpu!r}, "wall_s": {wall_text}, "maxrss_kib": {rss}, "status": 200}}', flush=True)


if __name__ == "__main__":
    main()
