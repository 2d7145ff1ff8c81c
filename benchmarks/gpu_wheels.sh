#!/usr/bin/env bash
# The wheels the lent H200 machine lacks (it has torch, torchvision, transformers, peft, Lightning, torchmetrics,
# safetensors and the rest; no internet there), downloaded here for Python 3.12 on x86-64 into .whl/ (ignored),
# at the versions this checkout's .venv runs. Carry .whl with the device call and install them first:
#
#   bash benchmarks/gpu_wheels.sh                  # here, once (PyPI)
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
#       .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD     # there, first in the command
set -euo pipefail
out=${1:-.whl}
py=${PYTHON:-.venv/bin/python}
mkdir -p "$out"
version() { "$py" -c "import importlib.metadata as m; print(m.version('$1'))"; }
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
         manylinux1_x86_64; do platforms+=(--platform "$p"); done
for name in diffusers hydra-core omegaconf open_clip_torch ftfy wcwidth kornia kornia_rs torch-fidelity; do
    "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${platforms[@]}" -d "$out" "$name==$(version "$name")"
done
# antlr4-python3-runtime 4.9.3 (what omegaconf 2.3 pins) is published as source only: build its pure-Python wheel
"$py" -m pip wheel -q --no-deps -w "$out" "antlr4-python3-runtime==$(version antlr4-python3-runtime)"
ls "$out"
du -sh "$out"
