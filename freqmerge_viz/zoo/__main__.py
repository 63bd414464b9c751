"""``python -m freqmerge_viz.zoo build [OUT] [--quick]`` or ``python -m freqmerge_viz.zoo show [PATH]``."""

from __future__ import annotations

import argparse
import json
import sys

from . import DEFAULT_PATH, QUICK_CONFIG, DEFAULT_CONFIG, build_zoo, load


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m freqmerge_viz.zoo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="train the zoo from scratch (about 10-20 minutes on 2 CPU cores)")
    b.add_argument("out", nargs="?", default=str(DEFAULT_PATH))
    b.add_argument("--quick", action="store_true", help="a tiny configuration for smoke tests")
    s = sub.add_parser("show", help="print a zoo's tasks and accuracies")
    s.add_argument("path", nargs="?", default=None)
    args = parser.parse_args(argv)
    if args.command == "build":
        manifest = build_zoo(args.out, QUICK_CONFIG if args.quick else DEFAULT_CONFIG)
        print(json.dumps(manifest["quality"], indent=1))
        return 0
    z = load(args.path)
    acc = z.accuracies
    print(f"zoo at {z.path}: {len(z.tasks)} tasks, backbone {z.manifest['model']['backbone_parameters']} parameters")
    print(f"{'task':10s} {'classes':>7s} {'finetuned':>9s} {'probe':>6s} {'TA':>6s}")
    for t in z.tasks + ["mean"]:
        classes = str(z.manifest["task_info"][t]["num_classes"]) if t != "mean" else ""
        print(f"{t:10s} {classes:>7s} {acc['finetuned']['test'][t]:9.3f} {acc['probe']['test'][t]:6.3f} "
              f"{acc['task_arithmetic']['test'][t]:6.3f}")
    print(f"task arithmetic scaling (chosen on val): {acc['task_arithmetic']['scaling']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
