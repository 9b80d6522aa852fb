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

    d = sub.add_parser("data", help="datasets: generate, download, check")
    from fusionkit.data.commands import add_data_commands

    add_data_commands(d.add_subparsers(dest="data_command", required=True))
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
