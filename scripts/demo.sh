#!/usr/bin/env bash
# Set up (first run only) and run the main job: every analysis figure and table on the demo zoo, into out/.
source "$(dirname "$0")/env.sh"
"$PY" -m freqmerge_viz figures --out "${OUT_DIR:-out}" "$@"
