"""The ``fusionkit`` command."""

from __future__ import annotations

import argparse
import sys

from fusionkit import __version__


def _cmd_run(args: argparse.Namespace) -> int:
    from fusionkit.pipeline import NotebookFailed, PipelineError, run

    if args.ray_address:  # the comparison's cluster (03's ray_address; else $RAY_ADDRESS, else a local Ray)
        args.param.append(f"03.ray_address={args.ray_address}")
    try:
        run_dir = run(
            args.profile,
            args.param,
            reports_dir=args.reports_dir,
            run_id=args.run_id,
            resume=args.resume,
            only=args.only.split(",") if args.only else None,
            show_progress=False if args.no_progress else None,
            stream_output=not args.quiet,
            report_mode=args.report_mode,
        )
    except PipelineError as e:
        print(f"fusionkit: error: {e}", file=sys.stderr)
        return 2
    except NotebookFailed as e:
        print(f"fusionkit: error: {e}", file=sys.stderr)
        return 1
    report = run_dir / "report.html"
    print(f"[fusionkit] run folder: {run_dir}")
    if report.exists():
        print(f"[fusionkit] report: {report}")
    return 0


def _cmd_profiles(args: argparse.Namespace) -> int:
    from fusionkit.pipeline import available_profiles, load_profile

    for name in available_profiles():
        print(f"{name:12s} {load_profile(name).get('description', '')}")
    return 0


def _cmd_fusion_list(args: argparse.Namespace) -> int:
    import fusionkit.fusion as fusion

    for name in fusion.available():
        cls = fusion.get(name)
        doc = (cls.__doc__ or "").strip().splitlines()
        hp = ", ".join(f"{k}={v!r}" for k, v in fusion.hyperparameters(name).items())
        print(f"{name:20s} {doc[0] if doc else ''}")
        if hp:
            print(f"{'':20s} hyper-parameters: {hp}")
    return 0


