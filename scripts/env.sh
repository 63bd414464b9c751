# Sourced by demo.sh and test.sh: picks a Python environment and installs freqmerge-viz in it.
# What is installed: $FREQMERGE_EXTRAS, empty for demo.sh (the package and what the figures
# need), "test" for test.sh (adds pytest, nbval, jupyterlab and the cross-check libraries).
# An environment set up for the tests serves the demo too.
# - Inside an active virtualenv or conda env, that environment is used as it is.
# - Otherwise a private ./.venv is created on first use.
# torch: when none is importable, $FREQMERGE_TORCH (default torch==2.13.0) is installed first,
# so that pip never resolves torch by itself (which can pull a multi-GB CUDA build).
set -euo pipefail
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"
if [ -n "${VIRTUAL_ENV:-}" ] || [ -n "${CONDA_PREFIX:-}" ]; then
  PY=python
else
  if [ ! -x .venv/bin/python ]; then
    "${PYTHON:-python3}" -m venv .venv || { echo "could not create .venv (is the venv module installed?)" >&2; exit 1; }
  fi
  PY="$repo_root/.venv/bin/python"
fi
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  echo "== installing ${FREQMERGE_TORCH:-torch==2.13.0} (no torch importable)"
  "$PY" -m pip install --quiet "${FREQMERGE_TORCH:-torch==2.13.0}"
fi
extras="${FREQMERGE_EXTRAS:-}"
stamp=$("$PY" -c "import hashlib,sys; print(hashlib.sha256(open('pyproject.toml','rb').read()).hexdigest())")
marker="$("$PY" -c "import sys; print(sys.prefix)")/.freqmerge-viz-installed"
installed="$(cat "$marker" 2>/dev/null || true)"
# the marker reads "<pyproject hash>:<checkout>:<extras>"; a test install serves the demo too
if { [ "$installed" != "$stamp:$repo_root:$extras" ] && [ "$installed" != "$stamp:$repo_root:test" ]; } \
   || ! "$PY" -c "import freqmerge_viz" >/dev/null 2>&1; then
  target="."
  [ -n "$extras" ] && target=".[$extras]"
  echo "== installing freqmerge-viz${extras:+ with its $extras dependencies} into $("$PY" -c 'import sys; print(sys.prefix)')"
  "$PY" -m pip install --quiet -e "$target"
  echo "$stamp:$repo_root:$extras" > "$marker"
fi
export PY
