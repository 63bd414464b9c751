#!/usr/bin/env bash
# Run every property-based (hypothesis) test (marker "property", set in tests/conftest.py) under
# N fresh seeds (default 20), one pytest run per seed, and stop at the first failure, printing the seed that reproduces it:
#   scripts/hypothesis_seeds.sh [N] [first seed]
# The suite itself runs derandomised (tests/conftest.py); this is how its property tests are
# tried on examples they have not seen. Reproduce a failure with
#   python -m pytest --hypothesis-profile=random --hypothesis-seed=SEED -m property tests
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
runs="${1:-20}"
first="${2:-$(( $(date +%s) % 100000 ))}"
mapfile -t files < <(grep -l -E "^from hypothesis|^import hypothesis" tests/test_*.py)
for (( i = 0; i < runs; i++ )); do
  seed=$(( first + i ))
  if ! "$PY" -m pytest -q -p no:cacheprovider --hypothesis-profile=random --hypothesis-seed="$seed" -m property "${files[@]}" \
       > "/tmp/hypothesis_seed_$seed.log" 2>&1; then
    tail -30 "/tmp/hypothesis_seed_$seed.log"
    echo "FAILED under --hypothesis-seed=$seed (run $((i + 1)) of $runs); log: /tmp/hypothesis_seed_$seed.log"
    exit 1
  fi
  echo "seed $seed: $(tail -1 "/tmp/hypothesis_seed_$seed.log")"
done
echo "$runs runs, seeds $first..$((first + runs - 1)): 0 failures"
