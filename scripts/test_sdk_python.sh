#!/usr/bin/env bash
# Tests of the Python SDK (clients/python) against a real `jobward serve`, started by the tests.
#
#   JOBWARD_BIN=target/debug/jobward scripts/test_sdk_python.sh [EXTRA PYTEST ARGS]
#
# Installs the SDK with pip (the real install of clients/python, not a PYTHONPATH) into a venv
# under target/sdk-python-venv (or $SDK_PYTHON_VENV), then runs its tests with pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

bin=${JOBWARD_BIN:-target/debug/jobward}
case "$bin" in /*) ;; *) bin="$root/$bin" ;; esac
if [ ! -x "$bin" ]; then
  echo "test_sdk_python.sh: no jobward binary at $bin: build it first (cargo build) or set JOBWARD_BIN" >&2
  exit 2
fi
export JOBWARD_BIN="$bin"
export PYTHONDONTWRITEBYTECODE=1

python=${PYTHON:-python3}
venv=${SDK_PYTHON_VENV:-target/sdk-python-venv}
case "$venv" in /*) ;; *) venv="$root/$venv" ;; esac
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
# Always reinstall the SDK so the tests run what the working tree holds.
"$venv/bin/python" -m pip install --quiet --upgrade --force-reinstall --no-deps ./clients/python
"$venv/bin/python" -m pip install --quiet "pytest>=7" "pytest-timeout>=2"
rm -rf clients/python/build clients/python/src/jobward.egg-info   # what the setuptools build leaves

# Run from the tests directory, so `import jobward` can only find the installed package.
cd clients/python/tests
exec "$venv/bin/python" -m pytest -x -q -p no:cacheprovider --timeout 60 "$@"
