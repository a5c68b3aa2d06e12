#!/usr/bin/env bash
# Installs tasksim and everything its tests and demo need on a fresh Debian machine.
# Idempotent: re-running it installs nothing that is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"

if ! command -v promtool >/dev/null 2>&1 || ! command -v amtool >/dev/null 2>&1; then
    if [ "$(id -u)" = "0" ]; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq prometheus prometheus-alertmanager >/dev/null
    else
        echo "install.sh: Debian's 'prometheus' package is missing (needs root: apt-get install prometheus)" >&2
    fi
fi

# The CPU build of torch first: an unpinned torch would pull a multi-GB CUDA build.
if ! "$PYTHON" -c "import torch" >/dev/null 2>&1; then
    "$PYTHON" -m pip install -q "torch==2.13.0"
fi
"$PYTHON" -m pip install -q -e ".[all]"
