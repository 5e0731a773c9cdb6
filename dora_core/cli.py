"""The `dora` command line: train, export, merge, presets."""

from __future__ import annotations

import argparse
import json
import sys

from dora_core import __version__


def _cmd_presets(args: argparse.Namespace) -> int:
    from dora_core.presets import all_presets

    rows = all_presets()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for kind in ("model", "dataset"):
        print(f"{kind}s:")
        for row in rows:
            if row["kind"] != kind:
                continue
            state = "installed" if row["available"] else f"missing -> {row['install']}"
            print(f"  {row['name']:<14} {state}\n      {row['description']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dora",
        description="Dynamic Low-Rank Adaptation (Mao et al., ACL 2024): train, inspect and ship "
        "adapters whose rank is pruned under a global budget.",
    )
    parser.add_argument("--version", action="version", version=f"dora {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    presets = sub.add_parser(
        "presets", help="list model and dataset presets and whether they are installed"
    )
    presets.add_argument("--json", action="store_true", help="machine-readable output")
    presets.set_defaults(func=_cmd_presets)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
