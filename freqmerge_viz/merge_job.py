"""Merging to disk: a merged checkpoint plus a JSON record of how it was made."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from .errors import ParameterError
from .io import save_state, write_text_atomically
from .methods import merge
from .routed import list_routed_methods, routed_merge

CONFIG_FIELDS = ("method", "preset", "parameters", "pretrained", "finetuned", "include", "exclude",
                 "max_shard_size", "dtype")


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file, or of every file in a directory (sorted by name), as hex."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode())
        with open(file, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def load_config(path: str | os.PathLike) -> dict:
    """Read a mergekit-like YAML merge configuration (fields: see ``CONFIG_FIELDS``)."""
    try:
        config = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ParameterError(f"cannot read merge config {path}: {exc}") from None
    if not isinstance(config, dict):
        raise ParameterError(f"merge config {path} must be a mapping, got {type(config).__name__}")
    unknown = sorted(set(config) - set(CONFIG_FIELDS))
    if unknown:
        raise ParameterError(f"merge config {path}: unknown field(s) {unknown}; allowed: {list(CONFIG_FIELDS)}")
    return config


def merge_to_disk(method: str, pretrained, finetuned: Sequence, out: str | os.PathLike, *,
                  parameters: Mapping[str, Any] | None = None, preset: str | None = None,
                  include=None, exclude=None, max_shard_size=None, dtype: str | None = None,
                  device=None) -> dict:
    """Merge and write ``out/model.safetensors`` (sharded past `max_shard_size`) and ``out/merge.json``.

    A routed merge (``free``, ``emr``, ``twin``) writes one state per task instead,
    ``out/<task>/model.safetensors``, and its storage table in the record.
    """
    import torch

    params = dict(parameters or {})
    if preset is not None:
        params["preset"] = preset
    torch_dtype = None
    if dtype is not None:
        torch_dtype = getattr(torch, str(dtype), None)
        if not isinstance(torch_dtype, torch.dtype):
            raise ParameterError(f"unknown dtype {dtype!r} (e.g. float32, float16, bfloat16)")
    out = Path(out)
    metadata = {"freqmerge_viz.method": method}
    if method in list_routed_methods():
        routed = routed_merge(method, pretrained, finetuned, include=include, exclude=exclude,
                              device=device or "cpu", **params)
        files = []
        for task in routed.task_names:
            state = routed.task_state(task)
            if torch_dtype is not None:
                state = {k: v.to(torch_dtype) if v.is_floating_point() else v for k, v in state.items()}
            written = save_state(state, out / task, max_shard_size=max_shard_size,
                                 metadata={**metadata, "freqmerge_viz.task": task})
            files += [f"{task}/{p.name}" for p in written]
        parameters, statistics = routed.settings, {"storage": routed.storage_table().to_dict("records")}
    else:
        state = merge(method, pretrained, finetuned, include=include, exclude=exclude, device=device,
                      dtype=torch_dtype, **params)
        written = save_state(state, out, max_shard_size=max_shard_size, metadata=metadata)
        files, parameters, statistics = [p.name for p in written], state.params, state.statistics
    record = {
        "method": method,
        "parameters": parameters,
        "statistics": statistics,
        "inputs": {"pretrained": {"path": str(pretrained), "sha256": file_digest(pretrained)},
                   "finetuned": [{"path": str(f), "sha256": file_digest(f)} for f in finetuned]},
        "include": include, "exclude": exclude, "dtype": dtype,
        "files": files,
    }
    write_text_atomically(out / "merge.json", json.dumps(record, indent=2) + "\n")
    return record
