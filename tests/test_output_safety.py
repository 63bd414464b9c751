"""Never lose a user's data: outputs that cannot touch inputs, all-or-nothing writes, true provenance.

The kill tests run real merges in subprocesses, stop them with SIGKILL at chosen points
(between shards, during the index write, during merge.json, just before and just after the
folder swap, between the two renames of the fallback swap) and check what is left on disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import freqmerge_viz as fmv
import freqmerge_viz.io
import freqmerge_viz.outputs as outputs
from freqmerge_viz.cli import main
from freqmerge_viz.errors import FreqMergeError, OutputError, ParameterError
from freqmerge_viz.io import load_state, save_state
from freqmerge_viz.merge_job import merge_to_disk, record_path, verify_merge

N_KEYS = 12
FT_NAMES = ("ft0.safetensors", "ft1.safetensors", "ft2.safetensors")


def make_models(root: Path) -> dict[str, Path]:
    """A pretrained model stored as 4 shards, and three fine-tuned single files."""
    g = torch.Generator().manual_seed(3)
    pre = {f"blocks.{i}.attn.weight": torch.randn(24, 20, generator=g) for i in range(N_KEYS)}
    save_state(pre, root / "pre", max_shard_size=2 * 24 * 20 * 4)
    paths = {"pre": root / "pre"}
    for name in FT_NAMES:
        state = {k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in pre.items()}
        save_state(state, root / name)
        paths[name] = root / name
    return paths


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under `root`, by relative path (hidden files included)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def temporaries(folder: Path) -> list[str]:
    return sorted(n for n in os.listdir(folder) if outputs._TEMPORARY.fullmatch(n))


@pytest.fixture()
def models(tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    paths = make_models(inputs)
    return paths, tree_digest(inputs)


def finetuned(paths):
    return [paths[name] for name in FT_NAMES]


def state_values(path: Path) -> dict[str, torch.Tensor]:
    state = load_state(path)
    return {k: state[k].clone() for k in state}


def same_values(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------- kill tests
CHILD = textwrap.dedent('''
    import os, sys, time
    from pathlib import Path
    import freqmerge_viz.io as io
    import freqmerge_viz.outputs as outputs
    import freqmerge_viz.merge_job as job

    point, out, pre, *fts = sys.argv[1:]

    def pause(tag):
        if tag == point:
            print("PAUSED", flush=True)
            time.sleep(120)

    written = {"shards": 0}
    original_shard = io._write_shard
    def write_shard(state, keys, target, dtype, metadata):
        original_shard(state, keys, target, dtype, metadata)
        written["shards"] += 1
        if written["shards"] == 2:
            pause("between_shards")
    io._write_shard = write_shard

    original_text = outputs.write_text_atomically
    def write_text(target, text):
        target = Path(target)
        tag = {"model.safetensors.index.json": "index", "merge.json": "record"}.get(target.name)
        if tag == point:
            partial = outputs.temporary_sibling(target)
            partial.write_text(text[: len(text) // 2])
            pause(tag)
        original_text(target, text)
    io.write_text_atomically = write_text
    job.write_text_atomically = write_text

    original_swap = outputs._swap_in
    def swap(staging, target):
        pause("before_swap")
        original_swap(staging, target)
        pause("after_swap")
    outputs._swap_in = swap

    if point == "between_renames":
        outputs._exchange = lambda a, b: False
        real_rename = os.rename
        def rename(src, dst):
            real_rename(src, dst)
            if str(src) == out:
                pause("between_renames")
        outputs.os.rename = rename

    if point == "single_file":
        def partial_layout(path, layout, order, tensor_of):
            Path(path).write_bytes(b"x" * 4096)
            pause("single_file")
        io._write_layout = partial_layout

    job.merge_to_disk("fr", pre, fts, out, max_shard_size="4kB" if not out.endswith(".safetensors") else None)
    print("FINISHED", flush=True)
''')


def run_until(point: str, out: Path, paths) -> None:
    """Start an FR merge into `out` in a subprocess and SIGKILL it at `point`."""
    args = [sys.executable, "-c", CHILD, point, str(out), str(paths["pre"]), *map(str, finetuned(paths))]
    child = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline().strip()
        assert line == "PAUSED", (line, child.stderr.read() if child.poll() is not None else "")
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


@pytest.mark.parametrize("point", ["between_shards", "index", "record", "before_swap", "after_swap",
                                   "between_renames"])
def test_killed_sharded_overwrite_leaves_old_or_new_output_whole(tmp_path, models, point):
    paths, inputs_before = models
    out = tmp_path / "merged"
    merge_to_disk("task_arithmetic", paths["pre"], finetuned(paths), out, max_shard_size="4kB")
    old_files, old_values = tree_digest(out), state_values(out)
    assert len([n for n in old_files if n.endswith(".safetensors")]) > 2

    run_until(point, out, paths)

    if point == "between_renames":
        assert not out.exists()
        assert [n.split(".")[2][:3] for n in temporaries(tmp_path)].count("old") == 1
        outputs.sweep_stale(tmp_path, out.name)
    assert tree_digest(tmp_path / "inputs") == inputs_before
    if point == "after_swap":
        record = json.loads((out / "merge.json").read_text())
        assert record["method"] == "fr"
        assert all(row["status"] == "ok" for row in verify_merge(out))
    else:
        assert tree_digest(out) == old_files
        assert same_values(state_values(out), old_values)
        assert json.loads((out / "merge.json").read_text())["method"] == "task_arithmetic"

    merge_to_disk("fr", paths["pre"], finetuned(paths), out, max_shard_size="4kB")
    assert temporaries(tmp_path) == [] and temporaries(out) == []
    assert all(row["status"] == "ok" for row in verify_merge(out))
    assert tree_digest(tmp_path / "inputs") == inputs_before


def test_killed_single_file_write_keeps_the_old_file_and_the_next_run_sweeps(tmp_path, models):
    paths, inputs_before = models
    out = tmp_path / "merged.safetensors"
    merge_to_disk("task_arithmetic", paths["pre"], finetuned(paths), out)
    old = out.read_bytes()

    run_until("single_file", out, paths)

    assert out.read_bytes() == old
    stale = temporaries(tmp_path)
    assert len(stale) == 1 and stale[0].startswith(".merged.safetensors.tmp-")
    merge_to_disk("fr", paths["pre"], finetuned(paths), out)
    assert temporaries(tmp_path) == []
    assert json.loads(record_path(out).read_text())["method"] == "fr"
    assert tree_digest(tmp_path / "inputs") == inputs_before


def test_sweep_keeps_temporaries_of_running_processes(tmp_path):
    alive = tmp_path / f".out.tmp-{os.getppid()}-0123abcd"
    dead = tmp_path / ".out.tmp-999999999-0123abcd"
    other = tmp_path / ".other.tmp-999999999-0123abcd"
    for path in (alive, dead, other):
        path.mkdir()
    assert outputs.sweep_stale(tmp_path, "out") == [dead]
    assert sorted(os.listdir(tmp_path)) == sorted([alive.name, other.name])


# ---------------------------------------------------------------------------- overlap
def overlap_cases(root: Path, paths) -> list[tuple[str, dict, Path]]:
    """(label, merge inputs, output path) for outputs equal to, containing, or inside each kind of input."""
    link = root / "link_to_pre"
    link.symlink_to(paths["pre"], target_is_directory=True)
    file_link = root / "link_to_ft.safetensors"
    file_link.symlink_to(paths["ft0.safetensors"])
    sharded = {"pretrained": paths["pre"], "finetuned": finetuned(paths)}
    via_link = {"pretrained": link, "finetuned": [file_link, *finetuned(paths)[1:]]}
    shard = sorted(paths["pre"].glob("model-*.safetensors"))[0]
    return [
        ("file equal", sharded, paths["ft1.safetensors"]),
        ("file inside", sharded, paths["ft1.safetensors"] / "sub"),
        ("file contained", sharded, root / "inputs"),
        ("sharded equal", sharded, paths["pre"]),
        ("sharded inside", sharded, paths["pre"] / "merged"),
        ("shard equal", sharded, shard),
        ("index equal", sharded, paths["pre"] / "model.safetensors.index.json"),
        ("sharded contained", sharded, root),
        ("symlink equal", via_link, link),
        ("symlink target equal", via_link, paths["pre"]),
        ("symlink target inside", via_link, paths["pre"] / "x.safetensors"),
        ("file symlink target", via_link, paths["ft0.safetensors"]),
        ("output through a symlink", sharded, link / "merged"),
    ]


def test_outputs_overlapping_an_input_fail_fast_and_write_nothing(tmp_path, models, monkeypatch):
    paths, inputs_before = models
    reads = []
    original = freqmerge_viz.io.SafetensorsState._load
    monkeypatch.setattr(freqmerge_viz.io.SafetensorsState, "_load",
                        lambda self, key: reads.append(key) or original(self, key))
    for label, given, out in overlap_cases(tmp_path, paths):
        listing = sorted(p.name for p in tmp_path.rglob("*"))
        with pytest.raises(OutputError) as info:
            merge_to_disk("task_arithmetic", given["pretrained"], given["finetuned"], out)
        message = str(info.value)
        assert str(out) in message and "the input" in message, label
        assert any(word in message for word in (" is the input", " contains the input", " lies inside the input",
                                                "same file as the input")), (label, message)
        assert reads == [], label
        assert sorted(p.name for p in tmp_path.rglob("*")) == listing, label
    assert tree_digest(tmp_path / "inputs") == inputs_before


def test_save_state_refuses_to_write_over_what_it_reads(tmp_path, models):
    paths, inputs_before = models
    state = load_state(paths["pre"])
    for out in (paths["pre"], paths["pre"] / "copy", tmp_path / "inputs"):
        with pytest.raises(OutputError, match="input"):
            save_state(state, out)
    from freqmerge_viz.methods import merge
    merged = merge("task_arithmetic", paths["pre"], finetuned(paths))
    with pytest.raises(OutputError, match="ft2.safetensors"):
        save_state(merged, paths["ft2.safetensors"])
    with pytest.raises(OutputError, match="protected"):
        save_state({"a": torch.ones(2)}, tmp_path / "protected" / "x.safetensors", protect=[tmp_path / "protected"])
    assert tree_digest(tmp_path / "inputs") == inputs_before


def test_cli_refuses_the_pretrained_folder_as_output(tmp_path, models, capsys):
    paths, inputs_before = models
    status = main(["merge", "--method", "task_arithmetic", "--pretrained", str(paths["pre"]),
                   "--finetuned", *map(str, finetuned(paths)), "--out", str(paths["pre"])])
    assert status == 2
    assert "is the input" in capsys.readouterr().err
    assert tree_digest(tmp_path / "inputs") == inputs_before


def test_figures_report_and_exports_refuse_their_inputs(tmp_path, models):
    from freqmerge_viz.figures import write_all
    from freqmerge_viz.report import ReportInputs, run_report

    paths, _ = models

    from freqmerge_viz.study import FunctionalStudy

    state = freqmerge_viz.io.load_state(paths["pre"])
    study = FunctionalStudy(state, {"t": state}, {}, lambda params, inputs, task: inputs, name="on-disk")
    with pytest.raises(OutputError, match="figures folder lies inside the input"):
        write_all(study, paths["pre"] / "figures")
    with pytest.raises(OutputError, match="report folder is the input"):
        run_report(ReportInputs(paths["pre"], finetuned(paths)), paths["ft0.safetensors"])
    assert not (paths["pre"] / "figures").exists()


# ---------------------------------------------------------------------------- failures before work
def test_foreign_files_in_the_output_folder_are_never_deleted(tmp_path, models):
    paths, _ = models
    out = tmp_path / "results"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match=r"holds files this toolkit did not write \(notes.txt\)"):
        merge_to_disk("task_arithmetic", paths["pre"], finetuned(paths), out)
    assert os.listdir(out) == ["notes.txt"]


def test_unwritable_or_impossible_outputs_fail_before_any_tensor_is_read(tmp_path, models, monkeypatch):
    paths, _ = models
    reads = []
    original = freqmerge_viz.io.SafetensorsState._load
    monkeypatch.setattr(freqmerge_viz.io.SafetensorsState, "_load",
                        lambda self, key: reads.append(key) or original(self, key))
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    for out in (blocker / "merged", blocker / "merged.safetensors", blocker):
        with pytest.raises(OutputError) as info:
            merge_to_disk("task_arithmetic", paths["pre"], finetuned(paths), out)
        assert str(blocker) in str(info.value)
    with monkeypatch.context() as patch:
        patch.setattr(outputs.shutil, "disk_usage", lambda path: type("U", (), {"free": 1000})())
        # 12 keys of 24 x 20 float32 = 23 040 bytes
        with pytest.raises(OutputError, match=r"full: not enough free disk space: the output needs about "
                                              r"23.0 kB and .* has 1.0 kB free"):
            merge_to_disk("task_arithmetic", paths["pre"], finetuned(paths), tmp_path / "full")
    with pytest.raises(ParameterError, match="cutoff"):
        merge_to_disk("fr", paths["pre"], finetuned(paths), tmp_path / "bad", parameters={"cutoff": 7.0})
    assert reads == []
    assert sorted(os.listdir(tmp_path)) == ["a_file", "inputs"]


@pytest.mark.skipif(os.geteuid() != 0 or subprocess.run(["which", "chattr"], capture_output=True).returncode,
                    reason="an immutable folder needs root and chattr")
def test_immutable_output_folder_is_reported_before_the_merge(tmp_path, models):
    paths, _ = models
    out = tmp_path / "frozen"
    merge_to_disk("task_arithmetic", paths["pre"], finetuned(paths), out)
    if subprocess.run(["chattr", "+i", str(out)], capture_output=True).returncode:
        pytest.skip("this file system does not support chattr +i")
    try:
        with pytest.raises(OutputError, match="not writable|Operation not permitted"):
            merge_to_disk("fr", paths["pre"], finetuned(paths), out)
    finally:
        subprocess.run(["chattr", "-i", str(out)], check=True)
    assert temporaries(tmp_path) == []


@pytest.mark.parametrize("value, words", [("!!python/object/apply:os.system ['true']", "not valid YAML"),
                                          ("[1, 2", "not valid YAML"), ("{a: [}", "not valid YAML")])
def test_bad_param_values_are_clear_errors(tmp_path, models, capsys, value, words):
    paths, _ = models
    status = main(["merge", "--method", "task_arithmetic", "--pretrained", str(paths["pre"]),
                   "--finetuned", *map(str, finetuned(paths)), "--out", str(tmp_path / "m"), "--param",
                   f"scaling={value}"])
    err = capsys.readouterr().err
    assert status == 2 and words in err and "Traceback" not in err
    assert not (tmp_path / "m").exists()


# ---------------------------------------------------------------------------- single file + provenance
def test_single_file_output_works_end_to_end_with_its_record_beside_it(tmp_path, models, capsys):
    paths, inputs_before = models
    out = tmp_path / "merged.safetensors"
    status = main(["merge", "--method", "fr", "--pretrained", str(paths["pre"]),
                   "--finetuned", *map(str, finetuned(paths)), "--out", str(out)])
    assert status == 0, capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["inputs", "merged.merge.json", "merged.safetensors"]
    record = json.loads((tmp_path / "merged.merge.json").read_text())
    assert record["outputs"] == [{"path": "merged.safetensors", "bytes": out.stat().st_size,
                                  "sha256": hashlib.sha256(out.read_bytes()).hexdigest()}]
    from freqmerge_viz.methods import merge
    expected = merge("fr", paths["pre"], finetuned(paths))
    merged = load_state(out)
    assert all(torch.equal(merged[k], expected[k]) for k in expected)
    assert json.loads(merged.metadata["freqmerge_viz.parameters"]) == json.loads(
        json.dumps(record["parameters"], sort_keys=True, default=str))
    assert tree_digest(tmp_path / "inputs") == inputs_before


def test_record_holds_input_hashes_version_parameters_and_outputs(tmp_path, models):
    paths, inputs_before = models
    out = tmp_path / "m"
    record = merge_to_disk("ties", paths["pre"], finetuned(paths), out, parameters={"density": 0.3},
                           max_shard_size="4kB")
    import freqmerge_viz
    assert record["freqmerge_viz_version"] == freqmerge_viz.__version__
    assert record["method"] == "ties" and record["parameters"]["density"] == 0.3
    pre = record["inputs"]["pretrained"]
    assert {f["path"] for f in pre["files"]} == set(tree_digest(paths["pre"]))
    for entry in pre["files"]:
        assert entry["sha256"] == inputs_before[f"pre/{entry['path']}"]
    assert [f["sha256"] for f in record["inputs"]["finetuned"]] == [inputs_before[n] for n in FT_NAMES]
    on_disk = tree_digest(out)
    assert {o["path"]: o["sha256"] for o in record["outputs"]} == {k: v for k, v in on_disk.items()
                                                                   if k != "merge.json"}


def test_verify_reports_changed_and_missing_files(tmp_path, models, capsys):
    paths, _ = models
    out = tmp_path / "m"
    merge_to_disk("task_arithmetic", paths["pre"], finetuned(paths), out, max_shard_size="4kB")
    assert main(["verify", str(out)]) == 0
    assert "files match the record" in capsys.readouterr().out
    shard = sorted(out.glob("model-*.safetensors"))[1]
    data = bytearray(shard.read_bytes())
    data[-1] ^= 1
    shard.write_bytes(bytes(data))
    paths["ft2.safetensors"].unlink()
    assert main(["verify", str(out), "--json"]) == 1
    rows = json.loads(capsys.readouterr().out)
    status = {(r["role"], Path(r["path"]).name): r["status"] for r in rows}
    assert status[("output", shard.name)] == "changed"
    assert status[("finetuned[2]", "ft2.safetensors")] == "missing"
    assert sum(s == "ok" for s in status.values()) == len(rows) - 2


def test_verify_on_a_missing_folder_says_what_is_missing(tmp_path, capsys):
    missing = tmp_path / "no_such_folder"
    with pytest.raises(FreqMergeError, match=r"no merge record at .*no_such_folder.*does not exist") as caught:
        verify_merge(missing)
    assert "cannot write" not in str(caught.value)
    assert main(["verify", str(missing)]) == 2
    assert "no merge record" in capsys.readouterr().err


def test_routed_merge_output_is_replaced_whole(tmp_path, models):
    paths, inputs_before = models
    out = tmp_path / "routed"
    merge_to_disk("emr", paths["pre"], finetuned(paths), out)
    first = sorted(os.listdir(out))
    merge_to_disk("twin", paths["pre"], finetuned(paths), out, parameters={"rank": 2})
    assert sorted(os.listdir(out)) == first
    assert json.loads((out / "merge.json").read_text())["method"] == "twin"
    assert all(row["status"] == "ok" for row in verify_merge(out))
    with pytest.raises(ParameterError, match="one checkpoint per task"):
        merge_to_disk("emr", paths["pre"], finetuned(paths), tmp_path / "x.safetensors")
    assert tree_digest(tmp_path / "inputs") == inputs_before


def test_symlink_loop_is_named_as_such(tmp_path):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(FreqMergeError, match="symlink loop"):
        load_state(loop)


def _task_vectors_layout(root: Path, pre: Path) -> list[Path]:
    """Fine-tuned models laid out as task_vectors does: every file ``<task>/finetuned.safetensors``."""
    base = load_state(pre)
    g = torch.Generator().manual_seed(5)
    files = []
    for task in ("cars", "dtd", "eurosat"):
        (root / task).mkdir(parents=True)
        save_state({k: base[k] + 0.1 * torch.randn(base.shape_of(k), generator=g) for k in base},
                   root / task / "finetuned.safetensors")
        files.append(root / task / "finetuned.safetensors")
    return files


def test_colliding_file_names_take_their_folders_names_and_names_override(tmp_path, models):
    paths, _ = models
    files = _task_vectors_layout(tmp_path / "tv", paths["pre"])
    routed = fmv.routed_merge("emr", paths["pre"], files)
    assert routed.task_names == ["cars", "dtd", "eurosat"]
    assert fmv.routed_merge("free", paths["pre"], files, density=0.1).task_names == ["cars", "dtd", "eurosat"]
    assert main(["merge", "--method", "emr", "--pretrained", str(paths["pre"]), "--finetuned", *map(str, files),
                 "--out", str(tmp_path / "routed")]) == 0
    assert sorted(p.name for p in (tmp_path / "routed").iterdir() if p.is_dir()) == ["cars", "dtd", "eurosat"]
    assert json.loads((tmp_path / "routed" / "merge.json").read_text())["names"] == ["cars", "dtd", "eurosat"]
    assert main(["merge", "--method", "emr", "--pretrained", str(paths["pre"]), "--finetuned", *map(str, files),
                 "--names", "a", "b", "c", "--out", str(tmp_path / "named")]) == 0
    assert sorted(p.name for p in (tmp_path / "named").iterdir() if p.is_dir()) == ["a", "b", "c"]
    assert main(["merge", "--method", "free", "--pretrained", str(paths["pre"]), "--finetuned", *map(str, files),
                 "--param", "density=0.1", "--out", str(tmp_path / "free")]) == 0
    assert sorted(p.name for p in (tmp_path / "free").iterdir() if p.is_dir()) == ["cars", "dtd", "eurosat"]
    assert main(["merge", "--method", "free", "--pretrained", str(paths["pre"]), "--finetuned", *map(str, files),
                 "--param", "density=0.1", "--names", "a", "b", "c", "--out", str(tmp_path / "free_named")]) == 0
    assert sorted(p.name for p in (tmp_path / "free_named").iterdir() if p.is_dir()) == ["a", "b", "c"]
    assert main(["merge", "--method", "emr", "--pretrained", str(paths["pre"]), "--finetuned", *map(str, files),
                 "--names", "a", "b", "--out", str(tmp_path / "short")]) == 2
    distinct = fmv.routed_merge("emr", paths["pre"], finetuned(paths))
    assert distinct.task_names == ["ft0", "ft1", "ft2"]   # distinct file names stay as they are


def test_task_names_from_per_task_folders(tmp_path):
    from freqmerge_viz.taskvector import names_from_sources

    hf = []
    for task in ("cars", "dtd"):
        folder = tmp_path / "hf" / task / "model"
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}")
        hf.append(folder)
    assert names_from_sources(hf) == ["cars", "dtd"]               # FusionBench-like <task>/model/
    files = []
    for task in ("cars", "dtd"):
        (tmp_path / "tv" / task).mkdir(parents=True)
        files.append(tmp_path / "tv" / task / "finetuned.pt")
        files[-1].write_bytes(b"")
    assert names_from_sources(files) == ["cars", "dtd"]            # task_vectors' <task>/finetuned.pt
    assert names_from_sources([tmp_path / "a.pt", tmp_path / "b.pt"]) is None   # no collision
    same = [tmp_path / "x" / "same" / "model", tmp_path / "y" / "same" / "model"]
    assert names_from_sources(same) == ["x", "y"]                  # two levels up
    assert names_from_sources([tmp_path / "model", tmp_path / "model"]) is None  # nothing tells them apart
