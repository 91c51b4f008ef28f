# Sourced by scripts/demo and scripts/test: a project virtual environment, created and filled
# from the repo's own pyproject.toml when missing or when pyproject.toml changed since.
set -euo pipefail
VENV="${FEATCACHE_VENV:-.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV" >&2
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.featcache-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "[setup] installing featcache and its dependencies into $VENV (a few minutes the first time)" >&2
  "$VENV/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" >&2 || true
  "$VENV/bin/python" -m pip install -q -e ".[dev]" 2>&1 | grep -v "^WARNING: Location" >&2 || true
  "$VENV/bin/python" -c "import extractor, tensorflow, h5py, sklearn, fastapi" \
    || { echo "[setup] installation failed" >&2; exit 1; }
  touch "$stamp"
fi
export PATH="$(cd "$VENV" && pwd)/bin:$PATH"
# Offline machines of ours keep the ImageNet VGG16 weights beside the repo; users online need
# nothing (Keras downloads them), users offline set FEATCACHE_WEIGHTS themselves.
if [ -z "${FEATCACHE_WEIGHTS:-}" ] && [ -f ../shared/assets/vgg16_notop.h5 ]; then
  export FEATCACHE_WEIGHTS="$PWD/../shared/assets/vgg16_notop.h5"
fi
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
