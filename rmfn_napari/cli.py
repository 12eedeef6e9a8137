"""``rmfn`` command line: headless, cluster-friendly front end over the engine.

Sub-commands live in :mod:`rmfn_napari.cli_commands`, one module each, every module
exposing ``register(subparsers)`` which adds its parser and sets ``func``. They consume
the same engine events as the napari widgets.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from . import __version__, cli_commands
from .engine.distributed import RankLostError
from .errors import InputError


def build_parser() -> argparse.ArgumentParser:
    """Return the ``rmfn`` argument parser with every sub-command registered."""
    parser = argparse.ArgumentParser(
        prog="rmfn",
        description="Residual multiplicative filter networks: coarse-to-fine image fitting "
        "and cryo-EM reconstruction.",
    )
    parser.add_argument("--version", action="version", version=f"rmfn-napari {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(cli_commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{cli_commands.__name__}.{info.name}")
        module.register(subparsers)
    return parser


def _rank_name() -> str:
    """`` (rank 1 of 4)`` inside a torchrun process group of more than one process, else ``''``."""
    import os

    world = os.environ.get("WORLD_SIZE", "1")
    return f" (rank {os.environ.get('RANK', '?')} of {world})" if world not in ("", "1") else ""


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``rmfn`` console script. Returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for a command that relaunches itself
    where = _rank_name()
    try:
        return int(args.func(args) or 0)
    except InputError as exc:
        from .cli_commands._launch import report_rank_error

        if not report_rank_error(str(exc)):  # (a rank of --nproc: its launcher says it, once)
            print(f"rmfn {args.command}{where}: error: {exc}", file=sys.stderr)
        return 2
    except RankLostError as exc:
        print(f"rmfn {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"rmfn {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
