"""``study``: an ``open_clip`` study's merge time and evaluation throughput, against plain torch.

A study of K task_vectors-style checkpoints (pickled ``ImageEncoder`` modules: open_clip's
ViT-B-32 at random init, K copies moved by seeded noise; ``--quick``: a small open_clip
config), pickled ``ClassificationHead`` heads and generated ImageFolder data is written to a
work folder (or ``--study FILE`` names an existing ``kind: open_clip`` study). Then, with the
same torch threads:

- **merge**: the toolkit opens the study (:func:`~freqmerge_viz.study.load_study`: headers
  only) and computes ``freqmerge_viz.merge("task_arithmetic", ...)`` over the lazy states,
  reading every key of the result; the plain way ``torch.load``\\ s each file
  (``weights_only=False``, the checkpoints' classes importable, as task_vectors' code does),
  takes ``state_dict()`` and loops over the keys doing the same arithmetic. Best of
  ``repeats``; both read the files from the page cache after the first run.
  ``max_abs_difference`` compares the two merged states.
  The merge has no plain floor below the toolkit's own reading (``floor_reason``).
- **evaluation**: images per second of ``evaluate_on_study`` (the batched engine, its
  default mode and workers) on S = K + 1 parameter sets (the pretrained and the fine-tuned
  states, in memory) and one task's ``images`` test images, against a plain loop: the
  unpickled ``ImageEncoder`` in ``eval()`` mode, ``load_state_dict`` of each set, then
  ``encoder(images)`` in batches of ``batch_size`` under ``torch.no_grad`` on images
  normalised beforehand, and the task's head (a ``ClassificationHead``: normalise, linear).
  Losses and accuracies of both are compared. The plain loop is the evaluation's floor
  (``x_floor``: toolkit over plain time, the inverse of ``toolkit_over_plain_throughput``).
  (With ``--study``, the pretrained checkpoint must be a pickled module whose classes import.)

Needs open_clip (``pip install freqmerge-viz[open_clip]``) to build the models. The full run
writes K + 1 checkpoints of about 600 MB each.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from ..errors import ParameterError
from ..study import examples
from .filter import _with_threads

TINY_IMAGE, TINY_HEAD_WIDTH = 32, 32
"""The ``--quick`` model: :func:`freqmerge_viz.study.examples.tiny_clip` (image 32, 32-wide heads)."""


def build_study(folder: Path, quick: bool, k: int, images: int, classes: int = 10, seed: int = 0) -> Path:
    """Write the benchmark's study under `folder` (see the module docstring); return its YAML file."""
    import numpy as np
    import yaml
    from PIL import Image

    if quick:
        model = examples.tiny_clip(seed=seed)
        size, dim = TINY_IMAGE, model.visual.output_dim
    else:
        torch.manual_seed(seed)
        model = examples.import_open_clip().create_model("ViT-B-32", pretrained=None)
        size, dim = 224, model.visual.output_dim
    model.eval()
    pre = {key: value.detach().clone() for key, value in model.state_dict().items()}
    generator = torch.Generator().manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    spec = {"kind": "open_clip", "name": f"bench-{'tiny' if quick else 'vit-b-32'}-{k}", "pretrained": "zeroshot.pt",
            "finetuned": {}, "heads": {}, "data": {}, "limit": images}
    if quick:
        spec["head_width"] = TINY_HEAD_WIDTH
    rng = np.random.default_rng(seed)
    def encoder(state):
        def build(classes):
            model.load_state_dict(state)
            return classes.ImageEncoder(model)
        return build

    objects = {folder / "zeroshot.pt": encoder(pre)}
    for i in range(k):
        task = f"task{i}"
        state = dict(pre)
        for key, value in pre.items():
            if key.startswith("visual.") and value.is_floating_point() and value.numel() > 1:
                state[key] = value + 0.01 * float(value.std()) * torch.randn(value.shape, generator=generator)
        weight = torch.randn(classes, dim, generator=generator)
        objects[folder / task / "finetuned.pt"] = encoder(state)
        objects[folder / f"head_{task}.pt"] = lambda classes_module, weight=weight: \
            classes_module.ClassificationHead(True, weight)
        spec["finetuned"][task] = f"{task}/finetuned.pt"
        spec["heads"][task] = f"head_{task}.pt"
        for split in ("val", "test"):
            for c in range(classes):
                out = folder / "data" / task / split / f"c{c}"
                out.mkdir(parents=True, exist_ok=True)
                for j in range(math.ceil(images / classes)):
                    pixels = rng.integers(0, 256, (size // 2 + 3, size // 2, 3), dtype=np.uint8)
                    Image.fromarray(pixels).save(out / f"{j}.png")
        spec["data"][task] = {split: f"data/{task}/{split}" for split in ("val", "test")}
    examples.save_pickled(objects)
    model.load_state_dict(pre)
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


def _plain_state(path: str) -> dict[str, torch.Tensor]:
    loaded = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(loaded, torch.nn.Module):
        return loaded.state_dict()
    if isinstance(loaded, Mapping):
        return dict(loaded.get("state_dict", loaded))
    raise ParameterError(f"{path} holds a {type(loaded).__name__}, neither a module nor a state dict")


def _best(work, repeats: int) -> tuple[float, object]:
    best, result = math.inf, None
    for _ in range(repeats):
        start = time.perf_counter()
        result = work()
        best = min(best, time.perf_counter() - start)
    return best, result


def _time_merge(spec_path: Path, study, coefficient: float, repeats: int) -> dict:
    from ..methods import merge
    from ..study import load_study

    def toolkit():
        opened = load_study(spec_path)
        merged = merge("task_arithmetic", opened.pretrained, list(opened.finetuned.values()),
                       scaling=coefficient)
        return {key: merged[key] for key in merged}

    pre_file = str(study.pretrained.origins[0])
    files = [str(state.origins[0]) for state in study.finetuned.values()]

    def plain():
        with examples.classes_importable():
            pre = _plain_state(pre_file)
            finetuned = [_plain_state(f) for f in files]
        out = {}
        for key, value in pre.items():
            if value.is_floating_point():
                out[key] = value + coefficient * sum(ft[key] - value for ft in finetuned)
            else:
                out[key] = value
        return out

    plain_seconds, plain_state = _best(plain, repeats)
    toolkit_seconds, toolkit_state = _best(toolkit, repeats)
    if set(plain_state) != set(toolkit_state):
        raise ParameterError("the toolkit's and the plain merge give different keys")
    difference = max(float((toolkit_state[k].float() - plain_state[k].float()).abs().max())
                     for k in plain_state if plain_state[k].numel())
    checkpoint_bytes = sum(v.numel() * v.element_size() for v in plain_state.values())
    return {"toolkit_seconds": round(toolkit_seconds, 3), "plain_seconds": round(plain_seconds, 3),
            "toolkit_over_plain": round(toolkit_seconds / plain_seconds, 2),
            "floor": None, "x_floor": None,
            "floor_reason": "no plain computation smaller than the toolkit's: the least work reads each "
                            "checkpoint's tensor bytes and adds them, which the toolkit does (lazily, from the "
                            "pickles' zip storage); the torch.load loop unpickles whole modules and stays a peer "
                            "(toolkit_over_plain)",
            "keys": len(plain_state),
            "bytes_per_checkpoint": checkpoint_bytes, "checkpoints": len(files) + 1,
            "max_abs_difference": difference}


def _time_evaluation(study, images: int, batch_size: int, repeats: int) -> dict:
    from ..study import evaluate_on_study, study_data
    from ..study.clip import classification_logits, normalise_images

    task = study.tasks[0]
    inputs, labels = study_data(study, task, "test", images)
    keys = study.backbone_keys()
    sets = [study.pretrained, *study.finetuned.values()]
    full = [{k: state[k].to(torch.float32) for k in state} for state in sets]
    backbone = [{k: state[k] for k in keys} for state in full]
    head = study.head(task)
    with examples.classes_importable():
        encoder = torch.load(str(study.pretrained.origins[0]), map_location="cpu", weights_only=False)
    if not isinstance(encoder, torch.nn.Module):
        raise ParameterError("the plain evaluation loop needs the pretrained checkpoint as a pickled module")
    encoder.eval()
    normalised = normalise_images(inputs)

    def plain():
        losses, hits = [], []
        with torch.no_grad():
            for state in full:
                encoder.load_state_dict(state)
                logits = torch.cat([classification_logits(encoder(normalised[i:i + batch_size]), head.weight,
                                                          head.bias, head.normalize)
                                    for i in range(0, len(labels), batch_size)])
                losses.append(float(F.cross_entropy(logits, labels)))
                hits.append(float((logits.argmax(1) == labels).float().mean()))
        return losses, hits

    def toolkit():
        return evaluate_on_study(study, backbone, task, split="test", limit=images, batch_size=batch_size)

    plain_seconds, (plain_loss, plain_accuracy) = _best(plain, repeats)
    toolkit_seconds, table = _best(toolkit, repeats)
    scored = len(sets) * len(labels)
    return {"task": task, "images": len(labels), "parameter_sets": len(sets), "batch_size": batch_size,
            "toolkit_seconds": round(toolkit_seconds, 3), "plain_seconds": round(plain_seconds, 3),
            "toolkit_images_per_second": round(scored / toolkit_seconds, 2),
            "plain_images_per_second": round(scored / plain_seconds, 2),
            "toolkit_over_plain_throughput": round(plain_seconds / toolkit_seconds, 2),
            "floor": "the plain loop above (model.eval(), load_state_dict per set, forward in batches under no_grad, "
                     "the head): one forward per parameter set is the least computation",
            "floor_seconds": round(plain_seconds, 3), "x_floor": round(toolkit_seconds / plain_seconds, 2),
            "accuracy_difference": max(abs(a - b) for a, b in zip(table["accuracy"], plain_accuracy)),
            "max_loss_difference": max(abs(a - b) for a, b in zip(table["loss"], plain_loss))}


def run(quick: bool = False, k: int = 4, images: int = 64, batch_size: int = 64, repeats: int | None = None,
        threads: int | None = 1, workdir: str | os.PathLike | None = None, study: str | os.PathLike | None = None,
        coefficient: float = 0.3, keep: bool = False) -> dict:
    """Merge time and evaluation throughput (see the module docstring)."""
    if k < 1 or images < 1 or batch_size < 1:
        raise ParameterError(f"k, images and batch_size must be >= 1, got {k}, {images}, {batch_size}")
    repeats = repeats or (1 if quick else 2)
    return _with_threads(threads, lambda: _run(quick, k, images, batch_size, repeats, threads, workdir, study,
                                               coefficient, keep))


def _run(quick, k, images, batch_size, repeats, threads, workdir, study_file, coefficient, keep) -> dict:
    from ..study import load_study

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    temporary = workdir is None and study_file is None
    folder = Path(tempfile.mkdtemp(prefix="freqmerge-bench-study-")) if workdir is None else Path(workdir)
    try:
        start = time.perf_counter()
        spec_path = Path(study_file) if study_file else build_study(folder, quick, k, images)
        built = time.perf_counter() - start
        study = load_study(spec_path)
        merge_result = _time_merge(spec_path, study, coefficient, repeats)
        evaluation = _time_evaluation(study, images, batch_size, repeats)
    finally:
        if temporary and not keep:
            shutil.rmtree(folder, ignore_errors=True)
    return {"benchmark": "study", "arch": "tiny" if quick else "ViT-B-32" if not study_file else study.tower.describe(),
            "k": len(study.tasks), "threads": threads, "repeats": repeats, "torch": torch.__version__,
            "load_average_at_start": load, "build_seconds": round(built, 1),
            "merge": merge_result, "evaluation": evaluation}


def main(argv: Sequence[str] | None = None) -> dict:
    """``freqmerge-viz bench study``: print :func:`run`'s result as JSON."""
    parser = argparse.ArgumentParser(prog="freqmerge-viz bench study", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small open_clip config instead of ViT-B-32 (tests)")
    parser.add_argument("--k", type=int, default=4, help="fine-tuned checkpoints (default 4)")
    parser.add_argument("--images", type=int, default=64, help="test images evaluated per parameter set (default 64)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward call (default 64)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats, the best counts (default 2; "
                                                                  "--quick 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--workdir", default=None, help="where the study is written (default: a temporary folder, "
                                                        "removed afterwards)")
    parser.add_argument("--study", default=None, help="an existing open_clip study file instead of a generated one "
                                                      "(the plain baseline needs its checkpoints' classes importable)")
    parser.add_argument("--json", default=None, help="also write the result to this file")
    args = parser.parse_args(argv)
    result = run(quick=args.quick, k=args.k, images=args.images, batch_size=args.batch_size, repeats=args.repeats,
                 threads=args.threads, workdir=args.workdir, study=args.study)
    text = json.dumps(result)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n", encoding="utf-8")
    return result
