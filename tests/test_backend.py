import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

import clipguard
from clipguard import _backend, _core
from clipguard.cli import main


def test_build_info_reports_what_was_built():
    info = clipguard.build_info()
    assert info["clipguard"] == clipguard.__version__
    assert info["backends"][-1] == "cpu"
    assert info["cuda_available"] == ("cuda" in info["backends"]) == clipguard.HAS_CUDA
    assert info["native_threads"] >= 1
    if not info["cuda_available"]:
        assert info["cuda_reason"], "a missing CUDA backend must say why"


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no CUDA compiler on this machine")
def test_cuda_module_is_built_where_nvcc_exists():
    """Compile-only CI: with nvcc present the CUDA module must have been built and must import,
    GPU or not, so the CUDA code cannot rot."""
    assert _core.cuda_status.startswith("built"), _core.cuda_status
    import clipguard._cuda as cuda

    assert cuda.device_count() >= 0
    assert hasattr(cuda.regions, "render") and hasattr(cuda.scoring, "compare")


def test_resolve_backend():
    assert _backend.resolve_backend("cpu") is _core
    assert _backend.resolve_backend("auto") is (_backend._cuda if clipguard.HAS_CUDA else _core)
    with pytest.raises(ValueError, match="backend must be"):
        _backend.resolve_backend("gpu")


def test_info_cli_json(capsys):
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["clipguard"] == clipguard.__version__ and "onnxruntime_providers" in info


def test_cli_usage_error_exit_code(tmp_path):
    # cwd outside the checkout, so the installed package is imported, not the source folder
    proc = subprocess.run(
        [sys.executable, "-m", "clipguard", "no-such-command"], capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.returncode == 4 and "invalid choice" in proc.stderr


def test_import_does_not_pull_heavy_dependencies(tmp_path):
    code = "import sys, clipguard; print(sorted(m for m in ('torch','onnxruntime','cv2','open_clip') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path).stdout
    assert out.strip() == "[]"


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no CUDA compiler on this machine")
def test_cuda_errors_are_the_package_error():
    """The CUDA module raises the package's one ClipguardError (not a class of its own), and
    importing it leaves the CPU core's errors as they were."""
    import clipguard._cuda as cuda

    assert cuda.ClipguardError is clipguard.ClipguardError
    if clipguard.HAS_CUDA:
        return  # a GPU is visible: the call below would succeed
    r = np.ones((2, 4), np.float32)
    with pytest.raises(clipguard.ClipguardError, match="CUDA"):
        cuda.scoring.compare(r, r[:1], np.zeros(2, np.int64), r, 10.0, 1)
