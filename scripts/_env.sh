# Sourced by scripts/demo and scripts/test: a project virtual environment, created and filled
# from the repo's own files when missing or when pyproject.toml or the lock changed since.
#
# On our platform (CPython 3.11, Linux x86_64) every package comes from the lock,
# requirements/dev.txt, at the exact versions and hashes CI tests and the Docker image ships
# (requirements/runtime.txt holds the same pins). Elsewhere the lock does not apply, and
# pyproject.toml's ranges are used instead. Re-lock with scripts/lock.
set -euo pipefail
VENV="${FEATCACHE_VENV:-.venv}"
PY="${PYTHON:-python3}"
LOCK=requirements/dev.txt
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV" >&2
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.featcache-installed"
pip_quiet() {  # pip, minus the noise of this machine's optional local package mirrors
  "$VENV/bin/python" -m pip "$@" 2>&1 | grep -v "^WARNING: Location" >&2
  return "${PIPESTATUS[0]}"
}
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ "$LOCK" -nt "$stamp" ]; then
  echo "[setup] installing featcache and its dependencies into $VENV (a few minutes the first time)" >&2
  pip_quiet install -q --upgrade pip || true
  if "$VENV/bin/python" -c 'import platform, sys
sys.exit(not (sys.version_info[:2] == (3, 11) and sys.platform == "linux"
              and platform.machine() == "x86_64"))'; then
    pip_quiet install -q --require-hashes --no-deps -r "$LOCK" \
      || { echo "[setup] installing $LOCK failed" >&2; exit 1; }
    pip_quiet install -q --no-deps -e . || { echo "[setup] installing featcache failed" >&2; exit 1; }
    # The lock must cover pyproject.toml: a dependency added there but not locked shows here.
    "$VENV/bin/python" -m pip check >&2 \
      || { echo "[setup] $LOCK does not satisfy pyproject.toml: run scripts/lock" >&2; exit 1; }
  else
    echo "[setup] $LOCK is for CPython 3.11 on Linux x86_64; installing from pyproject.toml's" \
      "ranges instead" >&2
    pip_quiet install -q -e ".[dev]" || { echo "[setup] installation failed" >&2; exit 1; }
  fi
  check="import extractor, tensorflow, h5py, sklearn, fastapi"
  "$VENV/bin/python" -c "$check" >/dev/null 2>&1 \
    || { "$VENV/bin/python" -c "$check"; echo "[setup] installation failed" >&2; exit 1; }
  touch "$stamp"
fi
export PATH="$(cd "$VENV" && pwd)/bin:$PATH"
# Offline machines of ours keep the ImageNet VGG16 weights beside the repo; users online need
# nothing (Keras downloads them), users offline set FEATCACHE_WEIGHTS themselves.
if [ -z "${FEATCACHE_WEIGHTS:-}" ] && [ -f ../shared/assets/vgg16_notop.h5 ]; then
  export FEATCACHE_WEIGHTS="$PWD/../shared/assets/vgg16_notop.h5"
fi