def _cmd_fusion_compare(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    import fusionkit.fusion as fusion
    from fusionkit import compare, grid
    from fusionkit.index import FeatureIndex
    from fusionkit.report import figures
    from fusionkit.train import TrainConfig

    try:
        methods = fusion.named(args.methods)
        for m in methods:
            fusion.get(m)
        splits, class_names = FeatureIndex.read(args.features_index).splits(target=args.target)
    except (KeyError, FileNotFoundError, ValueError) as e:
        print(f"fusionkit: error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    cfg = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        optimizer=args.optimizer,
        weight_decay=args.weight_decay,
        modality_dropout=args.modality_dropout,
        seed=args.seed,
    )
    try:
        space = json.loads(args.search_space) if args.search_space else None
        ex = grid.executor(
            args.executor, args.ray_address, max_failures=args.max_failures, storage_path=args.ray_storage
        )
    except (ValueError, ConnectionError, ImportError) as e:
        print(f"fusionkit: error: {e}", file=sys.stderr)
        return 2
    try:
        comparison = compare.run(methods, splits, cfg, len(class_names), seeds=range(args.seed, args.seed + args.seeds),
                                 hidden=args.hidden, search_trials=args.search_trials,
                                 search_metric=args.search_metric or None,
                                 search_space=space, untuned_seeds=args.untuned_seeds, executor=ex)  # fmt: skip
    except (KeyError, ValueError) as e:
        print(f"fusionkit: error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    finally:
        ex.close()
    results, summary = comparison.runs, comparison.summary
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results.to_csv(out / "comparison_runs.csv", index=False)
    summary.to_csv(out / "comparison_summary.csv", index=False)
    comparison.rankings().to_csv(out / "rankings.csv", index=False)
    written = ["comparison_runs.csv", "comparison_summary.csv", "rankings.csv", "comparison.png"]
    if comparison.tuned:
        comparison.search.trials.to_csv(out / "search_trials.csv", index=False)
        figures.plot_search(comparison.search.trials, comparison.search.metric).savefig(
            out / "search_curves.png", dpi=110, bbox_inches="tight"
        )
        written += ["search_trials.csv", "search_curves.png"]
    metric, select = compare.metrics_of(summary)
    figures.plot_comparison(results, summary, metric=metric).savefig(out / "comparison.png", dpi=110,
                                                                     bbox_inches="tight")  # fmt: skip
    extra = [f"test_{k}_mean" for k in ("mae", "r2") if f"test_{k}_mean" in summary] if metric == "test_mse" else []
    cols = [
        "method",
        f"{metric}_mean",
        f"{metric}_ci95",
        *extra,
        f"{select}_mean",
        "params",
        "train_time_s",
        "p_vs_best",
        "worse_than_best",
        "is_best",
    ]
    print(summary[cols].to_string(index=False, float_format=lambda x: f"{x:.4f}"))
    for m, err in comparison.failed.items():
        print(f"failed: {m}: {err}", file=sys.stderr)
    print(f"written to {out}/: {', '.join(written)}")
    return 0


def _cmd_data_interactions(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from fusionkit import interactions
    from fusionkit.index import FeatureIndex
    from fusionkit.train import TrainConfig

    run = Path(args.run)
    index_path = run / "features.json" if run.is_dir() else run
    run_dir = index_path.parent
    target = args.target or interactions.comparison_target(run_dir) or "label"
    notes = []
    comparison: Path | None = (
        Path(args.comparison) if args.comparison else run_dir / "tables" / "comparison_summary.csv"
    )
    if args.comparison and not comparison.is_file():
        print(f"fusionkit: error: comparison table {comparison} does not exist", file=sys.stderr)
        return 2
    compared_on = interactions.comparison_target(run_dir)
    if not args.comparison and comparison.is_file() and compared_on != target:
        on = f"on target {compared_on!r}" if compared_on else "of an unknown target (no run.json beside it)"
        notes.append(f"{comparison} is {on}, not {target!r}: its best method is not shown (--comparison shows it)")
        comparison = None
    elif not comparison.is_file():
        comparison = None
    if comparison is not None and args.modalities:
        notes.append(f"the comparison's best method ({comparison}) was trained on every modality of the index")
    cfg = TrainConfig(epochs=args.epochs, lr=args.lr, seed=args.seed)
    try:
        index = FeatureIndex.read(index_path)
        mods = [m.strip() for m in args.modalities.split(",") if m.strip()] if args.modalities else None
        prof = interactions.profile(index, target, seeds=range(args.seed, args.seed + args.seeds), modalities=mods,
                                    cfg=cfg, hidden=args.hidden, joint=args.joint or interactions.JOINT, split=args.split,
                                    comparison=comparison)  # fmt: skip
    except (KeyError, FileNotFoundError, ValueError) as e:
        print(f"fusionkit: error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    print(prof.render())
    for note in notes:
        print(f"note: {note}")
    if args.out:
        from fusionkit.report import figures

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        prof.table().to_csv(out / "interactions.csv", index=False)
        prof.per_seed_table().to_csv(out / "interactions_per_seed.csv", index=False)
        prof.evidence_table().to_csv(out / "interactions_evidence.csv", index=False)
        (out / "interactions.json").write_text(json.dumps(prof.to_dict(), indent=1, default=float) + "\n")
        fig = figures.plot_interactions(prof.table(), prof.evidence_table())
        fig.savefig(out / "interactions.png", dpi=110, bbox_inches="tight")
        print(f"written to {out}/: interactions.csv, interactions_per_seed.csv, interactions_evidence.csv, "
              "interactions.json, interactions.png")  # fmt: skip
    return 0


def _add_interactions_command(sub) -> None:
    """``fusionkit data interactions RUN``: registered here, in the command layer, because it trains
    (``fusionkit.interactions``), which the data layer's commands must not import."""
    di = sub.add_parser(
        "interactions",
        help="redundancy, uniqueness and synergy of each modality pair with a target, and the evidence next to it",
    )
    di.add_argument("run", metavar="RUN", help="a run folder (its features.json) or a features.json")
    di.add_argument("--target", default="", help="the target (default: the one 03 compared on, else 'label')")
    di.add_argument("--seeds", type=int, default=3, help="seeds: mean and sd over them")
    di.add_argument("--seed", type=int, default=0, help="first seed")
    di.add_argument("--modalities", default="", help="comma-separated modalities to pair (default: all)")
    di.add_argument("--split", choices=["test", "val"], default="test", help="where the informations are estimated")
    di.add_argument("--joint", default=None, help="the fusion method that estimates I(a,b;Y) (default: lmf)")
    di.add_argument("--epochs", type=int, default=40)
    di.add_argument("--lr", type=float, default=2e-3)
    di.add_argument("--hidden", type=int, default=128)
    di.add_argument(
        "--comparison", default="", help="a comparison summary (default: RUN/tables/comparison_summary.csv if any)"
    )
    di.add_argument("--out", default="", help="also write the tables, JSON and figure to this folder")
    di.set_defaults(func=_cmd_data_interactions)


def _cmd_export(args: argparse.Namespace) -> int:
    import json

    from fusionkit.bundle import BundleError
    from fusionkit.data.base import DatasetError
    from fusionkit.export import export_run

    try:
        path = export_run(args.run, args.out, task=args.task, standalone=args.standalone, fmt=args.format,
                          model=args.model or None)  # fmt: skip
        where = {"none": "no weights", "machine": "this machine's", "bundle": "inside", "folder": "inside"}
        encoders = json.loads(path.with_suffix(".json").read_text(encoding="utf-8")).get("encoders") or {}
        weights = ", ".join(f"{m} {where.get(e.get('weights'), '?')}" for m, e in sorted(encoders.items()))
        what = "" if args.task == "classification" else f"{args.task} "
        print(f"[fusionkit] {what}bundle: {path.parent} (encoder weights: {weights})")
        if args.format == "onnx":
            _print_onnx(path.parent)
    except (BundleError, DatasetError, FileNotFoundError) as e:
        print(f"fusionkit: error: {e}", file=sys.stderr)
        return 2
    return 0


def _print_onnx(folder) -> None:
    import json

    from fusionkit.onnx_export import META_FILE

    meta = json.loads((folder / META_FILE).read_text())
    for what, e in [
        ("fusion model + head", meta["model"]),
        *((f"{m} encoder", e) for m, e in meta["encoders"].items()),
    ]:
        print(
            f"[fusionkit] ONNX {what}: {folder / e['file']} (max |onnxruntime - PyTorch| {e['check']['max_abs_diff']:.2g})"
        )
    for m, why in meta["not_exported"].items():
        print(f"[fusionkit] ONNX: {m} encoder not exported: {why}")


def _cmd_predict(args: argparse.Namespace) -> int:
    from fusionkit.bundle import BundleError
    from fusionkit.data.base import DatasetError
    from fusionkit.predict import read_inputs, single_inputs, write_predictions
    from fusionkit.tasks.predict import TaskPredictor, load_predictor

    singles = {"image": args.image, "text": args.text, "audio": args.audio}
    if (args.input is None) == all(v is None for v in singles.values()):
        print("fusionkit: error: give INPUT (a manifest or a folder) or --image / --text / --audio", file=sys.stderr)
        return 2
    progress = not args.no_progress and sys.stderr.isatty()
    try:
        predictor = load_predictor(args.bundle, device=args.device or None, gallery=args.gallery, beam=args.beam,
                                   rerank=not args.no_rerank)  # fmt: skip
        if args.question is not None and not isinstance(predictor, TaskPredictor):
            raise DatasetError(f"--question: {args.bundle} is a classification bundle; questions are for VQA")
        if args.top_k < 1:
            raise DatasetError(f"--top-k {args.top_k}: expected at least 1")
        if isinstance(predictor, TaskPredictor):
            predictor.top_k = args.top_k
        inputs = (
            read_inputs(args.input, predictor, split=args.split) if args.input else single_inputs(predictor, **singles)
        )
        if isinstance(predictor, TaskPredictor):
            inputs = predictor.ask(inputs, args.question)
        result = predictor.predict(inputs, progress=progress)
        out = write_predictions(result, args.out)
    except (BundleError, DatasetError) as e:
        print(f"fusionkit: error: {e}", file=sys.stderr)
        return 2
    for issue in result.issues:
        print(f"skipped: {issue.line()}", file=sys.stderr)
    masked = sum(1 for r in result.records if r.get("missing"))
    if out is not None:
        print(f"[fusionkit] {len(result.records)} predictions written to {out}", file=sys.stderr)
    if masked:
        print(
            f"[fusionkit] {masked} row(s) predicted with a missing modality (masked; column 'missing')", file=sys.stderr
        )
    for m, counts in result.unknown.items():
        print(f"[fusionkit] {m}: values of categories the training split lacks, read as unknown: {counts}",
              file=sys.stderr)  # fmt: skip
    if result.issues:
        print(f"[fusionkit] {len(result.issues)} row(s) skipped (above); the others were written", file=sys.stderr)
        return 1
    return 0


def _cmd_gallery(args: argparse.Namespace) -> int:
    import json

    from fusionkit.bundle import BundleError
    from fusionkit.data.base import DatasetError
    from fusionkit.predict import read_inputs
    from fusionkit.tasks.predict import TaskPredictor, build_gallery

    progress = not args.no_progress and sys.stderr.isatty()
    try:
        predictor = TaskPredictor.load(args.bundle, device=args.device or None)
        inputs = read_inputs(args.source, predictor, split=args.split)
        path, issues = build_gallery(predictor, inputs, args.out, modality=args.modality or None, progress=progress)
    except (BundleError, DatasetError) as e:
        print(f"fusionkit: error: {e}", file=sys.stderr)
        return 2
    for issue in issues:
        print(f"skipped: {issue.line()}", file=sys.stderr)
    doc = json.loads(path.read_text(encoding="utf-8"))
    print(f"[fusionkit] gallery: {doc['n']} {doc['modality']} item(s) in {path.parent}", file=sys.stderr)
    return 1 if issues else 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from fusionkit.bundle import BundleError
    from fusionkit.serve import serve

    try:
        limits = {k: v for k, v in (("max_body_bytes", args.max_body_bytes), ("max_pixels", args.max_pixels)) if v}
        serve(args.bundle, host=args.host, port=args.port, device=args.device or None, gallery=args.gallery,
              beam=args.beam, rerank=not args.no_rerank, **limits)  # fmt: skip
    except BundleError as e:
        print(f"fusionkit: error: {e}", file=sys.stderr)
        return 2
    return 0


def _add_device_option(p: argparse.ArgumentParser) -> None:
    """``--device``, as every command that loads a bundle takes it."""
    p.add_argument("--device", default="", help="cpu, cuda, cuda:1 (default: CUDA when available)")


def _add_input_options(p: argparse.ArgumentParser) -> None:
    """``--split``, ``--device`` and ``--no-progress``: how ``predict`` and ``gallery`` read their input."""
    p.add_argument("--split", default=None, help="a dataset folder's split (default: every sample)")
    _add_device_option(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_model_commands(sub) -> None:
    """``fusionkit export`` / ``predict`` / ``serve``: a trained model on new raw files."""
    ex = sub.add_parser("export", help="write a run's trained model as a bundle that runs without the run folder")
    ex.add_argument("run", metavar="RUN", help="a run folder (its model.safetensors + .json and features.json)")
    ex.add_argument("--out", required=True, help="the bundle folder to write")
    ex.add_argument("--task", default="classification", choices=("classification", "captioning", "vqa", "retrieval"),
                    help="classification (also regression targets; default), or one of the run's task models")  # fmt: skip
    ex.add_argument("--model", default="",
                    help="a task's model to export (a captioning decoder, a VQA method; default: the best on validation)")  # fmt: skip
    ex.add_argument("--standalone", action="store_true", help="also copy the pretrained encoder weights into it")
    ex.add_argument("--format", default="bundle", choices=("bundle", "onnx"),
                    help="onnx: also the fusion model + head and the image encoder as ONNX graphs, checked against PyTorch")  # fmt: skip
    ex.set_defaults(func=_cmd_export)

    pr = sub.add_parser("predict", help="predict new raw files with a bundle (fusionkit export)")
    pr.add_argument("bundle", metavar="BUNDLE",
                    help="a bundle folder written by fusionkit export, or wandb:ENTITY/PROJECT/NAME:ALIAS (W&B online; "
                         "ALIAS/vqa, /captioning or /retrieval: that task's bundle in 04's model artifact)")  # fmt: skip
    pr.add_argument("input", metavar="INPUT", nargs="?", help="a manifest (.csv .tsv .jsonl .parquet) or a folder")
    pr.add_argument("--image", help="one image file")
    pr.add_argument("--text", help="one text")
    pr.add_argument("--audio", help="one audio file")
    pr.add_argument("--question", default=None,
                    help="VQA: the question (with --image, or for every row of INPUT without a question column)")  # fmt: skip
    pr.add_argument("--gallery", default=None, help="retrieval: the gallery to search (fusionkit gallery)")
    pr.add_argument("--top-k", type=int, default=5, help="retrieval: gallery items per query (default 5)")
    pr.add_argument("--beam", action="store_true", help="captioning: beam search (default: greedy)")
    pr.add_argument("--no-rerank", action="store_true",
                    help="retrieval: cosine order only (default: the bundle's matcher re-ranks the top candidates)")  # fmt: skip
    pr.add_argument("--out", default=None, help="predictions.csv or .jsonl (default: CSV on standard output)")
    _add_input_options(pr)
    pr.set_defaults(func=_cmd_predict)

    ga = sub.add_parser("gallery", help="encode the items a retrieval bundle searches (fusionkit predict --gallery)")
    ga.add_argument("bundle", metavar="BUNDLE", help="a retrieval bundle (fusionkit export RUN --task retrieval)")
    ga.add_argument("source", metavar="FOLDER_OR_MANIFEST", help="images or texts: a folder or a manifest")
    ga.add_argument("--out", required=True, help="the gallery folder to write")
    ga.add_argument("--modality", default="", choices=("", "image", "text"),
                    help="what the gallery holds when the input has both images and texts")  # fmt: skip
    _add_input_options(ga)
    ga.set_defaults(func=_cmd_gallery)

    sv = sub.add_parser("serve", help="serve a bundle as an HTTP JSON API (/predict, /health, /info)")
    sv.add_argument("bundle", metavar="BUNDLE", help="a bundle folder written by fusionkit export (a classifier's or "
                    "a task's), or wandb:ENTITY/PROJECT/NAME:ALIAS[/TASK] (online)")  # fmt: skip
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    _add_device_option(sv)
    sv.add_argument("--gallery", default=None, metavar="DIR",
                    help="retrieval bundles: the gallery the queries search (fusionkit gallery)")  # fmt: skip
    sv.add_argument("--beam", action="store_true", help="captioning bundles: beam search instead of greedy")
    sv.add_argument("--no-rerank", action="store_true", help="retrieval bundles: cosine order only, no matcher")
    sv.add_argument("--max-body-bytes", type=int, default=None, help="largest request body accepted (default: 20 MiB)")
    sv.add_argument(
        "--max-pixels", type=int, default=None, help="largest image accepted, width x height (default: 40 million)"
    )
    sv.set_defaults(func=_cmd_serve)


def _cmd_report_wandb(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from fusionkit.pipeline import REPO_ROOT
    from fusionkit.report import wandb_report
    from fusionkit.tracking import resolve_mode

    run_dir = Path(args.run)
    if not run_dir.is_dir():  # a run id: under the reports folder
        reports = Path(args.reports_dir or os.environ.get("FUSIONKIT_REPORTS_DIR", REPO_ROOT / "reports"))
        run_dir = reports / "runs" / args.run
    if not run_dir.is_dir():
        print(f"fusionkit: error: {args.run}: no such run folder (nor {run_dir})", file=sys.stderr)
        return 2
    online = resolve_mode(args.mode) == "online"
    try:
        built = wandb_report.build(run_dir, entity=args.entity, project=args.project, online=online)
    except (wandb_report.NoWandbRuns, FileNotFoundError, ValueError) as e:
        print(f"fusionkit: error: {e}", file=sys.stderr)
        return 2
    for note in built.notes:
        print(f"[fusionkit] note: {note}")
    spec = wandb_report.write_spec(built)
    blocks, panels = built.counts()
    n = len(built.runs.names)
    print(f"[fusionkit] W&B Report of {n} W&B runs ({blocks} blocks, {panels} panels): specification in {spec}")
    if not online:
        where = f"{args.entity or '<entity>'}/{built.project}"
        print("[fusionkit] offline: nothing was sent. To publish it (needs the network and WANDB_API_KEY):")
        offline = [d for d in built.runs.offline_dirs if d.name.startswith("offline-run-")]
        if offline:
            print(
                f"    wandb sync --project {built.project} {run_dir / 'wandb'}/offline-run-*   # its {len(offline)} offline runs"
            )
        print(f"    fusionkit report wandb {args.run} --entity {args.entity or '<entity>'} --project {built.project} "
              f"--mode online   # builds it again and saves it to {where}")  # fmt: skip
        return 0
    try:
        url = wandb_report.publish(built)
    except Exception as e:  # noqa: BLE001 - the network or W&B's answer: said in one line
        print(f"fusionkit: error: the report could not be saved to W&B: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(f"[fusionkit] W&B Report saved: {url}")
    return 0


def _add_report_commands(sub) -> None:
    """``fusionkit report wandb RUN``: a run's W&B Report, built from code."""
    rp = sub.add_parser("report", help="reports of a run")
    rsub = rp.add_subparsers(dest="report_command", required=True)
    rw = rsub.add_parser("wandb", help="a W&B Report of a run's W&B runs (offline: its specification, JSON)")
    rw.add_argument("run", metavar="RUN", help="a run folder, or a run id under the reports folder")
    rw.add_argument("--entity", default="", help="the W&B entity (user or team) the report belongs to")
    rw.add_argument("--project", default="", help="the W&B project (default: the one the run logged to)")
    rw.add_argument(
        "--mode",
        choices=["auto", "offline", "online"],
        default="auto",
        help="online saves the report to W&B; offline only writes its specification "
        "(default auto: WANDB_MODE, else online when WANDB_API_KEY is set)",
    )
    rw.add_argument("--reports-dir", help="where runs/ is, for a run id (default: reports/)")
    rw.set_defaults(func=_cmd_report_wandb)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fusionkit", description="Multimodal fusion experiments: the notebook chain and its helpers."
    )
    p.add_argument("--version", action="version", version=f"fusionkit {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run the notebook chain with papermill")
    r.add_argument("--profile", default="default", help="configs/profiles/NAME.yaml (default: default)")
    r.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="NOTEBOOK.KEY=VALUE",
        help="override a notebook parameter, e.g. -p 03.epochs=5 or -p common.seed=1 (repeatable)",
    )
    r.add_argument("--run-id", help="name of the run folder (default: <timestamp>-<profile>)")
    r.add_argument("--resume", metavar="RUN_ID", help="continue a run: skip the notebooks that already finished")
    r.add_argument("--only", help="comma-separated notebooks to run (e.g. 01,02)")
    r.add_argument("--reports-dir", help="where runs/ and latest go (default: reports/)")
    r.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bars nor lines (default: bars in a terminal, plain occasional lines otherwise or under CI)",
    )
    r.add_argument("--quiet", action="store_true", help="do not stream cell output")
    r.add_argument(
        "--report-mode",
        action="store_true",
        help="the executed notebooks hide their code cells (papermill's report mode; kept by --resume)",
    )
    r.add_argument(
        "--ray-address",
        default="",
        help="the Ray cluster 03 runs its trainings on: 'auto' or host:port (default: a local Ray)",
    )
    r.set_defaults(func=_cmd_run)

    pr = sub.add_parser("profiles", help="list the profiles")
    pr.set_defaults(func=_cmd_profiles)

    f = sub.add_parser("fusion", help="fusion methods")
    fsub = f.add_subparsers(dest="fusion_command", required=True)
    fl = fsub.add_parser("list", help="list the registered fusion methods and their hyper-parameters")
    fl.set_defaults(func=_cmd_fusion_list)
    fc = fsub.add_parser("compare", help="compare fusion methods on cached features (what 03_fusion_comparison runs)")
    fc.add_argument("--features-index", required=True, help="features.json written by 02_feature_extraction")
    fc.add_argument("--methods", default="all", help="comma-separated method names, or 'all'")
    fc.add_argument("--seeds", type=int, default=5)
    fc.add_argument("--seed", type=int, default=0, help="first seed")
    fc.add_argument("--target", default="label", help="a class target, or a regression target (MSE / MAE / R^2)")
    fc.add_argument("--epochs", type=int, default=40)
    fc.add_argument("--batch-size", type=int, default=64)
    fc.add_argument("--lr", type=float, default=2e-3)
    fc.add_argument("--weight-decay", type=float, default=1e-2)
    fc.add_argument("--optimizer", choices=["adamw", "sgd"], default="adamw")
    fc.add_argument("--modality-dropout", type=float, default=0.0)
    fc.add_argument("--hidden", type=int, default=128)
    fc.add_argument("--search-trials", type=int, default=0, help="trials per method, the same for all (0: no search)")
    fc.add_argument("--untuned-seeds", type=int, default=0,
                    help="with a search: seeds of the untuned ranking shown beside the tuned one (0: --seeds)")  # fmt: skip
    fc.add_argument(
        "--search-metric",
        default="",
        help="what the search optimises (validation only; default val_accuracy, or val_mse - minimised - for a "
        "regression target)",
    )
    fc.add_argument(
        "--search-space", default="", help='JSON overrides, e.g. \'{"lr": {"low": 1e-4, "high": 1e-2, "log": true}}\''
    )
    fc.add_argument(
        "--executor", choices=["ray", "serial"], default="ray", help="Ray Tune trials (default) or this process"
    )
    fc.add_argument(
        "--ray-address",
        default="",
        help="'' local Ray; 'auto' or host:port / ray://host:port a cluster (else $RAY_ADDRESS)",
    )
    fc.add_argument("--ray-storage", default="", help="Ray Tune's files (a folder every node sees on a cluster)")
    fc.add_argument("--max-failures", type=int, default=2, help="retries of a training that fails")
    fc.add_argument("--out", default="reports/comparison")
    fc.set_defaults(func=_cmd_fusion_compare)

    _add_model_commands(sub)
    _add_report_commands(sub)

    d = sub.add_parser("data", help="datasets: generate, download, check")
    from fusionkit.data.commands import add_data_commands

    dsub = d.add_subparsers(dest="data_command", required=True)
    add_data_commands(dsub)
    _add_interactions_command(dsub)
    return p


def main(argv: list[str] | None = None) -> int:
    from fusionkit.runtime import openmp_environment

    # before anything imports torch: OpenMP reads its wait policy and thread count once, at load
    # (passive threads do not spin against other processes; fusionkit.runtime explains)
    openmp_environment()
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
