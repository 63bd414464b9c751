"""The ``freqmerge-viz`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from .errors import FreqMergeError, check_positive_int, counted

PICKLED_HELP = ("read .pt/.pth/.bin files that hold a pickled whole module (torch.save(model), as task_vectors "
                "releases them) without running their code: weights only, named as model.state_dict() names them")


def _add_pickled(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pickled-modules", action="store_true", help=PICKLED_HELP)


def _add_progress(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--progress", action="store_true",
                        help="show a progress bar on stderr even when it is not a terminal (one is shown on a "
                             "terminal anyway)")


def _progress(args) -> bool | None:
    """True with --progress; otherwise None: a bar only when stderr is a terminal."""
    return True if getattr(args, "progress", False) else None


HTML_JS_HELP = ("where the HTML figures get plotly.js: 'shared' (default) writes one plotly.min.js into the output "
                "folder that every page loads by a relative path (works offline when the folder is opened or copied "
                "as a whole), 'inline' puts it into every page (about 4.8 MB each, self-contained), 'cdn' loads it "
                "from cdn.plot.ly (small pages that need internet access when viewed)")


def _add_html_js(parser: argparse.ArgumentParser) -> None:
    # the choices of freqmerge_viz.plots.core.HTML_JS, not imported here: --help imports no numpy
    parser.add_argument("--html-js", choices=["shared", "inline", "cdn"], default="shared", help=HTML_JS_HELP)


def _add_inputs(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument("--pretrained", required=required,
                        help="pretrained checkpoint: .safetensors, .pt/.bin, sharded or Hugging Face directory")
    parser.add_argument("--finetuned", nargs="+", required=required, metavar="CKPT",
                        help="fine-tuned checkpoints of the same architecture")
    parser.add_argument("--names", nargs="+", help="task names, one per fine-tuned checkpoint")
    parser.add_argument("--include", nargs="+", metavar="GLOB", help="analyse only keys matching a glob")
    parser.add_argument("--exclude", nargs="+", metavar="GLOB", help="skip keys matching a glob")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: cuda if present)")
    _add_pickled(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="freqmerge-viz",
                                     description="Model merging in the frequency domain.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    report = sub.add_parser("report", help="spectra + interference report (tables, figures, JSON)",
                            description="Write a spectra and interference report to --out. Without "
                                        "--pretrained/--finetuned it runs on the bundled demo zoo and adds "
                                        "the merge methods' accuracy table.")
    _add_inputs(report, required=False)
    report.add_argument("--out", default="out", help="output directory (default: out)")
    report.add_argument("--cutoffs", nargs="+", type=float, default=None, metavar="RHO",
                        help="normalised high-pass cutoffs in [0, 1] (default: 0.05 0.1 0.2 0.3)")
    report.add_argument("--zoo", default=None, help="zoo directory (default: data/zoo)")
    report.add_argument("--no-eval", action="store_true", help="zoo: skip the merge accuracy table")
    report.add_argument("--limit", type=int, default=None,
                        help="zoo: evaluate only the first N images of every split (a quick look)")
    report.add_argument("--synthetic", action="store_true",
                        help="analyse the generated synthetic set instead of the zoo")
    report.add_argument("--tasks", type=int, default=4, help="synthetic set: number of tasks")
    report.add_argument("--seed", type=int, default=0, help="synthetic set: seed")
    report.add_argument("--formats", nargs="+", default=["png", "svg"], choices=["png", "svg", "pdf"],
                        help="static figure formats (default: png svg)")
    report.add_argument("--no-html", action="store_true", help="skip the plotly HTML figure")
    _add_html_js(report)
    _add_progress(report)

    figures = sub.add_parser("figures", help="every analysis of the paper on a study (default: the demo zoo): "
                                             "PNG, SVG, HTML and CSV",
                             description="Write each analysis figure (spectra, Table 1, interference vs "
                                         "performance, generalisation, loss landscape, cutoff sweep, expert "
                                         "sparsity, router robustness, costs, ...) for a study into --out.")
    figures.add_argument("--out", default="out", help="output directory (default: out)")
    figures.add_argument("--study", default=None, metavar="STUDY",
                         help="a study file (YAML, see README 'Your models, every figure'), a zoo folder, or "
                              "'zoo' (default: the bundled demo zoo)")
    figures.add_argument("--zoo", default=None, help="zoo directory (the same as --study DIR)")
    figures.add_argument("--limit", type=int, default=None,
                         help="at most N samples per task and split for every topic (overrides the study's limit)")
    figures.add_argument("--device", default=None, help="evaluate on this device, e.g. cuda (default: CUDA when "
                                                        "present, else CPU)")
    figures.add_argument("--only", nargs="+", default=None, metavar="TOPIC", help="only these topics")
    figures.add_argument("--quick", action="store_true", help="coarse grids and few samples (a smoke test)")
    figures.add_argument("--formats", nargs="+", default=["png", "svg"], choices=["png", "svg", "pdf"],
                         help="static figure formats besides the HTML (default: png svg)")
    _add_html_js(figures)
    figures.add_argument("--progress", action="store_true",
                         help="show progress bars over each topic's loops (methods, cutoff points, task pairs, ...) "
                              "on stderr even when it is not a terminal (they are shown on a terminal anyway)")

    findings = sub.add_parser("findings", help="the README's findings, written from the CSV tables of a figures run")
    findings.add_argument("out", help="the output folder of `freqmerge-viz figures`")
    findings.add_argument("--json", default=None, help="also write every number quoted to this JSON file")
    findings.add_argument("--readme", default=None,
                          help="write the findings between the <!-- findings:start/end --> markers of this file "
                               "(otherwise they are printed)")
    synth = sub.add_parser("synth", help="write the synthetic model set as safetensors files",
                           description="Generate the synthetic pretrained + fine-tuned set into --out.")
    synth.add_argument("--out", required=True, help="output directory")
    synth.add_argument("--tasks", type=int, default=4, help="number of fine-tuned models (default: 4)")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")

    inspect = sub.add_parser("inspect", help="list a checkpoint's keys, shapes, dtypes and key scopes (reads no "
                                             "tensor)",
                             description="Print the architecture recognised from the key names, then key, shape "
                                         "and dtype of every tensor and which key scopes (filter_scope, "
                                         "merge_scope, ...: freqmerge_viz.scopes) select it.")
    inspect.add_argument("checkpoint", help=".safetensors, .pt/.bin, sharded or Hugging Face directory")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of a table")
    inspect.add_argument("--scope", default=None, metavar="NAME",
                         help="list only the keys this scope selects (a name such as attention, layer_matrices, "
                              "official, or a '+'-union such as layer_matrices+embeddings)")
    _add_pickled(inspect)

    convert = sub.add_parser("convert", help="write a checkpoint as safetensors (e.g. a pickled module's weights)",
                             description="Read a checkpoint (with --pickled-modules also a pickled whole module, "
                                         "without running its code) and write its tensors as safetensors: OUT "
                                         "ending in .safetensors is one file, anything else a folder. OUT may not "
                                         "be or overlap IN; it is written atomically.")
    convert.add_argument("input", metavar="IN", help=".safetensors, .pt/.bin, sharded or Hugging Face directory")
    convert.add_argument("output", metavar="OUT", help="X.safetensors, or a folder (model.safetensors or shards)")
    _add_pickled(convert)
    convert.add_argument("--dtype", help="cast floating tensors to this dtype (float32, float16, bfloat16)")
    convert.add_argument("--strip-prefix", metavar="PREFIX",
                         help="remove PREFIX from the keys that start with it (e.g. 'model.' for task_vectors)")
    convert.add_argument("--max-shard-size", help="folder output: shard past this size, e.g. 2GB")

    interference = sub.add_parser("interference", help="amplitude variance of task vectors, as JSON",
                                  description="Amplitude variance across tasks (the paper's Table 1 "
                                              "measure), unfiltered and high-pass filtered.")
    _add_inputs(interference, required=True)
    interference.add_argument("--cutoff", type=float, default=0.1,
                              help="high-pass cutoff (normalised radius for the paper convention, "
                                   "filter_ratio for official)")
    interference.add_argument("--kind", default="ideal", choices=["ideal", "butterworth", "gaussian"],
                              help="filter shape (default: ideal)")
    interference.add_argument("--units", default="normalized", choices=["normalized", "bins"],
                              help="cutoff units for the paper convention: normalised radius in [0, 1] "
                                   "(default) or DFT bins")
    interference.add_argument("--convention", default="paper", choices=["paper", "official"],
                              help="paper: centred spectrum, radius from DC; official: the authors' code")
    _add_progress(interference)
    merge = sub.add_parser("merge", help="merge fine-tuned models with a registered method",
                           description="Merge with any registered method and write a safetensors "
                                       "checkpoint plus merge.json (method, parameters, input sha256). "
                                       "Settings may come from a YAML --config; flags override it. "
                                       "Methods and parameters: freqmerge-viz methods.")
    merge.add_argument("--method", help="registered method name, or a routed merge (free, emr, twin: "
                       "one checkpoint per task in OUT/<task>/)")
    merge.add_argument("--pretrained", help="pretrained checkpoint")
    merge.add_argument("--finetuned", nargs="+", metavar="CKPT", help="fine-tuned checkpoints")
    merge.add_argument("--names", nargs="+", metavar="NAME", help="task names, one per fine-tuned checkpoint "
                       "(default: file names, or folder names when the file names collide)")
    merge.add_argument("--out", required=True,
                       help="output folder (model.safetensors or shards + merge.json; replaced whole, never "
                            "partly), or X.safetensors for one file with its record in X.merge.json")
    merge.add_argument("--config", help="YAML file: method, preset, parameters, pretrained, finetuned, "
                                        "include, exclude, max_shard_size, dtype")
    merge.add_argument("--preset", help="method preset (e.g. paper, official)")
    merge.add_argument("--param", nargs="+", default=[], metavar="NAME=VALUE",
                       help="method parameter, VALUE parsed as YAML (e.g. cutoff=0.2 weights=[1,2])")
    merge.add_argument("--include", nargs="+", metavar="GLOB", help="merge only keys matching a glob; "
                       "other keys keep their pretrained values")
    merge.add_argument("--exclude", nargs="+", metavar="GLOB", help="keep keys matching a glob at their "
                       "pretrained values")
    merge.add_argument("--max-shard-size", help="e.g. 2GB; larger outputs are sharded")
    merge.add_argument("--dtype", help="output dtype of merged tensors (default: the pretrained dtype)")
    merge.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: cuda if present)")
    _add_pickled(merge)
    _add_progress(merge)

    zoo = sub.add_parser("zoo", help="the bundled demo zoo: build it, evaluate every method on it",
                         description="The demo zoo in data/zoo: eight procedural tasks, a small ViT.")
    zoo_sub = zoo.add_subparsers(dest="zoo_command", required=True, metavar="ZOO_COMMAND")
    zoo_build = zoo_sub.add_parser("build", help="train the zoo again, deterministically (15-30 min on 2 cores)")
    zoo_build.add_argument("--out", default=None, help="output directory (default: data/zoo)")
    zoo_build.add_argument("--quick", action="store_true", help="a tiny configuration, for smoke tests")
    zoo_show = zoo_sub.add_parser("show", help="the zoo's tasks and the accuracies in its manifest")
    zoo_show.add_argument("--path", default=None, help="zoo directory (default: data/zoo)")
    zoo_eval = zoo_sub.add_parser("eval", help="every merge method on the zoo: settings chosen on validation, "
                                               "accuracy on test")
    zoo_eval.add_argument("--path", default=None, help="zoo directory (default: data/zoo)")
    zoo_eval.add_argument("--json", action="store_true", help="print JSON instead of a Markdown table")
    zoo_eval.add_argument("--out", default=None, help="also write the JSON here")
    zoo_eval.add_argument("--methods", nargs="+", default=None, metavar="NAME",
                          help="only these rows (individual and pretrained_probe always come)")
    zoo_eval.add_argument("--limit", type=int, default=None,
                          help="evaluate only the first N images of every split (a quick look)")

    evaluate = sub.add_parser("eval", help="every merge method on a study: settings chosen on validation, "
                                           "accuracy on test",
                              description="The method comparison of `zoo eval` on any study; prints an estimate "
                                          "of the forward passes and minutes first.")
    evaluate.add_argument("--study", default=None, metavar="STUDY",
                          help="a study file (YAML), a zoo folder, or 'zoo' (default: the bundled demo zoo)")
    evaluate.add_argument("--json", action="store_true", help="print JSON instead of a Markdown table")
    evaluate.add_argument("--out", default=None, help="also write the JSON here")
    evaluate.add_argument("--methods", nargs="+", default=None, metavar="NAME",
                          help="only these rows (individual and the no-merge row always come)")
    evaluate.add_argument("--limit", type=int, default=None,
                          help="at most N samples per task and split (default: the study's limit)")
    evaluate.add_argument("--device", default=None, help="evaluate on this device, e.g. cuda (default: CUDA when "
                                                         "present, else CPU)")

    study = sub.add_parser("study", help="check and describe a study file, or list the study kinds and their fields")
    study_sub = study.add_subparsers(dest="study_command", required=True, metavar="STUDY_COMMAND")
    study_show = study_sub.add_parser("show", help="open a study file (every check, no model run) and describe it")
    study_show.add_argument("study", help="a study file (YAML), a zoo folder, or 'zoo'")
    study_sub.add_parser("kinds", help="every study kind with its fields (Markdown)")

    serve = sub.add_parser("serve", help="the three explorers of a study as one web app (Voila), on 127.0.0.1 "
                                         "behind a token",
                           description="Serve the dashboard (cutoff explorer, expert explorer, landscape viewer) "
                                       "of a study with Voila: no code on the page, bound to 127.0.0.1 unless "
                                       "--ip says otherwise, protected by a token (printed in the URL). Needs "
                                       "the dashboard extra (pip install 'freqmerge-viz[dashboard]').")
    serve.add_argument("--study", default=None, metavar="STUDY",
                       help="a study file (YAML), a zoo folder, or 'zoo' (default: the bundled demo zoo)")
    serve.add_argument("--port", type=int, default=8866, help="port to listen on (default: 8866)")
    serve.add_argument("--ip", default="127.0.0.1",
                       help="address to listen on (default: 127.0.0.1, this machine only; another address "
                            "lets other machines reach it, with a warning)")
    serve.add_argument("--token", default=None,
                       help="the token the URL must carry (default: a fresh random one; one given here is "
                            "visible to the machine's other users in the process list; write --token=VALUE "
                            "when it starts with '-')")
    serve.add_argument("--workdir", default=None,
                       help="folder for the generated notebook and kernel specification, where the page's "
                            "exports go (default: a fresh temporary folder, removed afterwards unless it holds "
                            "exports; never inside the study's inputs)")

    verify = sub.add_parser("verify", help="check a merged output against its merge.json (sha256 of every file)",
                            description="Recompute the sha256 of every output file and every input file "
                                        "recorded in a merge record and compare. Exit status 0 when all match, "
                                        "1 when a file changed or is missing.")
    verify.add_argument("path", help="output folder, X.safetensors output, or the merge.json itself")
    verify.add_argument("--json", action="store_true", help="print JSON rows instead of a table")

    methods = sub.add_parser("methods", help="list merge methods with their parameters",
                             description="Every registered merge method, its parameters and presets.")
    methods.add_argument("name", nargs="?", help="show one method only")

    bench = sub.add_parser("bench", help="run a benchmark and print its measurements as JSON",
                           description="Run freqmerge_viz.benchmarks.NAME (filter, stream, ...); "
                                       "options after NAME go to the benchmark (NAME --help lists them).")
    bench.add_argument("name", help="benchmark name")
    bench.add_argument("args", nargs=argparse.REMAINDER, help="the benchmark's own options")
    return parser


def _cmd_merge(args) -> None:
    from .merge_job import load_config, merge_to_disk, parse_param, record_path

    config = load_config(args.config) if args.config else {}
    params = {**(config.get("parameters") or {}), **dict(parse_param(pair) for pair in args.param)}
    settings = {name: getattr(args, name) if getattr(args, name) is not None else config.get(name)
                for name in ("method", "pretrained", "finetuned", "preset", "include", "exclude",
                             "max_shard_size", "dtype")}
    for required in ("method", "pretrained", "finetuned"):
        if not settings[required]:
            raise FreqMergeError(f"merge needs --{required} (or '{required}:' in --config)")
    record = merge_to_disk(settings["method"], settings["pretrained"], settings["finetuned"], args.out,
                           parameters=params, preset=settings["preset"], include=settings["include"],
                           exclude=settings["exclude"], max_shard_size=settings["max_shard_size"],
                           dtype=settings["dtype"], device=args.device,
                           pickled_modules=args.pickled_modules or bool(config.get("pickled_modules")),
                           progress=_progress(args), names=args.names or config.get("names"))
    if Path(args.out).suffix.lower() == ".safetensors":
        print(f"merged with {record['method']} into {args.out} (record: {record_path(args.out)})")
    else:
        print(f"merged with {record['method']} into {args.out}/ ({', '.join(record['files'])}, merge.json)")


def _cmd_verify(args) -> int:
    from .merge_job import verify_merge

    rows = verify_merge(args.path)
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        for row in rows:
            print(f"{row['status']:<10} {row['role']:<14} {row['path']}")
    bad = [row for row in rows if row["status"] != "ok"]
    if not args.json:
        print(f"{len(rows) - len(bad)} of {len(rows)} files match the record" + ("" if not bad else
              f"; {len(bad)} do not ({', '.join(sorted({r['status'] for r in bad}))})"))
    return 1 if bad else 0


def _cmd_methods(args) -> None:
    from .methods import get_method, list_methods

    for name in [args.name] if args.name else list_methods():
        print(get_method(name).doc())
        print()


def _cmd_report(args) -> dict:
    from .backend import available_device
    from .report import DEFAULT_CUTOFFS, ReportInputs, run_report, synthetic_inputs, zoo_inputs

    if bool(args.pretrained) != bool(args.finetuned):
        raise FreqMergeError("give both --pretrained and --finetuned, or neither (the demo zoo)")
    comparison = None
    if args.pretrained:
        inputs = ReportInputs(*_open_inputs(args), args.names, args.include, args.exclude,
                              description="user checkpoints")
    elif args.synthetic:
        inputs = synthetic_inputs(Path(args.out) / "synthetic", n_tasks=args.tasks, seed=args.seed)
    else:
        inputs = zoo_inputs(args.zoo)
        if not args.no_eval:
            from . import zoo
            from .analysis.compare import compare_methods

            comparison = compare_methods(zoo.load(args.zoo), limit=args.limit,
                                         progress=lambda name: print(f"  evaluating {name} ...", file=sys.stderr))
    summary = run_report(inputs, args.out, cutoffs=args.cutoffs or DEFAULT_CUTOFFS,
                         device=available_device(args.device), formats=args.formats, html=not args.no_html,
                         comparison=comparison, progress=_progress(args), html_js=args.html_js)
    print(f"report written to {args.out}/ (report.md, report.json, CSV tables, figures)")
    for row in summary["interference"]:
        print(f"  {row['setting']:<22} all bins {row['all_bins']:.4g} ({row['change_all_pct']:+.1f}%)   "
              f"kept bins {row['kept_bins']:.4g} vs {row['unfiltered_kept_bins']:.4g} "
              f"({row['change_kept_pct']:+.1f}%)")
    if comparison is not None:
        from .analysis.compare import markdown_table

        print(markdown_table(comparison))
    return summary


def _open_study(source, limit: int | None = None, device: str | None = None):
    """The study named on the command line (a file, a zoo folder, 'zoo' or None), with `limit`
    samples per task and split, evaluating on `device`, progress bars on a terminal."""
    from .backend import available_device
    from .study import as_study

    target = None if device is None else available_device(device)
    study = as_study(source)
    if limit is not None:
        study.default_limit = check_positive_int("--limit", limit)
    study.device, study.progress = target, None
    return study


def _cmd_figures(args) -> None:
    from .figures import write_all

    if args.study is not None and args.zoo is not None:
        raise FreqMergeError("give --study or --zoo, not both")
    study = _open_study(args.study if args.study is not None else args.zoo, args.limit, args.device)
    print(f"study {study.name!r} ({study.kind}): {counted(len(study.tasks), 'task')}", file=sys.stderr)
    index = write_all(study, args.out, topics=args.only, quick=args.quick, formats=args.formats,
                      progress=lambda topic: print(f"  {topic} ...", file=sys.stderr), html_js=args.html_js,
                      progress_bars=_progress(args))
    for topic, entry in index["topics"].items():
        if "not_applicable" in entry:
            print(f"{topic:<28} not applicable: {entry['not_applicable']}")
            continue
        print(f"{topic:<28} {entry['seconds']:7.1f} s  {len(entry['files'])} files")
    print(f"figures written to {args.out}/ (index.json lists every file)")


def _cmd_eval(args) -> None:
    from .analysis.compare import CANDIDATES, compare_methods, estimate, markdown_table, with_needs
    from .outputs import prepare_file_output, source_paths, write_text_atomically

    study = _open_study(args.study, args.limit, args.device)
    rows = [m for m in args.methods or [] if m not in ("individual", "pretrained_probe", "pretrained")]
    candidates = with_needs(rows) if args.methods else CANDIDATES
    if args.out:
        prepare_file_output(args.out, protect=source_paths([study]), what="eval output")
    limit = getattr(study, "default_limit", None)
    print(estimate(study, candidates, limit=limit), file=sys.stderr)
    progress = None if args.json else (lambda name: print(f"  evaluating {name} ...", file=sys.stderr))
    result = compare_methods(study, candidates, limit=limit, progress=progress)
    text = json.dumps(result, indent=2)
    if args.out:
        write_text_atomically(Path(args.out), text + "\n")
    print(text if args.json else markdown_table(result))


def _cmd_study(args) -> None:
    from .study import kind_table

    if args.study_command == "kinds":
        print(kind_table())
        return
    study = _open_study(args.study)
    print(study.describe())


def _cmd_serve(args) -> int:
    from .serve import serve

    return serve(args.study, port=args.port, ip=args.ip, token=args.token, workdir=args.workdir,
                 say=lambda text: print(text, flush=True))


def _cmd_synth(args) -> None:
    from .synthetic import make_model_set

    paths = make_model_set(n_tasks=args.tasks, seed=args.seed).save(args.out)
    for name, path in paths.items():
        print(f"{name}\t{path}")


def _open_inputs(args) -> tuple:
    """--pretrained opened as a state, --finetuned as given (opened too with --pickled-modules).

    Without --include, a checkpoint holding both CLIP towers is analysed on its image tower
    only (the text tower of an image fine-tune is unchanged: zero task vectors that would dilute
    every mean); a note on stderr says so once."""
    from .io import load_state
    from .keys import select_keys
    from .scopes import image_tower

    pretrained = load_state(args.pretrained, pickled_modules=args.pickled_modules)
    finetuned = ([load_state(path, pickled_modules=True) for path in args.finetuned] if args.pickled_modules
                 else args.finetuned)
    tower = image_tower(pretrained) if args.include is None else None
    if tower:
        args.include = list(tower)
        chosen = len(select_keys(pretrained, tower))
        print(f"note: {args.pretrained} holds both CLIP towers; analysing the image tower only "
              f"({', '.join(tower)}: {chosen} of {len(pretrained)} keys); --include '*' analyses every key",
              file=sys.stderr)
    return pretrained, finetuned


def _cmd_inspect(args) -> None:
    from .io import load_state
    from .scopes import INSPECT_SCOPES, detect_architecture, scope_parts, selects

    if args.scope is not None:
        scope_parts(args.scope)
    state = load_state(args.checkpoint, pickled_modules=args.pickled_modules)
    arch = detect_architecture(state)
    rows = []
    for k in state:
        shape = list(state.shape_of(k))
        if args.scope is not None and not selects(args.scope, k, len(shape)):
            continue
        rows.append({"key": k, "shape": shape, "dtype": str(state.dtype_of(k)).replace("torch.", ""),
                     "file": state.source_of(k), "scopes": [s for s in INSPECT_SCOPES if selects(s, k, len(shape))]})
    if args.json:
        print(json.dumps({"architecture": arch.name if arch else None, "label": arch.label if arch else None,
                          "transposed": bool(arch and arch.transposed), "scope": args.scope,
                          "scopes": list(INSPECT_SCOPES), "keys": rows}, indent=1))
        return
    print(f"# architecture: {arch.label if arch else 'not recognised'}"
          + ("; matrices stored in × out (transposed)" if arch and arch.transposed else "")
          + (f"; keys selected by {args.scope}: {len(rows)}" if args.scope is not None else ""))
    print("\t".join(("key", "shape", "dtype") + INSPECT_SCOPES))
    for row in rows:
        marks = ["x" if s in row["scopes"] else "." for s in INSPECT_SCOPES]
        print("\t".join([row["key"], "×".join(map(str, row["shape"])) or "scalar", row["dtype"], *marks]))


def _cmd_interference(args) -> None:
    from .analysis import FilterSetting, interference_table
    from .backend import available_device
    from .spectral import FilterSpec
    from .taskvector import TaskVector

    if args.names and len(args.names) != len(args.finetuned):
        raise FreqMergeError(f"{len(args.names)} names for {len(args.finetuned)} fine-tuned checkpoints")
    spec = FilterSpec(args.cutoff, kind=args.kind, units=args.units, convention=args.convention)
    device = available_device(args.device)
    pretrained, finetuned = _open_inputs(args)
    vectors = [TaskVector.from_states(pretrained, ft, include=args.include, exclude=args.exclude,
                                      name=args.names[i] if args.names else None, device=device)
               for i, ft in enumerate(finetuned)]
    table = interference_table(vectors, [FilterSetting("filtered", spec)], device=device, progress=_progress(args))
    print(json.dumps({"tasks": [tv.name for tv in vectors], "filter": repr(spec), "device": str(device),
                      "rows": table.to_dict(orient="records")}, indent=2, ensure_ascii=False))


def _cmd_convert(args) -> None:
    from .io import load_state, save_state, strip_prefix
    from .merge_job import _torch_dtype as torch_dtype

    state = load_state(args.input, pickled_modules=args.pickled_modules)
    if args.strip_prefix:
        state = strip_prefix(state, args.strip_prefix)
    written = save_state(state, args.output, dtype=torch_dtype(args.dtype), max_shard_size=args.max_shard_size)
    print(f"{len(state)} tensors from {args.input} written to {', '.join(map(str, written))}")


def _cmd_zoo(args) -> None:
    from . import zoo
    from .outputs import prepare_file_output, source_paths, write_text_atomically
    from .analysis.compare import CANDIDATES, compare_methods, markdown_table, with_needs

    if args.zoo_command == "build":
        manifest = zoo.build_zoo(args.out or zoo.DEFAULT_PATH, zoo.QUICK_CONFIG if args.quick else zoo.DEFAULT_CONFIG)
        print(json.dumps(manifest["quality"], indent=1))
        return
    if args.zoo_command == "show":
        print(zoo.describe(zoo.load(args.path)))
        return
    rows = [m for m in args.methods or [] if m not in ("individual", "pretrained_probe")]
    candidates = with_needs(rows) if args.methods else CANDIDATES
    progress = None if args.json else (lambda name: print(f"  evaluating {name} ...", file=sys.stderr))
    loaded = zoo.load(args.path)
    if args.out:
        prepare_file_output(args.out, protect=source_paths([loaded]), what="zoo eval output")
    result = compare_methods(loaded, candidates, limit=args.limit, progress=progress)
    text = json.dumps(result, indent=2)
    if args.out:
        write_text_atomically(Path(args.out), text + "\n")
    print(text if args.json else markdown_table(result))


def _cmd_findings(args) -> None:
    from .findings import extract, render, update_readme
    from .outputs import write_atomically

    numbers = extract(args.out)
    if args.json:
        text = json.dumps(numbers, indent=1, ensure_ascii=False) + "\n"
        write_atomically(Path(args.json), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    markdown = render(numbers)
    if args.readme:
        changed = update_readme(args.readme, markdown)
        print(f"{args.readme}: findings {'rewritten' if changed else 'already up to date'}", file=sys.stderr)
    else:
        print(markdown, end="")


def _cmd_bench(args) -> None:
    import importlib
    import pkgutil

    from . import benchmarks

    available = sorted(m.name for m in pkgutil.iter_modules(benchmarks.__path__) if not m.name.startswith("_"))
    if args.name not in available:
        raise FreqMergeError(f"unknown benchmark {args.name!r}; available: {', '.join(available)}")
    importlib.import_module(f"freqmerge_viz.benchmarks.{args.name}").main(args.args)


COMMANDS = {"figures": _cmd_figures, "report": _cmd_report, "synth": _cmd_synth, "inspect": _cmd_inspect,
            "interference": _cmd_interference, "merge": _cmd_merge, "methods": _cmd_methods, "zoo": _cmd_zoo,
            "bench": _cmd_bench, "verify": _cmd_verify, "convert": _cmd_convert, "eval": _cmd_eval,
            "study": _cmd_study, "findings": _cmd_findings, "serve": _cmd_serve}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for input errors the toolkit recognises)."""
    args = build_parser().parse_args(argv)
    try:
        status = COMMANDS[args.command](args)
    except FreqMergeError as exc:
        print(f"freqmerge-viz {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return status if isinstance(status, int) else 0


if __name__ == "__main__":
    sys.exit(main())
