"""The native entry points under random, mostly hostile arguments: every call succeeds or is
rejected with ValueError, TypeError or ClipguardError (never a crash or another exception).
The suite runs a few thousand calls; ``python tests/fuzz_native.py --calls 100000`` is the full
run recorded in docs/security.md."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from fuzz_native import ENTRY_POINTS, fuzz  # noqa: E402


def test_native_entry_points_survive_fuzzing():
    stats = fuzz(4000, seed=1)
    assert set(stats) == set(ENTRY_POINTS)
    for name, s in stats.items():
        # both outcomes occur: the templates are valid often enough to reach the kernels
        assert s["ok"] > 0 and s["rejected"] > 0, (name, s)
