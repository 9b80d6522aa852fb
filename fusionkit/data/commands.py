"""``fusionkit data ...`` subcommands."""

from __future__ import annotations

import argparse


def _cmd_shapes(args: argparse.Namespace) -> int:
    from fusionkit.data import shapes

    ds = shapes.generate(args.out, n=args.n, seed=args.seed, overwrite=args.overwrite)
    print(f"{len(ds)} scenes in {args.out}")
    return 0


def add_data_commands(sub) -> None:
    """Register the ``data`` subcommands on an argparse subparsers object."""
    ds = sub.add_parser("shapes", help="generate the synthetic shapes dataset")
    ds.add_argument("--out", default="data/processed/shapes")
    ds.add_argument("-n", type=int, default=1200)
    ds.add_argument("--seed", type=int, default=0)
    ds.add_argument("--overwrite", action="store_true")
    ds.set_defaults(func=_cmd_shapes)
