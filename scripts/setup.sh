#!/usr/bin/env bash
# Create .venv if missing and install lmsearch with its dev tools, plus the
# Fashion-MNIST dataset when running as root on Debian without it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv"
    "$PY" -m venv .venv
fi
stamp=.venv/.lmsearch-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "[setup] installing torch 2.14.1 / torchvision 0.29.1 and lmsearch (first run takes a few minutes)"
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q "torch==2.14.1" "torchvision==0.29.1"
    .venv/bin/pip install -q -e ".[dev]"
    touch "$stamp"
fi
fmnist=/usr/share/datasets/fashion-mnist
if [ ! -f "$fmnist/train-images-idx3-ubyte.gz" ] && [ -z "${LMSEARCH_DATA:-}" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "[setup] installing Debian's dataset-fashion-mnist"
        apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null
    else
        echo "[setup] Fashion-MNIST not found in $fmnist: run 'sudo apt-get install dataset-fashion-mnist' or set LMSEARCH_DATA" >&2
    fi
fi
