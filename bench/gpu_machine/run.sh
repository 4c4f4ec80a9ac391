#!/usr/bin/env bash
# The GPU checks as one prepared run on the lent GPU machine (the `device` tool): `pytest tests/gpu`
# then `python -m bench.gpu`. That machine reaches no package index; its python3 (3.12) holds
# torch with CUDA, numpy, Pillow and plain onnxruntime (no CUDA provider: the ONNX Runtime figures
# there are its 16 CPU cores'), but not FastAPI, Celery, pydantic and the rest of the service's
# packages, which travel as wheels (wheels.txt):
#
#   here, once:  bash bench/gpu_machine/run.sh wheels   # into .whl/ (git-ignored), about 32 MB
#   there:       run(command="bash bench/gpu_machine/run.sh", carry=[".whl"], timeout_s=480)
#
# The logs land in $OUT (there) or bench/out/gpu (elsewhere). Each part has a time limit, so
# the run ends inside one call and leaves device time to rerun it. Checked on this machine in a
# Python 3.11 venv holding only that machine's packages (torch on the CPU, plain onnxruntime)
# plus these wheels: the tests and `bench.gpu --smoke` pass there.
set -u -o pipefail
cd "$(dirname "$0")/../.."
here=bench/gpu_machine

if [ "${1:-}" = wheels ]; then
    python=${PYTHON:-.venv/bin/python}
    mkdir -p .whl
    grep -q '^/\.whl/$' .git/info/exclude 2>/dev/null || echo /.whl/ >>.git/info/exclude
    grep -v '^#' $here/wheels.txt | "$python" -m pip download -q --no-deps --only-binary=:all: \
        --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl -r /dev/stdin || exit 1
    # grad-cam is published as a source archive only: built here into a wheel (pure Python)
    grep -v '^#' $here/sdists.txt | "$python" -m pip wheel -q --no-deps -w .whl -r /dev/stdin || exit 1
    du -sh .whl
    exit 0
fi

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
timeout 150 python3 -m pytest -q -p no:cacheprovider -o addopts=-ra tests/gpu tests/unit/test_gpu_paths.py \
    2>&1 | tee "$out/tests.log"
tests=$?
timeout 300 python3 -m bench.gpu 2>&1 | tee "$out/bench.log"
bench=$?
echo "tests exit $tests, bench exit $bench" | tee -a "$out/machine.txt"
[ "$tests" = 0 ] && [ "$bench" = 0 ]
