#!/usr/bin/env bash
# Re-execute the tutorial notebooks in place, so their stored outputs are what nbval will compare.
# Usage: scripts/run_notebooks.sh [NOTEBOOK ...]   (default: every notebooks/*.ipynb)
FREQMERGE_EXTRAS=test source "$(dirname "$0")/env.sh"
cd notebooks
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(*.ipynb)
for nb in "${targets[@]}"; do
  echo "== $nb"
  "$PY" -m jupyter nbconvert --to notebook --execute --inplace --ExecutePreprocessor.timeout=1200 \
    --ExecutePreprocessor.kernel_name=python3 --ExecutePreprocessor.store_widget_state=False "$(basename "$nb")"
done
# no widget state in the files: it would carry each explorer's plotly.js (about 5 MB) and the
# model ids, which change every run
"$PY" - "${targets[@]}" <<'PYEOF'
import json, sys
for name in sys.argv[1:]:
    with open(name, encoding="utf-8") as f:
        notebook = json.load(f)
    if notebook.get("metadata", {}).pop("widgets", None) is not None:
        with open(name, "w", encoding="utf-8") as f:
            json.dump(notebook, f, indent=1, ensure_ascii=False)
            f.write("\n")
PYEOF
