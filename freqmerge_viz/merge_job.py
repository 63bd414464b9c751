"""Merging to disk: a merged checkpoint plus a record of how it was made, and its verification.

Guarantees (see :mod:`freqmerge_viz.outputs`): inputs are never written to; an output
folder is replaced whole or not at all; every check (overlap with inputs, writability,
free space, parameters) happens before any tensor is read. The record (``merge.json``)
holds the sha256 of every input file as read before the merge, the toolkit version, the
method with its resolved parameters, and the sha256 of every output file;
:func:`verify_merge` recomputes and compares them.

A merged Hugging Face model is usable as it is: when the pretrained input is a model folder,
its ``config.json``, generation and tokenizer files are copied beside the weights, and
weights the pretrained model ties (one tensor under two names, or embeddings tied by
``tie_word_embeddings``) stay tied, under the pretrained checkpoint's own set of keys.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from .errors import FreqMergeError, ParameterError
from .io import KeyMapState, LazyState, is_own_weight_file, load_state, plan_shards, write_file, write_shards
from .outputs import prepare_file_output, staged_folder, write_atomically, write_text_atomically
from .progress import progress_bar
from .taskvector import DerivedState, names_from_sources

CONFIG_FIELDS = ("method", "preset", "parameters", "pretrained", "finetuned", "include", "exclude",
                 "max_shard_size", "dtype", "pickled_modules", "names")
HF_SIDE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "added_tokens.json", "preprocessor_config.json", "merges.txt",
                 "vocab.*", "*.model")
"""Files of a Hugging Face model folder (globs, top level) copied beside a merged checkpoint."""
OUTPUT_EMBEDDINGS = ("lm_head.weight", "embed_out.weight", "cls.predictions.decoder.weight")
TOKEN_EMBEDDINGS = ("shared.weight", "embed_tokens.weight", "wte.weight", "word_embeddings.weight", "embed_in.weight")
"""Key endings of token-embedding matrices, in order of preference as a tied group's representative."""
RECORD_NAME = "merge.json"
RECORD_FORMAT = "freqmerge-viz merge record"
RECORD_VERSION = 2


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of one file's bytes, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file, or of every file in a folder (sorted by name, names included), as hex."""
    path = Path(path)
    if not path.is_dir():
        return file_sha256(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode())
        with open(file, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _yaml_error(where: str, exc: yaml.YAMLError) -> str:
    return f"{where} is not valid YAML ({' '.join(str(exc).split())})"


def load_config(path: str | os.PathLike) -> dict:
    """Read a mergekit-like YAML merge configuration (fields: see ``CONFIG_FIELDS``)."""
    try:
        config = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ParameterError(f"cannot read merge config {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ParameterError(_yaml_error(f"merge config {path}", exc)) from None
    if not isinstance(config, dict):
        raise ParameterError(f"merge config {path} must be a mapping, got {type(config).__name__}")
    unknown = sorted(set(config) - set(CONFIG_FIELDS))
    if unknown:
        raise ParameterError(f"merge config {path}: unknown field(s) {unknown}; allowed: {list(CONFIG_FIELDS)}")
    return config


def parse_param(pair: str) -> tuple[str, Any]:
    """``NAME=VALUE`` with VALUE read as plain YAML (numbers, lists, mappings; no tags)."""
    name, sep, value = pair.partition("=")
    if not sep or not name:
        raise ParameterError(f"--param takes NAME=VALUE, got {pair!r}")
    try:
        return name, yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise ParameterError(_yaml_error(f"--param {name}'s value {value!r}", exc)) from None


def record_path(out: str | os.PathLike) -> Path:
    """Where the record of output `out` lives: ``out/merge.json``, or ``X.merge.json`` beside ``X.safetensors``."""
    out = Path(out)
    if out.suffix.lower() == ".safetensors":
        return out.with_name(out.name[: -len(".safetensors")] + ".merge.json")
    return out / RECORD_NAME


def describe_input(source, state: LazyState) -> dict:
    """Path, resolved path and sha256 of every file `state` reads, plus one digest over them."""
    if not isinstance(source, (str, os.PathLike)):
        return {"path": f"<{type(source).__name__} in memory>", "sha256": None, "files": []}
    given = Path(source)
    base = given if given.is_dir() else given.parent
    files = []
    for path in state.origins:
        if path.is_file():
            resolved = path.resolve()
            name = os.path.relpath(path, base)
            files.append({"path": name, "resolved": str(resolved), "bytes": resolved.stat().st_size,
                          "sha256": file_sha256(resolved)})
    if len(files) == 1 and not given.is_dir():
        combined = files[0]["sha256"]
    else:
        digest = hashlib.sha256()
        for entry in sorted(files, key=lambda e: e["path"]):
            digest.update(f"{entry['path']}\0{entry['sha256']}\n".encode())
        combined = digest.hexdigest()
    return {"path": str(source), "resolved": str(given.resolve()), "sha256": combined, "files": files}


def _previous_record(out: Path) -> dict:
    with contextlib.suppress(OSError, ValueError):
        record = json.loads(record_path(out).read_text(encoding="utf-8"))
        if isinstance(record, dict):
            return record
    return {}


def _own_entries(out: Path):
    listed = {str(name).split("/")[0] for name in _previous_record(out).get("files", [])}
    return lambda name: name == RECORD_NAME or is_own_weight_file(name) or name in listed


def _torch_dtype(dtype):
    import torch

    if dtype is None:
        return None
    torch_dtype = getattr(torch, str(dtype), None)
    if not isinstance(torch_dtype, torch.dtype) or not torch_dtype.is_floating_point:
        raise ParameterError(f"unknown dtype {dtype!r} (e.g. float32, float16, bfloat16)")
    return torch_dtype


def hf_side_files(folder) -> list[Path]:
    """The config, generation and tokenizer files (:data:`HF_SIDE_FILES`) of a model folder;
    empty when `folder` is not a folder."""
    if not isinstance(folder, (str, os.PathLike)) or not Path(folder).is_dir():
        return []
    return sorted({path for pattern in HF_SIDE_FILES for path in Path(folder).glob(pattern) if path.is_file()})


def hf_config(source) -> dict:
    """``config.json`` of a model folder as a dict; empty when there is none or it is not a JSON object."""
    if not isinstance(source, (str, os.PathLike)):
        return {}
    with contextlib.suppress(OSError, ValueError):
        config = json.loads((Path(source) / "config.json").read_text(encoding="utf-8"))
        if isinstance(config, dict):
            return config
    return {}


def tie_groups(state: LazyState, config: Mapping | None = None) -> list[list[str]]:
    """Groups of keys of `state` that must hold one value, representative first.

    Keys tie when `state` holds them as one tensor (:meth:`LazyState.shared_keys`), or when
    `config` (a Hugging Face ``config.json``) says ``tie_word_embeddings: true``: then the
    output embedding (``lm_head.weight``, ...) and the token embeddings of its shape are one
    group. The representative is a token embedding (``shared.weight`` first) where the group
    has one, else its first key in `state`'s order.
    """
    order = {key: i for i, key in enumerate(state)}
    groups = [list(group) for group in state.shared_keys()]
    if config and config.get("tie_word_embeddings") is True:
        tokens = sorted((k for k in state if k.endswith(TOKEN_EMBEDDINGS)), key=_tie_rank(order))
        if tokens:
            shape = state.shape_of(tokens[0])
            groups.append([k for k in [*tokens, *OUTPUT_EMBEDDINGS] if k in state and state.shape_of(k) == shape])
    joined: list[set[str]] = []
    for group in map(set, groups):
        for overlapping in [g for g in joined if g & group]:
            group |= overlapping
            joined.remove(overlapping)
        joined.append(group)
    return [sorted(group, key=_tie_rank(order)) for group in joined if len(group) > 1]


def _tie_rank(order: Mapping[str, int]):
    def rank(key: str) -> tuple[int, int]:
        ending = next((i for i, end in enumerate(TOKEN_EMBEDDINGS) if key.endswith(end)), len(TOKEN_EMBEDDINGS))
        return ending, order[key]

    return rank


def _tied(state: LazyState, groups: list[list[str]]) -> LazyState:
    """`state` with every key of a tie group reading its representative."""
    alias = {key: group[0] for group in groups for key in group[1:] if key in state and group[0] in state}
    return KeyMapState(state, {key: alias.get(key, key) for key in state}) if alias else state


def _without_extra_ties(pre: LazyState, ft: LazyState, config: Mapping) -> tuple[LazyState, list[str]]:
    """`ft` without the keys the pretrained checkpoint omits that `ft` ties to a key it has."""
    extra = [key for group in tie_groups(ft, config) if any(k in pre for k in group)
             for key in group if key not in pre]
    if not extra:
        return ft, []
    return KeyMapState(ft, {key: key for key in ft if key not in extra}), extra


def _copy_side_files(files: Sequence[Path], folder: Path, dtype: str | None) -> list[str]:
    """Copy `files` into `folder` (atomically; ``config.json``'s dtype set to `dtype` if given)."""
    for source in files:
        target = folder / source.name
        config = hf_config(source.parent) if source.name == "config.json" and dtype is not None else {}
        if config:
            for field in ("torch_dtype", "dtype"):
                if field in config:
                    config[field] = dtype
            write_text_atomically(target, json.dumps(config, indent=2) + "\n")
        else:
            write_atomically(target, lambda tmp, source=source: shutil.copyfile(source, tmp))
    return [source.name for source in files]


def _version() -> str:
    from . import __version__

    return __version__


def _counted(state: LazyState, bar) -> LazyState:
    """`state`, advancing `bar` by one as each tensor is read (the writers read one key at a
    time)."""

    def load(key: str):
        tensor = state[key]
        bar.update(1)
        return tensor

    return DerivedState(state.name, list(state), load, state.shape_of, state.dtype_of, state.source_of,
                        origins=state.origins)


def merge_to_disk(method: str, pretrained, finetuned: Sequence, out: str | os.PathLike, *,
                  parameters: Mapping[str, Any] | None = None, preset: str | None = None,
                  include=None, exclude=None, max_shard_size=None, dtype: str | None = None,
                  device=None, pickled_modules: bool = False, progress: bool | None = False,
                  names: Sequence[str] | None = None) -> dict:
    """Merge and write the result with its record; return the record.

    `out` is a folder receiving ``model.safetensors`` (sharded past `max_shard_size`) and
    ``merge.json``, or a file ``X.safetensors`` with its record in ``X.merge.json``. A routed
    merge (``free``, ``emr``, ``twin``) writes one state per task, ``out/<task>/...``, and
    its storage table in the record; `names` name the tasks (default: the checkpoints' file names,
    or their folders' names when the file names collide). Before any tensor is read: the parameters are
    validated, `out` is checked not to overlap any input and to be writable with room for
    the output, and the inputs are hashed. `pickled_modules` reads pickled whole modules
    (:func:`~freqmerge_viz.io.load_state`). `progress` shows a bar over the keys written
    (:mod:`freqmerge_viz.progress`).

    A pretrained model folder's :data:`HF_SIDE_FILES` are copied into each output folder
    (listed with their sha256 in the record); the keys of each :func:`tie_groups` group are
    written with their representative's merged value, and a fine-tuned key the pretrained
    checkpoint omits but ties to one it has is left out (the record's ``ties``).
    """
    from .methods import get_method, merge, routed_merge

    params = dict(parameters or {})
    if preset is not None:
        params["preset"] = preset
    torch_dtype = _torch_dtype(dtype)
    out = Path(out)
    routed = get_method(method).routed
    single_file = out.suffix.lower() == ".safetensors"
    if routed and single_file:
        raise ParameterError(f"{method} writes one checkpoint per task: give a folder for --out, not {out.name}")
    finetuned = list(finetuned)
    pre_state = load_state(pretrained, pickled_modules=pickled_modules)
    ft_states = [load_state(item, pickled_modules=pickled_modules) for item in finetuned]
    get_method(method).resolve(params, len(finetuned))
    if names is not None and len(names) != len(finetuned):
        raise ParameterError(f"{len(names)} names for {len(finetuned)} fine-tuned checkpoints")
    names = [str(n) for n in names] if names is not None else names_from_sources(finetuned)
    if names is not None and len(set(names)) != len(names):
        raise ParameterError(f"task names must be distinct, got {names}")
    tasks = dict(zip(names, ft_states)) if names is not None else ft_states
    side_files = [] if single_file else hf_side_files(pretrained)
    pre_config = hf_config(pretrained)
    groups = tie_groups(pre_state, pre_config)
    dropped = {}
    for i, item in enumerate(finetuned):
        ft_states[i], extra = _without_extra_ties(pre_state, ft_states[i], hf_config(item) or pre_config)
        if extra:
            dropped[f"finetuned[{i}]"] = extra
    protect = [p for p in (pretrained, *finetuned) if isinstance(p, (str, os.PathLike))]
    protect += [p for state in (pre_state, *ft_states) for p in state.origins]
    plan = plan_shards(pre_state, max_shard_size, torch_dtype)
    expected = plan.total_bytes * (len(finetuned) if routed else 1)

    if single_file:
        plan.require_single_file(out)
        prepare_file_output(out, protect=protect, expected_bytes=expected)
        prepare_file_output(record_path(out), protect=protect, what="merge record")
        target = contextlib.nullcontext(out.parent)
    else:
        target = staged_folder(out, protect=protect, expected_bytes=expected, own=_own_entries(out))

    with target as folder, contextlib.ExitStack() as stack:
        record = {
            "format": RECORD_FORMAT, "record_version": RECORD_VERSION,
            "freqmerge_viz_version": _version(), "method": method,
            "inputs": {"pretrained": describe_input(pretrained, pre_state),
                       "finetuned": [describe_input(f, s) for f, s in zip(finetuned, ft_states)]},
            "include": include, "exclude": exclude, "dtype": dtype, "max_shard_size": max_shard_size,
            "pickled_modules": pickled_modules, "ties": {"groups": groups, "left_out": dropped},
            "names": names,
        }
        metadata = {"format": "pt", "freqmerge_viz.method": method, "freqmerge_viz.version": _version(),
                    "freqmerge_viz.inputs": json.dumps({"pretrained": record["inputs"]["pretrained"]["sha256"],
                                                        "finetuned": [i["sha256"] for i in record["inputs"]["finetuned"]]})}
        bar = stack.enter_context(progress_bar(None, f"merge {method}", progress))
        if routed:
            merged = routed_merge(method, pre_state, tasks, include=include, exclude=exclude,
                                  device=device or "cpu", **params)
            files = []
            bar.reset(total=len(merged.task_names) * len(pre_state))
            for task in merged.task_names:
                state = merged.task_state(task)
                if torch_dtype is not None:
                    state = load_state({k: v.to(torch_dtype) if v.is_floating_point() else v
                                        for k, v in state.items()})
                state = _counted(_tied(state, groups), bar)
                (folder / task).mkdir()
                names = write_shards(state, plan_shards(state, max_shard_size), folder / task,
                                     {**metadata, "freqmerge_viz.task": task})
                names += _copy_side_files(side_files, folder / task, dtype)
                files += [f"{task}/{name}" for name in names]
            record["parameters"] = merged.settings
            record["statistics"] = {"storage": merged.storage_table().to_dict("records")}
        else:
            state = merge(method, pre_state, tasks, include=include, exclude=exclude, device=device,
                          dtype=torch_dtype, **params)
            metadata["freqmerge_viz.parameters"] = json.dumps(state.params, sort_keys=True, default=str)
            record["parameters"], record["statistics"] = state.params, state.statistics
            state = _tied(state, groups)
            bar.reset(total=len(state))
            state = _counted(state, bar)
            output_plan = plan_shards(state, max_shard_size)
            if single_file:
                output_plan.require_single_file(out)
                write_file(state, out, metadata)
                files = [out.name]
            else:
                files = write_shards(state, output_plan, folder, metadata)
                files += _copy_side_files(side_files, folder, dtype)
        record["files"] = files
        record["outputs"] = [{"path": name, "bytes": (folder / name).stat().st_size,
                              "sha256": file_sha256(folder / name)} for name in files]
        text = json.dumps(record, indent=2, default=str) + "\n"
        write_text_atomically(record_path(out) if single_file else folder / RECORD_NAME, text)
    return record


def verify_merge(path: str | os.PathLike) -> list[dict]:
    """Recompute the sha256 of every output and input file named in a merge record.

    `path` is an output folder, an ``X.safetensors`` output or the record itself. Returns
    one row per file: ``role`` (output / pretrained / finetuned[i]), ``path``, ``recorded``,
    ``actual`` sha256 and ``status``: ``ok``, ``changed``, ``missing`` or ``unrecorded``
    (a record from an older version, without the file's hash).
    """
    path = Path(path)
    if path.is_dir():
        record_file = path / RECORD_NAME
    elif path.suffix.lower() == ".json":
        record_file = path
    else:
        record_file = record_path(path)
    try:
        record = json.loads(record_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        where = "" if path.exists() else f"; {path} does not exist"
        raise FreqMergeError(f"no merge record at {record_file} (a merge output folder holds merge.json; "
                             f"a single file X.safetensors has X.merge.json beside it){where}") from None
    except (OSError, ValueError) as exc:
        raise FreqMergeError(f"cannot read merge record {record_file}: {exc}") from None
    base = record_file.parent
    rows = []
    outputs = record.get("outputs") or [{"path": name, "sha256": None} for name in record.get("files", [])]
    for entry in outputs:
        rows.append(_check_file("output", base / entry["path"], entry.get("sha256")))
    inputs = record.get("inputs", {})
    described = [("pretrained", inputs.get("pretrained"))]
    described += [(f"finetuned[{i}]", entry) for i, entry in enumerate(inputs.get("finetuned", []))]
    for role, entry in described:
        if not entry:
            continue
        files = entry.get("files")
        if files:
            rows += [_check_file(role, Path(f["resolved"]), f["sha256"]) for f in files]
        elif entry.get("sha256"):
            rows.append(_check_digest(role, Path(entry.get("resolved") or entry["path"]), entry["sha256"]))
    return rows


def _check_file(role: str, file: Path, recorded: str | None) -> dict:
    if not file.is_file():
        return {"role": role, "path": str(file), "recorded": recorded, "actual": None, "status": "missing"}
    actual = file_sha256(file)
    status = "unrecorded" if recorded is None else ("ok" if actual == recorded else "changed")
    return {"role": role, "path": str(file), "recorded": recorded, "actual": actual, "status": status}


def _check_digest(role: str, path: Path, recorded: str) -> dict:
    if not path.exists():
        return {"role": role, "path": str(path), "recorded": recorded, "actual": None, "status": "missing"}
    actual = file_digest(path)
    return {"role": role, "path": str(path), "recorded": recorded, "actual": actual,
            "status": "ok" if actual == recorded else "changed"}


__all__ = ["merge_to_disk", "verify_merge", "load_config", "parse_param", "record_path", "file_digest",
           "file_sha256", "describe_input", "hf_side_files", "hf_config", "tie_groups"]
