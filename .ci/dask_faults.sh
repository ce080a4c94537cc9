#!/usr/bin/env bash
# Manual fault check (not part of the suite: it takes ~1 min): a real `dask scheduler` and
# `dask worker`, `xspeckle retrieve --scheduler` on a 40-angle scan, and `kill -9` of the
# scheduler or of the worker 6 s into the run.  Expected: exit 2, one error line naming the cause
# (a lost scheduler at once, no live worker within NO_WORKER_TIMEOUT_S = 30 s + 2 s), the finished
# angles kept in .kk.h5.partial.   Usage: .ci/dask_faults.sh scheduler|worker
set -uo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
B="$REPO/.venv/bin"
WHAT="${1:-worker}"
D="$(mktemp -d)"
cd "$D"
PORT=$("$B/python" -c "import socket;s=socket.socket();s.bind(('127.0.0.1',0));print(s.getsockname()[1])")
"$B/dask" scheduler --port "$PORT" --no-dashboard >/dev/null 2>&1 & SP=$!
sleep 4
"$B/dask" worker "tcp://127.0.0.1:$PORT" --nthreads 1 --no-dashboard >/dev/null 2>&1 & WP=$!
sleep 5
"$B/python" - <<'PY'
import numpy as np
from scipy.ndimage import gaussian_filter
from xspeckle.geometry import Geometry
from xspeckle.io.scan import write_scan
r = np.random.default_rng(0)
ref = (1 + 0.3 * gaussian_filter(r.standard_normal((2, 256, 256)), (0, 1.5, 1.5))).astype(np.float32)
smp = np.stack([0.9 * np.roll(ref, 1, axis=-1)] * 40, axis=1)
write_scan("big.h5", data=smp * 1000, reference=ref * 1000, theta_deg=np.linspace(0, 180, 40, endpoint=False),
           geometry=Geometry(energy_ev=2e4, pixel_size_m=2e-6, sample_detector_distance_m=0.5))
PY
( sleep 6; if [ "$WHAT" = scheduler ]; then kill -9 $SP; else kill -9 $WP; fi; date +%s.%N > killed_at ) &
KP=$!
"$B/xspeckle" retrieve big.h5 kk.h5 --method umpa --param max_shift=8 --scheduler "tcp://127.0.0.1:$PORT"
echo "exit status $?; $("$B/python" -c "import time;print(round(time.time()-float(open('killed_at').read()),1))") s after kill -9 of the $WHAT"
wait $KP 2>/dev/null
kill -9 $SP $WP 2>/dev/null
wait 2>/dev/null
rm -rf "$D"
