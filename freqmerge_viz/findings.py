"""The README's findings, written from the CSV tables of a ``freqmerge-viz figures`` run.

:func:`extract` reads an output folder and returns every number the findings quote (a
JSON-ready dict, one entry per topic found); :func:`render` turns those numbers into the
Markdown list; :func:`update_readme` puts it between the ``<!-- findings:start -->`` and
``<!-- findings:end -->`` markers of a file. ``freqmerge-viz findings OUT --json F --readme
README.md`` does all three, so a sentence in the README cannot outlive the run it quotes.
Accuracies are percentages of the images stated with them; a "± x" is one standard error.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from .analysis.spectra import profile_shapes
from .errors import FreqMergeError
from .outputs import write_atomically

START, END = "<!-- findings:start -->", "<!-- findings:end -->"


# --------------------------------------------------------------------------- helpers
def _read(folder: Path, name: str) -> pd.DataFrame | None:
    path = folder / name
    return pd.read_csv(path) if path.is_file() else None


def _pct(fraction: float) -> float:
    return round(100.0 * float(fraction), 1)


def _se_pct(fractions: pd.Series, counts: pd.Series) -> float:
    """Standard error (percent) of the mean over tasks of binomial accuracies on `counts` images each."""
    p, n = fractions.to_numpy(float), counts.to_numpy(float)
    return round(100.0 * math.sqrt(float(np.sum(p * (1 - p) / n))) / len(p), 1)


def _mean_with_se(frame: pd.DataFrame, column: str = "accuracy_fraction", n: str = "n_images") -> dict:
    return {"pct": _pct(frame[column].mean()), "se": _se_pct(frame[column], frame[n]),
            "images": int(frame[n].min()), "tasks": int(len(frame))}


def _images(frame: pd.DataFrame, column: str = "n_images") -> str:
    low, high = int(frame[column].min()), int(frame[column].max())
    return str(low) if low == high else f"{low}–{high}"


# --------------------------------------------------------------------------- per topic
def _spectra(folder: Path) -> dict | None:
    profiles = _read(folder, "spectra/radial_profiles_by_key.csv")
    if profiles is None:
        return None
    lines = profile_shapes(profiles)
    blocks = lines[lines["key"].str.startswith("blocks.")]
    steepest = blocks.loc[blocks["corner_over_dc"].idxmax()]
    patch = lines[lines["key"].str.startswith("patch_embed")]
    out = {"lines": int(len(blocks)), "deviation_median_pct": round(100 * blocks["deviation"].median()),
           "deviation_max_pct": round(100 * blocks["deviation"].max()),
           "steepest_key": steepest["key"], "steepest_task": steepest["task"],
           "steepest_corner_over_dc": round(float(steepest["corner_over_dc"]), 2),
           "proj_rising_lines": int((blocks[blocks["key"].str.contains("attn.proj")]["corner_over_dc"] > 1).sum()),
           "proj_lines": int(blocks["key"].str.contains("attn.proj").sum()),
           "dc_over_mean_median": round(float(blocks["dc_over_mean"].median()), 2)}
    if len(patch):
        out["patch_dc_over_mean"] = [round(float(patch["dc_over_mean"].min()), 1), round(float(patch["dc_over_mean"].max()), 1)]
    spectra = _read(folder, "spectra/spectra.csv")
    if spectra is not None:
        key = spectra["key"].iloc[0]
        row, rest = spectra[spectra["eta"] == 0], spectra[spectra["eta"] != 0]
        out["eta0_key"] = key
        out["eta0_ratio"] = round(float(np.exp(row["log_amplitude"].mean() - rest["log_amplitude"].mean())), 2)
    return out


def _table1(folder: Path) -> dict | None:
    table = _read(folder, "table1/table1.csv")
    if table is None:
        return None
    change = {row.label: round(float(row.change_all_pct)) for row in table.itertuples()}
    fr = table[table["label"] == "FR"].iloc[0]
    return {"change_pct": change, "fr_change_pct": round(float(fr.change_all_pct), 1),
            "fr_kept_pct": _pct(fr.kept_fraction), "fr_change_kept_pct": round(float(fr.change_kept_pct), 1)}


def _interference(folder: Path) -> dict | None:
    table = _read(folder, "interference_vs_performance/interference_correlation.csv")
    pairs = _read(folder, "interference_vs_performance/interference_vs_accuracy.csv")
    if table is None or pairs is None:
        return None
    rows = {row.x: row for row in table.itertuples()}
    out = {"pairs": int(len(pairs)), "tasks": int(len(set(pairs["task_a"]) | set(pairs["task_b"]))),
           "images": _images(pairs, "n_images_a")}
    for x, row in rows.items():
        out[x] = {"pearson": round(row.pearson, 2), "low": round(row.pearson_low, 2), "high": round(row.pearson_high, 2),
                  "spearman": round(row.spearman, 2), "level_pct": round(100 * row.level)}
    return out


def _generalisation(folder: Path) -> dict | None:
    difference = _read(folder, "generalisation/generalisation_difference.csv")
    table = _read(folder, "generalisation/generalisation.csv")
    if difference is None:
        return None
    tasks = [c for c in difference.columns if c not in ("source", "unit")]
    values = difference.set_index("source")[tasks].to_numpy(float)
    diagonal = np.diag(values)
    off = values[~np.eye(len(tasks), dtype=bool)]
    out = {"tasks": len(tasks), "diagonal_points": round(100 * diagonal.mean(), 2),
           "off_diagonal_points": round(100 * off.mean(), 2),
           "largest_points": round(100 * float(np.abs(values).max()), 1)}
    if table is not None and "n_images" in table:
        out["images"] = _images(table)
        p = table["accuracy_fraction"].clip(0.01, 0.99).mean()
        out["cell_se_points"] = round(100 * math.sqrt(p * (1 - p) / table["n_images"].min()), 1)
    return out


def _disentanglement(folder: Path) -> dict | None:
    table = _read(folder, "disentanglement/others_vectors.csv")
    if table is None:
        return None
    out = {"images": _images(table), "split": "validation"}
    for scaling, group in table.groupby("scaling"):
        out[f"{scaling:g}"] = {kind: _mean_with_se(rows) for kind, rows in group.groupby("kind")}
    return out


def _landscape(folder: Path) -> dict | None:
    points = _read(folder, "landscape/landscape_points.csv")
    planes = _read(folder, "landscape/landscape_planes.csv")
    curves = _read(folder, "landscape/landscape_curves.csv")
    if points is None or planes is None:
        return None
    plane = planes[planes["setting"] == "unfiltered"].iloc[0]
    out = {"task_a": plane.task_a, "task_b": plane.task_b, "eval_task": plane.eval_task, "images": int(plane.samples),
           "norm_a": round(float(plane.norm_a), 2)}
    unfiltered = points[points["setting"] == "unfiltered"].set_index("method")
    for method in unfiltered.index:
        out[f"point:{method}"] = {"pct": _pct(unfiltered.loc[method, "accuracy_fraction"]),
                                  "loss": round(float(unfiltered.loc[method, "loss"]), 3),
                                  "off_plane": round(float(unfiltered.loc[method, "off_plane_distance"]), 3)}
    if curves is not None:
        to_b = curves[(curves["setting"] == "unfiltered") & curves["path"].str.endswith("→B")]
        if len(to_b):
            end = to_b.sort_values("t").iloc[-1]
            out["pretrained_plus_b"] = {"pct": _pct(end.accuracy_fraction), "loss": round(float(end.loss), 3)}
    filtered = planes[planes["setting"] != "unfiltered"]
    if len(filtered):
        out["filter_norm_change_pct"] = round(100 * abs(float(filtered.iloc[0].norm_a) / float(plane.norm_a) - 1), 1)
    return out


def _cutoff_sweep(folder: Path) -> dict | None:
    table = _read(folder, "cutoff_sweep/cutoff_sweep.csv")
    references = _read(folder, "cutoff_sweep/cutoff_sweep_references.csv")
    if table is None:
        return None
    out = {"scaling": float(table["scaling"].iloc[0]), "images": _images(table), "points": {}}
    for (kind, cutoff), group in table.groupby(["kind", "cutoff"]):
        out["points"][f"{kind}@{cutoff:g}"] = {**_mean_with_se(group),
                                               "variance": round(float(group["amplitude_variance"].iloc[0]), 3)}
    ideal = {k: v for k, v in out["points"].items() if k.startswith("ideal@")}
    out["best_ideal"] = max(ideal, key=lambda k: ideal[k]["pct"]) if ideal else None
    if references is not None:
        out["references"] = {name: _mean_with_se(rows) for name, rows in references.groupby("reference")}
    return out


def _router(folder: Path) -> dict | None:
    table = _read(folder, "router_robustness/router_robustness.csv")
    references = _read(folder, "router_robustness/router_robustness_references.csv")
    if table is None:
        return None
    means = table.groupby(["method", "p"]).apply(_mean_with_se, include_groups=False)
    out = {"images": _images(table), "methods": {}}
    for (method, p), value in means.items():
        out["methods"].setdefault(method, {})[f"{p:g}"] = value
    ps = sorted({float(p) for p in table["p"]})
    others = [m for m in out["methods"] if m != "FREE"]
    ahead = [p for p in ps if all(out["methods"]["FREE"][f"{p:g}"]["pct"] > out["methods"][m][f"{p:g}"]["pct"]
                                  for m in others)] if "FREE" in out["methods"] else []
    out["free_ahead_up_to_p"] = max(ahead) if ahead else None
    if references is not None:
        out["references"] = {name: _mean_with_se(rows) for name, rows in references.groupby("reference")}
        ta = references[references["reference"] == "task_arithmetic"]
        if "scaling" in references and len(ta):
            out["ta_scaling"] = float(ta["scaling"].iloc[0])
    return out


def _experts(folder: Path) -> dict | None:
    table = _read(folder, "expert_sparsity/expert_sparsity.csv")
    if table is None:
        return None
    out = {"images": _images(table), "points": {}}
    for (kind, density), group in table.groupby(["kind", "density"]):
        out["points"][f"{kind}@{density:g}"] = {**_mean_with_se(group),
                                                "stored_pct": round(100 * float(group["stored_fraction"].mean()), 2),
                                                "over_budget": bool(group["over_budget"].astype(bool).any())}
    return out


def _costs(folder: Path) -> dict | None:
    table = _read(folder, "costs/costs.csv")
    if table is None:
        return None
    plain = table[table["kind"] == "plain"]
    slowest = plain.loc[plain["merge_seconds"].idxmax()]
    rest = plain[plain["method"] != slowest.method]
    extra = {row.method: round(float(row.extra_pct_of_model)) for row in table.itertuples()
             if row.kind in ("routed", "individual")}
    return {"slowest_method": slowest.method, "slowest_seconds": round(float(slowest.merge_seconds), 1),
            "other_max_seconds": round(float(rest["merge_seconds"].max()), 1) if len(rest) else None,
            "extra_pct": extra, "device": str(table["device"].iloc[0])}


def _singular(folder: Path) -> dict | None:
    table = _read(folder, "singular_vs_fourier/singular_vs_fourier_predictors.csv")
    if table is None:
        return None
    rows = {row.x: {"spearman": round(row.spearman, 2), "gain": round(row.abs_spearman_gain, 2),
                    "gain_low": round(row.gain_low, 2), "gain_high": round(row.gain_high, 2)} for row in table.itertuples()}
    return {"pairs": int(table["n"].iloc[0]), "predictors": rows}


def _adaptive(folder: Path) -> dict | None:
    table = _read(folder, "adaptive_cutoffs/adaptive_cutoffs.csv")
    chosen = _read(folder, "adaptive_cutoffs/adaptive_cutoffs_chosen.csv")
    if table is None:
        return None
    out = {"images": _images(table), "rules": {}}
    for rule, group in table.groupby("rule"):
        out["rules"][rule] = _mean_with_se(group)
        if chosen is not None and rule in set(chosen["rule"]):
            cutoffs = chosen[chosen["rule"] == rule]["cutoff"]
            out["rules"][rule]["cutoffs"] = [round(float(cutoffs.min()), 2), round(float(cutoffs.max()), 2)]
    return out


def _layers(folder: Path) -> dict | None:
    profile = _read(folder, "layers/layer_profile.csv")
    lines = _read(folder, "layers/lines.csv")
    if profile is None:
        return None
    profile = profile.sort_values("depth")
    last, others = profile.iloc[-1], profile.iloc[:-1]
    out = {"layers": int(len(profile)), "last_norm": round(float(last.norm), 2),
           "other_norm": [round(float(others["norm"].min()), 2), round(float(others["norm"].max()), 2)],
           "last_variance": round(float(last.amplitude_variance), 3),
           "other_variance": [round(float(others["amplitude_variance"].min()), 3),
                              round(float(others["amplitude_variance"].max()), 3)]}
    if lines is not None:
        out["settings"] = {}
        for setting, group in lines.groupby("setting"):
            out["settings"][setting] = {**_mean_with_se(group), "params": json.loads(group["params"].iloc[0])}
    return out


EXTRACTORS: dict[str, Callable[[Path], dict | None]] = {
    "spectra": _spectra, "table1": _table1, "interference_vs_performance": _interference,
    "cutoff_sweep": _cutoff_sweep, "generalisation": _generalisation, "disentanglement": _disentanglement,
    "landscape": _landscape, "router_robustness": _router, "expert_sparsity": _experts, "costs": _costs,
    "singular_vs_fourier": _singular, "adaptive_cutoffs": _adaptive, "layers": _layers}


def extract(out_dir: str | Path) -> dict:
    """Every number the findings quote, from the CSVs of a ``figures`` run in `out_dir` (topics
    not in the folder are left out), with the run's ``index.json`` facts under ``run``."""
    folder = Path(out_dir)
    index_path = folder / "index.json"
    if not index_path.is_file():
        raise FreqMergeError(f"{folder} holds no index.json: not the output of `freqmerge-viz figures`")
    index = json.loads(index_path.read_text(encoding="utf-8"))
    seconds = {name: entry.get("seconds") for name, entry in index.get("topics", {}).items()}
    numbers = {"run": {"study": index.get("study"), "quick": bool(index.get("quick")),
                       "seconds": round(sum(s for s in seconds.values() if s), 1), "topic_seconds": seconds}}
    for topic, extractor in EXTRACTORS.items():
        if topic in seconds:
            found = extractor(folder)
            if found is not None:
                numbers[topic] = found
    return numbers


