#!/usr/bin/env bash
# Fresh-machine check of the quick start: a temporary clone of this checkout's HEAD, the system
# interpreter (/usr/bin/python3 on Debian 12 / Ubuntu 24.04, "externally managed" by PEP 668), a
# clean environment, then exactly the README's commands: `make test` and `make demo`.
#
#   deploy/check-fresh-debian.sh            # full: the whole test suite, then a 2-cycle demo
#   deploy/check-fresh-debian.sh --quick    # a few fast test files, then a 1-cycle small demo
#
# Checks, each a FAIL line and exit 1 when it does not hold:
#   * the system python is left untouched (no tasksim importable from it afterwards);
#   * `make test` and `make demo` pass from the fresh clone, installing into the clone's .venv;
#   * a second `make install` skips pip (stamp) and takes seconds.
# Env: PYTHON (default /usr/bin/python3), KEEP=1 keeps the clone, TORCH_SPEC / TORCH_INDEX_URL as in
# the Makefile. Needs git and make (installed when run as root); run as root on a bare machine so that
# missing packages get installed: python3.X-venv for the interpreter's own version (python3.11-venv on
# Debian 12, python3.12-venv on Ubuntu 24.04, whose python3 is 3.12 and PEP 668 "externally managed"
# too), prometheus, postgresql, ... (deploy/install.sh; names the distribution lacks are skipped and
# listed). Run on Debian 12 only so far: Ubuntu 24.04 is handled in code but was not run (no
# containers where this was written).
set -euo pipefail
QUICK=0
[ "${1:-}" = "--quick" ] && QUICK=1
PYTHON="${PYTHON:-/usr/bin/python3}"
SRC="$(cd "$(dirname "$0")/.." && pwd)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/tasksim-fresh.XXXXXX")"
cleanup() { [ "${KEEP:-0}" = "1" ] && echo "kept $WORK" || rm -rf "$WORK"; }
trap cleanup EXIT
fail() { echo "check-fresh-debian: FAIL: $*" >&2; exit 1; }
step() { echo "check-fresh-debian: $*" >&2; }

# A bare Debian 12 / Ubuntu 24.04 image may lack git and make (the README's commands need make).
for tool in git make; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
            step "installing $tool (apt-get)"
            DEBIAN_FRONTEND=noninteractive apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$tool" >/dev/null
        else
            fail "$tool is missing (as root: apt-get install $tool)"
        fi
    fi
done
[ -r /etc/os-release ] && step "system: $(. /etc/os-release && echo "$PRETTY_NAME")"
[ -x "$PYTHON" ] || fail "$PYTHON: no such interpreter"
step "system python: $PYTHON ($("$PYTHON" -V 2>&1)); externally managed: $(
    "$PYTHON" -c 'import sysconfig, os; print(os.path.exists(os.path.join(sysconfig.get_paths()["stdlib"], "EXTERNALLY-MANAGED")))')"
git clone -q --no-local "$SRC" "$WORK/tasksim"
cd "$WORK/tasksim"
step "clone of $(git rev-parse --short HEAD) in $WORK/tasksim"

# A clean environment: no venv, no PYTHONPATH, no pyenv shims; pip's site settings (index, wheel
# directories, certificates) and proxies pass through.
CLEAN_ENV=(env -i "HOME=$HOME" "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
           "LANG=C.UTF-8" "TMPDIR=${TMPDIR:-/tmp}" "DO_NOT_TRACK=1" "PREFECT_SERVER_ANALYTICS_ENABLED=false")
while IFS='=' read -r name value; do
    CLEAN_ENV+=("$name=$value")
done < <(env | grep -E '^(PIP_[A-Z_]+|https?_proxy|HTTPS?_PROXY|no_proxy|NO_PROXY)=' || true)
MAKE_VARS=("PYTHON=$PYTHON")
[ -n "${TORCH_SPEC:-}" ] && MAKE_VARS+=("TORCH_SPEC=$TORCH_SPEC")
[ -n "${TORCH_INDEX_URL:-}" ] && MAKE_VARS+=("TORCH_INDEX_URL=$TORCH_INDEX_URL")

if [ "$QUICK" = "1" ]; then
    TEST_VARS=("PYTEST_ARGS=tests/test_config.py tests/test_dashboards_and_rules.py tests/test_deploy.py tests/test_report.py")
    DEMO_VARS=("DEMO_ARGS=--cycles 1 --small --metrics-port 19108 --prefect-port 14200")
else
    TEST_VARS=()
    DEMO_VARS=("DEMO_ARGS=--cycles 2 --metrics-port 19108 --prefect-port 14200")
fi

t0=$(date +%s)
"${CLEAN_ENV[@]}" make test "${MAKE_VARS[@]}" "${TEST_VARS[@]}" || fail "make test"
t1=$(date +%s)
step "make test passed in $((t1 - t0)) s (including the first install)"
[ -x .venv/bin/python ] || fail "make test did not create .venv"
[ "$(.venv/bin/python -c 'import tasksim, os; print(os.path.dirname(os.path.dirname(tasksim.__file__)))')" = "$PWD" ] \
    || fail "the venv's tasksim is not this clone's"

"${CLEAN_ENV[@]}" make install "${MAKE_VARS[@]}" >/dev/null || fail "make install (re-run)"
t2=$(date +%s)
[ $((t2 - t1)) -le 30 ] || fail "re-running make install took $((t2 - t1)) s: the stamp did not skip pip"
step "re-run of make install: $((t2 - t1)) s (pip skipped)"

"${CLEAN_ENV[@]}" make demo "${MAKE_VARS[@]}" "${DEMO_VARS[@]}" || fail "make demo"
t3=$(date +%s)
step "make demo passed in $((t3 - t2)) s"
.venv/bin/tasksim history --config demo-workspace/tasksim.yaml | head -5 >&2 || fail "tasksim history after the demo"

if (cd / && "$PYTHON" -c 'import tasksim' >/dev/null 2>&1); then
    fail "tasksim is importable from the system python $PYTHON: the install leaked out of .venv"
fi
step "OK: system python untouched, make test + make demo pass from a fresh clone"
