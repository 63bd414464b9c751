#!/usr/bin/env bash
# Set up (first run only) and run the whole test suite.
FREQMERGE_EXTRAS=test source "$(dirname "$0")/env.sh"
# open_clip (the open_clip study kind's tests and notebook 06) installed with torch held; see the script
if ! "$PY" -c "import open_clip" >/dev/null 2>&1; then
  bash "$(dirname "$0")/open_clip_deps.sh" "$PY"
fi
"$PY" -m pytest "$@"
