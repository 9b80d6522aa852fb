"""``fusionkit data ...`` subcommands.

* ``fusionkit data list`` - the datasets ``prepare`` knows (with their options) and the downloads;
* ``fusionkit data prepare NAME --source PATH --out PATH [-o key=value ...]`` - build a dataset
  folder (:func:`fusionkit.data.registry.prepare`) and print its validation report;
* ``fusionkit data check PATH [--name NAME]`` - print the validation report of a raw folder (any
  supported format, auto-detected) or of a processed fusionkit dataset folder; exit code 1 when it
  has errors;
* ``fusionkit data download NAME --to data/raw [--from PATH] [--mirror URL] [--only PARTS]``;
* ``fusionkit data shapes`` - generate the synthetic shapes dataset;
* ``fusionkit data interactions RUN`` - the interaction profile of a run's cached features
  (``fusionkit.interactions``); registered by ``fusionkit.cli``, since it trains models.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import yaml


def _cmd_shapes(args: argparse.Namespace) -> int:
    from fusionkit.data import shapes

    ds = shapes.generate(args.out, n=args.n, seed=args.seed, overwrite=args.overwrite)
    print(f"{len(ds)} scenes in {args.out}")
    return 0


def _parse_options(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise SystemExit(f"fusionkit: error: option {item!r}: expected key=value")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = yaml.safe_load(v) if v.strip() else None
        except yaml.YAMLError:
            out[k.strip()] = v
    return out


def _cmd_list(args: argparse.Namespace) -> int:
    from fusionkit.data import download, registry

    print("datasets (fusionkit data prepare NAME ...):")
    for name in registry.available():
        opts = ", ".join(f"{k}={v!r}" for k, v in registry.options(name).items())
        print(f"  {name:12s} {opts}")
    print("downloads (fusionkit data download NAME --to data/raw):")
    for name, spec in download.SOURCES.items():
        parts = sorted({r.part for r in spec["files"]})
        print(f"  {name:12s} -> <to>/{spec['folder']}  parts: {', '.join(parts)}  ({spec['licence']})")
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    from fusionkit.data import registry
    from fusionkit.data.base import DatasetError
    from fusionkit.data.problems import Report

    opts = _parse_options(args.option)
    try:
        ds = registry.prepare(
            args.name,
            args.out,
            source_dir=args.source,
            seed=args.seed,
            on_error=args.on_error,
            force=args.force,
            progress=not args.no_progress,
            **opts,
        )
    except DatasetError as e:
        print(f"fusionkit: error: {e}", file=sys.stderr)
        return 2
    if args.name == "shapes":
        print(f"{len(ds)} samples in {args.out}")
        return 0
    print(Report.load(ds.root).render(max_items=args.max_items))
    print(f"{len(ds)} samples in {ds.root}")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from fusionkit.data.validate import check

    opts = _parse_options(args.option)
    if args.media:
        opts["media"] = args.media
    rep = check(args.path, name=args.name, **opts)
    if args.json:
        print(json.dumps(rep.to_dict(), indent=1, ensure_ascii=False))
    else:
        print(rep.render(max_items=args.max_items))
    return 0 if rep.ok else 1


def _cmd_download(args: argparse.Namespace) -> int:
    from fusionkit.data import download
    from fusionkit.data.registry import DOWNLOAD_FOR

    try:
        dest = download.download(
            args.name,
            args.to,
            from_path=args.from_path,
            mirror=args.mirror,
            only=args.only,
            extract_archives=not args.no_extract,
            progress=not args.no_progress,
            retries=args.retries,
        )
    except download.DownloadError as e:
        print(f"fusionkit: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"fusionkit: error: {e}", file=sys.stderr)
        return 2
    print(f"{args.name}: ready in {dest}")
    prep = download.SOURCES[args.name].get("prepare")
    if prep:
        hint = next((k for k, v in DOWNLOAD_FOR.items() if v == args.name), prep)
        print(f"next: fusionkit data prepare {hint} --source {dest} --out data/processed/{hint}")
    return 0


def add_data_commands(sub) -> None:
    """Register the ``data`` subcommands on an argparse subparsers object."""
    ds = sub.add_parser("shapes", help="generate the synthetic shapes dataset")
    ds.add_argument("--out", default="data/processed/shapes")
    ds.add_argument("-n", type=int, default=1200)
    ds.add_argument("--seed", type=int, default=0)
    ds.add_argument("--overwrite", action="store_true")
    ds.set_defaults(func=_cmd_shapes)

    dl = sub.add_parser("list", help="list the datasets, their options and the downloads")
    dl.set_defaults(func=_cmd_list)

    dp = sub.add_parser("prepare", help="build a fusionkit dataset folder from raw data and print its report")
    dp.add_argument("name", help="dataset: shapes, flickr8k, flickr30k, coco, imagefolder, vqa, avdigits, manifest")
    dp.add_argument("--source", default=None, help="the raw data folder (or manifest file)")
    dp.add_argument("--out", required=True, help="the dataset folder to write")
    dp.add_argument("--seed", type=int, default=0)
    dp.add_argument(
        "--on-error", choices=["raise", "skip"], default="raise", help="stop at bad records or skip + list them"
    )
    dp.add_argument(
        "-o", "--option", action="append", default=[], metavar="KEY=VALUE", help="a loader option (repeatable)"
    )
    dp.add_argument("--force", action="store_true", help="rebuild even if the folder is up to date")
    dp.add_argument("--no-progress", action="store_true")
    dp.add_argument("--max-items", type=int, default=10, help="issues listed per kind")
    dp.set_defaults(func=_cmd_prepare)

    dc = sub.add_parser("check", help="validate a raw dataset folder or a processed one; non-zero exit on errors")
    dc.add_argument("path")
    dc.add_argument("--name", default=None, help="read it as this dataset (default: detect the format)")
    dc.add_argument(
        "--media", choices=["none", "verify", "decode"], default=None, help="how deeply to check media files"
    )
    dc.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE", help="a loader option")
    dc.add_argument("--json", action="store_true", help="print the report as JSON")
    dc.add_argument("--max-items", type=int, default=10, help="issues listed per kind")
    dc.set_defaults(func=_cmd_check)

    dd = sub.add_parser("download", help="download a dataset's raw files (verified, resumable)")
    dd.add_argument("name", help="flickr8k, fsdd, coco or vqa")
    dd.add_argument("--to", default="data/raw", help="parent folder (the files go to <to>/<name>)")
    dd.add_argument("--from", dest="from_path", default=None, help="a local folder or archive instead of the network")
    dd.add_argument("--mirror", default=None, help="base URL of a mirror holding the same file names")
    dd.add_argument("--only", default=None, help="comma-separated parts, e.g. annotations,val-images")
    dd.add_argument("--no-extract", action="store_true", help="keep the archives packed")
    dd.add_argument("--retries", type=int, default=3)
    dd.add_argument("--no-progress", action="store_true")
    dd.set_defaults(func=_cmd_download)
