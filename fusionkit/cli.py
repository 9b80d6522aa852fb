"""The ``fusionkit`` command."""

from __future__ import annotations

import argparse
import sys

from fusionkit import __version__


def _cmd_run(args: argparse.Namespace) -> int:
    from fusionkit.pipeline import NotebookFailed, PipelineError, run

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
    from pathlib import Path

    import fusionkit.fusion as fusion
    from fusionkit import compare
    from fusionkit.index import FeatureIndex
    from fusionkit.report import figures
    from fusionkit.train import TrainConfig

    try:
        methods = (
            fusion.available() if args.methods == "all" else [m.strip() for m in args.methods.split(",") if m.strip()]
        )
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
    results = compare.compare(
        methods, splits, cfg, len(class_names), seeds=range(args.seed, args.seed + args.seeds), hidden=args.hidden
    )
    summary = compare.summarize(results)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results.to_csv(out / "comparison_runs.csv", index=False)
    summary.to_csv(out / "comparison_summary.csv", index=False)
    figures.plot_comparison(results, summary).savefig(out / "comparison.png", dpi=110, bbox_inches="tight")
    cols = [
        "method",
        "test_accuracy_mean",
        "test_accuracy_ci95",
        "params",
        "train_time_s",
        "p_vs_best",
        "worse_than_best",
    ]
    print(summary[cols].to_string(index=False, float_format=lambda x: f"{x:.4f}"))
    print(f"written to {out}/comparison_runs.csv, comparison_summary.csv, comparison.png")
    return 0


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
        "--no-progress", action="store_true", help="no progress bars (default when not a terminal or CI is set)"
    )
    r.add_argument("--quiet", action="store_true", help="do not stream cell output")
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
    fc.add_argument("--target", default="label")
    fc.add_argument("--epochs", type=int, default=40)
    fc.add_argument("--batch-size", type=int, default=64)
    fc.add_argument("--lr", type=float, default=2e-3)
    fc.add_argument("--weight-decay", type=float, default=1e-2)
    fc.add_argument("--optimizer", choices=["adamw", "sgd"], default="adamw")
    fc.add_argument("--modality-dropout", type=float, default=0.0)
    fc.add_argument("--hidden", type=int, default=128)
    fc.add_argument("--out", default="reports/comparison")
    fc.set_defaults(func=_cmd_fusion_compare)

    d = sub.add_parser("data", help="datasets: generate, download, check")
    from fusionkit.data.commands import add_data_commands

    add_data_commands(d.add_subparsers(dest="data_command", required=True))
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
