"""Run the method property tests N times, each with a fresh random hypothesis seed.

Equivalent to N runs of ``pytest tests/test_properties.py -k METHOD`` on machines with
different random states (CI itself runs hypothesis derandomised, tests/conftest.py), in one
process.  Usage: ``.venv/bin/python .ci/property_stress.py [METHOD] [N]`` (default xsvt 200).
Exit status 1 when any run failed; each failure prints its seed (reproduce with
``@hypothesis.seed(SEED)``).
"""

import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from hypothesis import seed as hseed  # noqa: E402

import test_properties as tp  # noqa: E402

method = sys.argv[1] if len(sys.argv) > 1 else "xsvt"
n = int(sys.argv[2]) if len(sys.argv) > 2 else 200
t0 = time.time()
fails = 0
for _ in range(n):
    s = random.SystemRandom().randrange(2**32)
    for f in (tp.test_methods_finite_shapes_and_scale_invariant, tp.test_methods_scale_invariant_on_average):
        try:
            hseed(s)(f)(method=method)
        except Exception as exc:  # noqa: BLE001 - report every failure with its seed
            fails += 1
            print(f"FAIL {f.__name__}[{method}] seed={s}: {exc}")
print(f"{method}: {n} runs x 2 property tests with random seeds, {fails} failures, {time.time() - t0:.0f} s")
sys.exit(1 if fails else 0)
