import glob
import os
import sys

import pytest

# `python -m pytest` puts the checkout on sys.path, where the source package `clipguard/` (without
# its compiled `_core`, which only the installed package has) would shadow the installed one.
# Tests always run against the installed package, whichever way pytest was started.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if not glob.glob(os.path.join(_ROOT, "clipguard", "_core*")):
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _ROOT]
    for name in [m for m in sys.modules if m == "clipguard" or m.startswith("clipguard.")]:
        del sys.modules[name]

# The reference implementations live next to the tests.
sys.path.insert(0, os.path.dirname(__file__))

from clipguard._backend import HAS_CUDA  # noqa: E402

BACKENDS = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU")]),
]


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Every kernel test runs on each backend present here; CUDA results must equal the CPU's."""
    return request.param