TIMED = {"run": ("seconds", "topic_seconds"), "costs": ("slowest_method", "slowest_seconds", "other_max_seconds", "device")}
"""Fields of :func:`extract` that measure time or the machine, not the study: they differ between runs."""


def deterministic(numbers: dict) -> dict:
    """`numbers` without the :data:`TIMED` fields: what a re-run of the same code on the same
    study gives again."""
    kept = {topic: {k: v for k, v in values.items() if k not in TIMED.get(topic, ())} if isinstance(values, dict)
            else values for topic, values in numbers.items()}
    return _comparable(kept)


def _comparable(value):
    """NaN as ``None`` all through (NaN never equals itself), tuples as lists (as JSON gives them)."""
    if isinstance(value, dict):
        return {k: _comparable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_comparable(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


# --------------------------------------------------------------------------- Markdown
def _acc(value: dict) -> str:
    return f"{value['pct']:.1f}%"


def _within(a: dict, b: dict) -> bool:
    """Whether two mean accuracies differ by less than two standard errors of their difference."""
    return abs(a["pct"] - b["pct"]) < 2 * math.hypot(a["se"], b["se"])


def _r_spectra(d: dict, all_numbers: dict) -> str:
    concentrated = d["dc_over_mean_median"] > 1.2
    text = (f"**Spectra (Fig. 2a):** over the {d['lines']} radial amplitude profiles of the block matrices' task "
            f"vectors (matrix × task), the largest deviation from the profile's own mean is "
            f"{d['deviation_median_pct']}% at the median and up to {d['deviation_max_pct']}%; the DC shell is "
            f"{d['dc_over_mean_median']}× the profile's mean at the median, and {d['proj_rising_lines']} of the "
            f"{d['proj_lines']} `attn.proj` profiles rise towards the corner (up to {d['steepest_corner_over_dc']}× "
            f"their DC shell, {d['steepest_key']} on {d['steepest_task']}).")
    text += (" The paper's low-frequency concentration is there." if concentrated else
             " The paper's low-frequency concentration is not there")
    if not concentrated:
        text += (f"; only the patch embedding's amplitude near DC is {d['patch_dc_over_mean'][0]}–"
                 f"{d['patch_dc_over_mean'][1]}× its profile's mean." if "patch_dc_over_mean" in d else ".")
    table1 = all_numbers.get("table1")
    if table1:
        text += (f" FR's default high-pass (cutoff 0.1) keeps {table1['fr_kept_pct']}% of the bins (mean over the "
                 "matrices; the small embedding matrices lose the most).")
    if "eta0_key" in d:
        text += (f" In the spectrum drawn ({d['eta0_key']}) the η = 0 row is dark: its amplitudes are "
                 f"{d['eta0_ratio']}× the rest's (geometric means), as the task vector's columns nearly sum to zero.")
    return text


def _r_interference(d: dict, all_numbers: dict) -> str:
    raw, norm = d["amplitude_variance"], d.get("normalized_variance")
    text = (f"**Interference vs performance (Fig. 2b):** over the {d['pairs']} task pairs (task arithmetic, "
            f"{d['images']} test images per task), amplitude variance and normalised merged accuracy have "
            f"Pearson r = {raw['pearson']:+.2f} ({raw['level_pct']}% bootstrap interval {raw['low']:+.2f} to "
            f"{raw['high']:+.2f}), Spearman {raw['spearman']:+.2f}.")
    if norm:
        text += (f" Divided by the mean amplitude: r = {norm['pearson']:+.2f} ({norm['low']:+.2f} to "
                 f"{norm['high']:+.2f})")
        gone = norm["low"] <= 0 <= norm["high"] or abs(norm["pearson"]) < abs(raw["pearson"]) - 0.2
        text += (": the correlation mostly goes, so much of the raw measure's signal is how large the two task "
                 "vectors are." if gone else ": the correlation stays.")
    text += (f" Each task appears in {d['tasks'] - 1} pairs, so the pairs are not independent and the intervals "
             "are too narrow.")
    return text


def _r_table1(d: dict, all_numbers: dict) -> str:
    change = d["change_pct"]
    named = ", ".join(f"{label} ({value:+d}%)" for label, value in change.items() if label not in ("TA", "FR"))
    return (f"**Table 1:** change of the amplitude variance against task arithmetic: FR at its paper default "
            f"(cutoff 0.1) {d['fr_change_pct']:+.1f}% (the paper: −24%); over the bins it "
            f"keeps the change is {d['fr_change_kept_pct']:+.1f}%, zero by construction (FR filters the weighted "
            f"sum, which leaves kept bins as they are). Others: {named}.")


def _r_cutoff(d: dict, all_numbers: dict) -> str:
    points, refs = d["points"], d.get("references", {})
    ideal = sorted((float(k.split("@")[1]), v) for k, v in points.items() if k.startswith("ideal@"))
    walk = " → ".join(f"{_acc(v)} at {c:g}" for c, v in ideal)
    variance = f"{ideal[0][1]['variance']} to {ideal[-1][1]['variance']}" if ideal else ""
    se = max(v["se"] for _, v in ideal) if ideal else float("nan")
    best = d.get("best_ideal")
    zero = points.get("ideal@0")
    verdict = ("no cutoff beats no filter" if best == "ideal@0" else
               f"the best cutoff ({best.split('@')[1]}) is within noise of no filter"
               if zero and _within(points[best], zero) else f"cutoff {best.split('@')[1]} beats no filter")
    text = (f"**Cutoff sweep:** one scaling for every point ({d['scaling']:g}, chosen on validation at FR's "
            f"default filter), {d['images']} test images per task: ideal filter {walk} (± up to {se}); the "
            f"amplitude variance goes from {variance}; {verdict}.")
    if refs:
        text += (f" References on the same images: no merge {_acc(refs['pretrained'])}, task arithmetic at "
                 f"the same scaling {_acc(refs['task_arithmetic'])} (= cutoff 0), the fine-tuned models "
                 f"{_acc(refs['finetuned'])}.")
    return text


def _r_generalisation(d: dict, all_numbers: dict) -> str:
    text = (f"**Generalisation (Fig. 3):** filtering (cutoff 0.1) changes the diagonal by "
            f"{d['diagonal_points']:+.2f} points and the off-diagonal by {d['off_diagonal_points']:+.2f} points on "
            f"average, no cell by more than {d['largest_points']} points")
    if "cell_se_points" in d:
        se = d["cell_se_points"]
        text += (f"; one cell's binomial standard error is about {se} points ({d['images']} test images per "
                 "target), " + ("so every change is within one standard error" if d["largest_points"] <= se else
                               f"and the largest change is {d['largest_points'] / se:.1f} of them"))
    return text + "."


def _r_disentanglement(d: dict, all_numbers: dict) -> str:
    at = d.get("0.3")
    if not at:
        return ""
    text = (f"**Disentanglement** (validation, {d['images']} images per task): θ_pre + 0.3·τ_t scores "
            f"{_acc(at['own'])} on task t, θ_pre + 0.3·Σ_(s≠t) τ_s {_acc(at['others'])}, against "
            f"{_acc(at['pretrained'])} for θ_pre with the task's head (± {at['others']['se']})")
    text += (": the other tasks' vectors hurt task t" if at["others"]["pct"] < at["pretrained"]["pct"]
             and not _within(at["others"], at["pretrained"]) else ": the other tasks' vectors leave task t as it is")
    if "0.2" in d:
        text += f" (at 0.2: {_acc(d['0.2']['others'])})"
    return text + "."


def _r_landscape(d: dict, all_numbers: dict) -> str:
    pre = d.get("point:pretrained")
    ta = d.get("point:task_arithmetic")
    text = f"**Landscape (Fig. 4):** on {d['eval_task']} ({d['images']} test images)"
    if "pretrained_plus_b" in d and pre:
        text += (f", θ_pre + τ_{d['task_b']} scores {_acc(d['pretrained_plus_b'])} (loss "
                 f"{d['pretrained_plus_b']['loss']} against θ_pre's {pre['loss']})")
    if ta:
        text += (f"; task arithmetic scores {_acc(ta)} (loss {ta['loss']}, at L2 distance {ta['off_plane']} from the "
                 f"plane, where ‖τ_{d['task_a']}‖ = {d['norm_a']})")
    if "filter_norm_change_pct" in d:
        text += (f". The filtered plane (cutoff 0.1) looks the same: the filter changes τ_{d['task_a']} by "
                 f"{d['filter_norm_change_pct']}% in norm")
    return text + "."


def _r_router(d: dict, all_numbers: dict) -> str:
    methods, refs = d["methods"], d.get("references", {})
    parts = [f"{m} from {_acc(v['1'])} (router always right) to {_acc(v['0'])} (always wrong)"
             for m, v in methods.items() if "1" in v and "0" in v]
    text = f"**Router robustness (Fig. 5c)** ({d['images']} test images per task): " + ", ".join(parts) + "."
    if d.get("free_ahead_up_to_p") is not None:
        text += f" FREE is ahead of the others only when the router is right on {100 * d['free_ahead_up_to_p']:.0f}% of inputs or fewer."
    if refs and "FREE" in methods and "0" in methods["FREE"]:
        scaling = f" at scaling {d['ta_scaling']:g}" if "ta_scaling" in d else ""
        text += (f" References: no merge {_acc(refs['pretrained'])}, task arithmetic{scaling} "
                 f"{_acc(refs['task_arithmetic'])}, fine-tuned {_acc(refs['finetuned'])}.")
    return text


def _r_experts(d: dict, all_numbers: dict) -> str:
    p = d["points"]

    def at(kind, density):
        return p.get(f"{kind}@{density:g}")

    text = f"**Expert sparsity (Fig. 5b):** experts alone (θ_pre + e_t on task t, {d['images']} test images per task):"
    bern = [(x, at("bernoulli_rescaled", x)) for x in (0.02, 0.05) if at("bernoulli_rescaled", x)]
    if bern:
        text += " Bernoulli entries ÷ d " + ", ".join(f"{_acc(v)} at d = {x:g}" for x, v in bern) + ";"
    pair = [(x, at("topk_rescaled", x), at("topk", x)) for x in (0.05, 0.2) if at("topk_rescaled", x) and at("topk", x)]
    if pair:
        text += " top-k with the Eq. 4 rescale against plain top-k: " + ", ".join(
            f"{_acc(r)} against {_acc(t)} at d = {x:g}" for x, r, t in pair) + ";"
    svd = sorted(((float(k.split("@")[1]), v) for k, v in p.items() if k.startswith("svd@")), key=lambda kv: kv[0])
    if svd:
        density, first = svd[0]
        text += (f" the smallest SVD expert (budget d = {density:g}) stores {first['stored_pct']}% of a model"
                 f"{', over its budget' if first['over_budget'] else ''}, and scores {_acc(first)}")
        same = at("bernoulli_rescaled", 0.02)
        if same:
            text += f" (Bernoulli ÷ d at d = 0.02: {_acc(same)})"
        text += ";"
    text = text.rstrip(";") + "."
    densities = sorted({float(k.split("@")[1]) for k in p if not k.startswith("pretrained@")})
    if densities:
        lowest = densities[0]
        kinds = {k.split("@")[0]: v for k, v in p.items() if float(k.split("@")[1]) == lowest
                 and not k.startswith("pretrained@") and not v["over_budget"]}
        best = max(kinds, key=lambda kind: kinds[kind]["pct"])
        verdict = "reproduced" if best == "topk_rescaled" else "not reproduced here"
        text += (f" At the smallest density ({lowest:g}) the best expert within its budget is {best} "
                 f"({_acc(kinds[best])}): the paper's "
                 f"\"rescaled top-k is best at high sparsity\" is {verdict}.")
    return text


METHOD_LABELS = {"free_oracle": "FREE", "free": "FREE", "emr": "EMR", "twin": "Twin", "wudi": "WUDI",
                 "individual": "the individual models", "ties": "TIES", "pcb": "PCB", "cart": "CART", "tsv": "TSV"}


def _r_costs(d: dict, all_numbers: dict) -> str:
    extra = sorted(d["extra_pct"].items(), key=lambda kv: kv[1])
    stored = ", ".join(f"{METHOD_LABELS.get(m, m)} {v}%" for m, v in extra)
    return (f"**Costs (Table 9)** ({d['device']}): every plain merge of the zoo takes at most "
            f"{d['other_max_seconds']} s except {METHOD_LABELS.get(d['slowest_method'], d['slowest_method'])} "
            f"({d['slowest_seconds']} s); stored beyond the backbone, as a share of one model: {stored}.")


def _r_singular(d: dict, all_numbers: dict) -> str:
    names = {"amplitude_variance": "raw amplitude variance", "normalized_variance": "normalised amplitude variance",
             "sti_normalized": "TSV's singular task interference", "alignment": "Iso-C's alignment",
             "overlap": "the top-k subspace overlap", "sti": "TSV's singular task interference (raw)"}
    ranked = sorted(d["predictors"].items(), key=lambda kv: -abs(kv[1]["spearman"]))
    listed = ", ".join(f"{names.get(x, x)} {v['spearman']:+.2f}" for x, v in ranked)
    text = (f"**Singular vs Fourier (beyond the paper):** Spearman ρ with the {d['pairs']} pairs' merged accuracy: "
            f"{listed}.")
    reference = next((x for x, v in d["predictors"].items() if v["gain"] == 0 and v["gain_low"] == 0), None)
    for x, v in d["predictors"].items():
        if x == reference:
            continue
        resolved = "resolved" if v["gain_low"] > 0 or v["gain_high"] < 0 else "not resolved"
        name = names.get(x, x)
        text += (f" {name[0].upper() + name[1:]}: |ρ| {v['gain']:+.2f} against the {names.get(reference, reference)}'s "
                 f"({v['gain_low']:+.2f} to {v['gain_high']:+.2f}, {resolved} by these pairs).")
    return text


def _r_adaptive(d: dict, all_numbers: dict) -> str:
    rules = d["rules"]
    parts = []
    for rule, v in rules.items():
        chosen = ""
        if "cutoffs" in v:
            low, high = v["cutoffs"]
            chosen = f" (cutoff {low:g} for every matrix)" if low == high else f" (cutoffs {low:g}–{high:g})"
        parts.append(f"{rule}{chosen} {_acc(v)}")
    se = max(v["se"] for v in rules.values())
    values = list(rules.values())
    spread = all(_within(a, b) for a in values for b in values)
    return (f"**Adaptive cutoffs (beyond the paper)** ({d['images']} test images per task): " + ", ".join(parts)
            + f" (± up to {se}): " + ("all within noise of each other." if spread else "the rules differ beyond noise."))


def _params_text(params: dict) -> str:
    parts = []
    if "layer_scaling" in params:
        first, step = params["layer_scaling"]
        parts.append(f"layer scaling {first:g} + {step:g}·depth")
    if "scaling" in params:
        parts.append(f"scaling {params['scaling']:g}")
    return ", ".join(parts) or json.dumps(params)


def _r_layers(d: dict, all_numbers: dict) -> str:
    text = (f"**Layers (beyond the paper):** the last block's task vectors are the largest (norm {d['last_norm']} "
            f"against {d['other_norm'][0]}–{d['other_norm'][1]}) and interfere most (amplitude variance "
            f"{d['last_variance']} against {d['other_variance'][0]}–{d['other_variance'][1]})")
    settings = d.get("settings", {})
    if len(settings) >= 2:
        (a, va), (b, vb) = list(settings.items())[:2]
        text += (f"; {a} ({_params_text(va['params'])}) {_acc(va)} against {b} ({_params_text(vb['params'])}) "
                 f"{_acc(vb)}, " + ("within noise" if _within(va, vb) else "beyond noise"))
    return text + "."


RENDERERS = {"spectra": _r_spectra, "interference_vs_performance": _r_interference, "table1": _r_table1,
             "cutoff_sweep": _r_cutoff, "generalisation": _r_generalisation, "disentanglement": _r_disentanglement,
             "landscape": _r_landscape, "router_robustness": _r_router, "expert_sparsity": _r_experts,
             "costs": _r_costs, "singular_vs_fourier": _r_singular, "adaptive_cutoffs": _r_adaptive,
             "layers": _r_layers}


def _task_arithmetic_note(numbers: dict) -> str:
    """Where task arithmetic appears, with the scaling each figure set holds it at."""
    seen = []
    sweep = numbers.get("cutoff_sweep", {})
    if "references" in sweep:
        seen.append(f"{_acc(sweep['references']['task_arithmetic'])} in the cutoff sweep (the sweep's scaling "
                    f"{sweep['scaling']:g} with FR's per-task coefficients as weights: its cutoff 0)")
    router = numbers.get("router_robustness", {})
    if "references" in router:
        scaling = f"scaling {router['ta_scaling']:g}, " if "ta_scaling" in router else ""
        seen.append(f"{_acc(router['references']['task_arithmetic'])} in router robustness ({scaling}chosen on validation)")
    layers = numbers.get("layers", {}).get("settings", {})
    if "task arithmetic" in layers:
        v = layers["task arithmetic"]
        seen.append(f"{_acc(v)} in layers ({_params_text(v['params'])}, chosen on validation)")
    if len(seen) < 2:
        return ""
    return ("Task arithmetic appears as " + "; ".join(seen) + ": the same method at different scalings "
            "(each figure set holds it where its own comparison needs it), on the same test images per task.")


def render(numbers: dict) -> str:
    """The findings as a Markdown list (one bullet per topic found in `numbers`), with the run's facts first."""
    run = numbers["run"]
    minutes, seconds = divmod(int(round(run["seconds"])), 60)
    lines = [f"Measured by `freqmerge-viz figures` on the {run['study']}"
             f"{' (--quick)' if run['quick'] else ''}: the topics took {minutes} min {seconds} s in all on this "
             "2-core CPU. Accuracies are means over tasks, in percent of the test images stated (validation where "
             "said), ± one standard error (binomial); every number below is written by `freqmerge-viz findings` "
             "from that run's CSV tables.", ""]
    for topic, renderer in RENDERERS.items():
        if topic in numbers:
            text = renderer(numbers[topic], numbers)
            if text:
                lines.append(f"- {text}")
    note = _task_arithmetic_note(numbers)
    if note:
        lines += ["", note]
    return _minus_signs("\n".join(lines) + "\n")


def _minus_signs(text: str) -> str:
    """Typographic minus signs for negative numbers (``-0.82`` → ``−0.82``)."""
    return re.sub(r"(?<![\w.])-(?=\d)", "\u2212", text)


def update_readme(path: str | Path, markdown: str) -> bool:
    """Replace the text between the findings markers of `path` with `markdown`; True when it changed."""
    target = Path(path)
    text = target.read_text(encoding="utf-8")
    if START not in text or END not in text:
        raise FreqMergeError(f"{target} has no {START} … {END} block to write the findings into")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    updated = f"{head}{START}\n{markdown}{END}{tail}"
    if updated == text:
        return False
    write_atomically(target, lambda tmp: Path(tmp).write_text(updated, encoding="utf-8"))
    return True


def readme_block(path: str | Path) -> str:
    """The text between the findings markers of `path`."""
    text = Path(path).read_text(encoding="utf-8")
    if START not in text or END not in text:
        raise FreqMergeError(f"{path} has no {START} … {END} block")
    return text.split(START, 1)[1].split(END, 1)[0].lstrip("\n")
