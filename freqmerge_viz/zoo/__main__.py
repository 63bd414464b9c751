"""``python -m freqmerge_viz.zoo ARGS`` is ``freqmerge-viz zoo ARGS`` (build, show, eval)."""

import sys

from ..cli import main

if __name__ == "__main__":
    sys.exit(main(["zoo", *sys.argv[1:]]))
