"""Compare the CSV tables of two `freqmerge-viz figures` folders (timing columns left out).

Usage: python scripts/compare_figure_tables.py BEFORE AFTER   (prints each difference, then a count)
"""
import sys, pathlib, pandas as pd, numpy as np
a, b = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
TIMING = ("seconds", "time", "merge_s", "per_1000")
bad = 0
files = sorted(p.relative_to(a) for p in a.rglob("*.csv"))
for rel in files:
    x, y = pd.read_csv(a / rel), pd.read_csv(b / rel)
    if list(x.columns) != list(y.columns) or x.shape != y.shape:
        print("SHAPE/COLUMNS", rel, x.shape, y.shape, set(x.columns) ^ set(y.columns)); bad += 1; continue
    for c in x.columns:
        if any(t in c for t in TIMING):
            continue
        if x[c].dtype.kind in "fi" and y[c].dtype.kind in "fi":
            d = 0.0 if x[c].isna().all() and y[c].isna().all() else np.nanmax(np.abs(x[c].to_numpy(float) - y[c].to_numpy(float))) if len(x) else 0
            if not (d <= 1e-9 or np.isnan(d)) or not (x[c].isna() == y[c].isna()).all():
                print("DIFF", rel, c, d); bad += 1
        elif not ((x[c].astype(str) == y[c].astype(str)) | (x[c].isna() & y[c].isna())).all():
            i = (x[c].astype(str) != y[c].astype(str)).idxmax()
            print("DIFF", rel, c, repr(x[c][i]), repr(y[c][i])); bad += 1
print(len(files), "tables compared;", bad, "differences")
