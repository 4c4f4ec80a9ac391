#!/usr/bin/env bash
# The GPU checks as one prepared run on the lent GPU machine (the `device` tool): `pytest tests/gpu`
# then `python -m bench.gpu`. That machine reaches no package index; its python3 (3.12) holds
# torch with CUDA, numpy, Pillow and plain onnxruntime (no CUDA provider: see ort-gpu below), but
# not FastAPI, Celery, pydantic and the rest of the service's packages, which travel as wheels
# (wheels.txt, sdists.txt):
#
#   here, first:  bash bench/gpu_machine/run.sh wheels     # into .whl/ (git-ignored), about 32 MB
#   there:        run(command="bash bench/gpu_machine/run.sh", carry=[".whl"], timeout_s=500)
#                 ("... run.sh tests" or "... run.sh bench" runs one part)
#
# ONNX Runtime's CUDA provider (onnxruntime-gpu, built for CUDA 13 like that machine's torch) is a
# 255 MB wheel, over the 64 MiB that one call carries. `run.sh ort-gpu` packs its package, without
# the optional tools, as xz pieces of 60 MiB in .ort1/, .ort2/, ... (git-ignored). Carry each in a
# call of its own (command `true`), one right after the other so the machine stays warm (30 s), and
# .ort4 with .whl in the run itself: a piece carried once stays there, and run.sh unpacks them all.
#
# The logs land in $OUT (there) or bench/out/gpu (elsewhere); bench.gpu prints each part as it
# ends, so a run cut short still returns what it measured. Each part has a time limit (130 s,
# 400 s) inside the call's; on an H200 (2026-12-04, CPU ONNX Runtime) they took 45 s and 290 s. One run
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
if [ "$part" = ort-gpu ]; then
    python=${PYTHON:-.venv/bin/python}
    scratch=$(mktemp -d) && trap 'rm -rf "$scratch"' EXIT
    "$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 -d "$scratch" onnxruntime-gpu==1.31.1 || exit 1
    (cd "$scratch" && unzip -q ./*.whl 'onnxruntime/*' -x 'onnxruntime/transformers/*' 'onnxruntime/tools/*' \
        'onnxruntime/quantization/*' 'onnxruntime/capi/libonnxruntime_providers_tensorrt.so') || exit 1
    rm -rf .ort[0-9]*
    tar -C "$scratch" -cf - onnxruntime | xz -T0 -9e | split -b 60M -d -a 1 - "$scratch/piece." || exit 1
    for piece in "$scratch"/piece.*; do
        index=$(( ${piece##*.} + 1 ))
        mkdir -p ".ort$index" && mv "$piece" ".ort$index/"
    done
    ls .ort[0-9]*/piece.* | wc -l > .ort1/pieces
    du -sh .ort[0-9]*
    exit 0
fi
case "$part" in
    all | tests | bench) ;;
    *) echo "usage: $0 [all|tests|bench|wheels|ort-gpu]"; exit 2 ;;
esac

out=${OUT:-bench/out/gpu}
mkdir -p "$out"
[ -d .whl ] || { echo "no .whl/: run 'bash $here/run.sh wheels' here first, and carry .whl"; exit 1; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
if compgen -G ".ort[0-9]*/piece.*" > /dev/null; then
    pieces=$(ls .ort[0-9]*/piece.* | sort -t. -k3 -n)
    if [ "$(echo "$pieces" | wc -l)" != "$(cat .ort1/pieces 2>/dev/null)" ]; then
        echo "onnxruntime-gpu: pieces missing (here: $pieces); using the machine's onnxruntime"
    else
        mkdir -p /tmp/ort-gpu && cat $pieces | xz -d | tar -x -C /tmp/ort-gpu || exit 1
        # the CUDA 13 libraries of the machine's torch (pip's nvidia-* packages), for the provider to load
        nvidia=$(python3 -c "import glob, os, site
print(':'.join(sorted({os.path.dirname(p) for s in site.getsitepackages()
                       for p in glob.glob(os.path.join(s, 'nvidia', '**', 'lib*.so*'), recursive=True)})))")
        export PYTHONPATH=/tmp/ort-gpu:$PYTHONPATH LD_LIBRARY_PATH=$nvidia${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    fi
fi
{
    nvidia-smi -L
    python3 -c "import sys, torch, onnxruntime; print(sys.version.split()[0], 'torch', torch.__version__,
'cuda', torch.cuda.is_available(), 'onnxruntime', onnxruntime.__version__, onnxruntime.get_available_providers())"
} 2>&1 | tee "$out/machine.txt"
# SIGINT first, so that pytest prints its summary and Python's clean-up runs; KILL 15 s later
tests=0 bench=0
if [ "$part" != bench ]; then
    timeout -s INT -k 15 130 python3 -m pytest -q -p no:cacheprovider tests/gpu tests/unit/test_gpu_paths.py \
        2>&1 | tee "$out/tests.log"
    tests=$?
fi
if [ "$part" != tests ]; then
    timeout -s INT -k 15 400 python3 -m bench.gpu 2>&1 | tee "$out/bench.log"
    bench=$?
fi
echo "tests exit $tests, bench exit $bench" | tee -a "$out/machine.txt"
[ "$tests" = 0 ] && [ "$bench" = 0 ]
