#!/usr/bin/env bash
# Set up (first run only) and run the main job: the spectra + interference report, written to out/.
source "$(dirname "$0")/env.sh"
"$PY" -m freqmerge_viz report --out "${OUT_DIR:-out}" "$@"
