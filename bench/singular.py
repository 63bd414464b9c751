"""Run the ``singular`` benchmark from a checkout: ``python bench/singular.py [options]`` (see ``--help``)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from freqmerge_viz.benchmarks.singular import main  # noqa: E402

if __name__ == "__main__":
    main()
