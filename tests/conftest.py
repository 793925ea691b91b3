import os
import sys

import pytest

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
