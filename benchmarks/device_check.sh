#!/usr/bin/env bash
# GPU check on a rented machine: build with the CUDA module required (warnings are errors), run the
# CUDA tests, then the three benchmarks with their CUDA column at modest sizes (about a minute).
# Everything goes to $OUT/device_check.log (./device_check.log without $OUT); exits nonzero when
# the build, the tests or a benchmark's CUDA-equals-CPU assertion fail.
#
#     bash benchmarks/device_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
LOG="${OUT:-.}/device_check.log"

step() { printf '\n=== %s (%ds)\n' "$*" "$SECONDS"; }

main() {
    command -v nvcc >/dev/null || export PATH="$PATH:/usr/local/cuda/bin"
    step "devices"
    nvidia-smi -L
    nvcc --version
    git rev-parse HEAD 2>/dev/null || true

    step "build and install in place, CUDA required"
    if [[ -z "${CLIPGUARD_SKIP_BUILD:-}" ]]; then  # set it when the same tree was just built
        CLIPGUARD_CUDA=ON CLIPGUARD_WERROR=ON python3 -m pip install --no-deps --no-build-isolation -e .
    fi
    python3 -m clipguard info
    python3 -c 'import sys, clipguard; info = clipguard.build_info(); sys.exit(None if info["cuda_available"]
        else "clipguard.HAS_CUDA is false: " + str(info["cuda_reason"]))'

    step "CUDA tests"
    python3 -m pytest -q -p no:cacheprovider -m cuda tests/test_regions.py tests/test_scoring.py tests/test_oracle.py
    # test_backend has no cuda-marked tests; all of it checks what was built and what is live
    python3 -m pytest -q -p no:cacheprovider tests/test_backend.py

    step "benchmarks"
    python3 benchmarks/bench_regions.py --scenes 128 --regions 1000
    python3 benchmarks/bench_scoring.py
    # quality needs the classical oracle (opencv-contrib) or onnx; it has no CUDA column
    python3 benchmarks/bench_oracle.py --skip-quality
    step "done"
}

main 2>&1 | tee "$LOG"
