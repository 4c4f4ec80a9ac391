#!/usr/bin/env bash
# The GPU checks as one prepared run on the lent GPU machine (the `device` tool): `pytest tests/gpu`
# then `python -m bench.gpu`. That machine reaches no package index; its python3 (3.12) holds
# torch with CUDA, numpy, Pillow and plain onnxruntime (no CUDA provider: the ONNX Runtime figures
# there are its 16 CPU cores'), but not FastAPI, Celery, pydantic and the rest of the service's
# packages, which travel as wheels (wheels.txt, sdists.txt):
#
#   here, first:  bash bench/gpu_machine/run.sh wheels     # into .whl/ (git-ignored), about 32 MB
#   there:        run(command="bash bench/gpu_machine/run.sh", carry=[".whl"], timeout_s=500)
#                 ("... run.sh tests" or "... run.sh bench" runs one part)
#
# The logs land in $OUT (there) or bench/out/gpu (elsewhere); bench.gpu prints each part as it
# ends, so a run cut short still returns what it measured. Each part has a time limit (120 s,
# 330 s) inside the call's; how long the full bench.gpu takes there is not known yet. One run
# fits a 15-minute lease; a second full one would not, but a rerun of one part can.
# Checked here in a Python 3.11 venv holding only that machine's packages plus the same wheel
# list downloaded for 3.11: the tests (skipped without CUDA) and `bench.gpu --smoke` pass there.
set -u -o pipefail
cd "$(dirname "$0")/../.."
here=bench/gpu_machine
part=${1:-all}

if [ "$part" = wheels ]; then
    python=${PYTHON:-.venv/bin/python}
    rm -rf .whl && mkdir .whl  # one version of each package: two would stop the install there
    grep -v '^#' $here/wheels.txt | "$python" -m pip download -q --no-deps --only-binary=:all: \
        --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl -r /dev/stdin || exit 1
    # published as source archives only: built here into (pure Python) wheels
    grep -v '^#' $here/sdists.txt | "$python" -m pip wheel -q --no-deps -w .whl -r /dev/stdin || exit 1
    du -sh .whl
    exit 0
fi
case "$part" in
    all | tests | bench) ;;
    *) echo "usage: $0 [all|tests|bench|wheels]"; exit 2 ;;
esac

out=${OUT:-bench/out/gpu}
mkdir -p "$out"
[ -d .whl ] || { echo "no .whl/: run 'bash $here/run.sh wheels' here first, and carry .whl"; exit 1; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
{
    nvidia-smi -L
    python3 -c "import sys, torch, onnxruntime; print(sys.version.split()[0], 'torch', torch.__version__,
'cuda', torch.cuda.is_available(), 'onnxruntime', onnxruntime.__version__, onnxruntime.get_available_providers())"
} 2>&1 | tee "$out/machine.txt"
# SIGINT first, so that pytest prints its summary and Python's clean-up runs; KILL 15 s later
tests=0 bench=0
if [ "$part" != bench ]; then
    timeout -s INT -k 15 120 python3 -m pytest -q -p no:cacheprovider tests/gpu tests/unit/test_gpu_paths.py \
        2>&1 | tee "$out/tests.log"
    tests=$?
fi
if [ "$part" != tests ]; then
    timeout -s INT -k 15 330 python3 -m bench.gpu 2>&1 | tee "$out/bench.log"
    bench=$?
fi
echo "tests exit $tests, bench exit $bench" | tee -a "$out/machine.txt"
[ "$tests" = 0 ] && [ "$bench" = 0 ]
