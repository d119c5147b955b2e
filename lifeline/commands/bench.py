"""``lifeline bench NAME [args]``: benchmarks that print JSON.

Each benchmark is a module ``bench/<name>.py`` with ``add_arguments(parser)``
and ``run(args) -> dict``. A benchmark measures its own ceiling in the same run
and reports ratios, never only absolute times.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
from collections.abc import Callable
from typing import Any, cast

import orjson

import bench


def _benchmarks() -> list[str]:
    names = (m.name for m in pkgutil.iter_modules(bench.__path__))
    return sorted(n for n in names if not n.startswith("_"))


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``bench`` with one subcommand per module in :mod:`bench`."""
    p = sub.add_parser("bench", help="run a benchmark; prints JSON")
    bsub = p.add_subparsers(dest="bench_name", required=True)
    for name in _benchmarks():
        module = importlib.import_module(f"bench.{name}")
        bp = bsub.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0])
        bp.add_argument("--json", action="store_true", help="print only the JSON result")
        add = getattr(module, "add_arguments", None)
        if add is not None:
            add(bp)
        bp.set_defaults(func=bench_command, bench_module=module)


def bench_command(args: argparse.Namespace) -> int:
    """Run the chosen benchmark and print its result as JSON."""
    run = cast(Callable[[argparse.Namespace], dict[str, Any]], args.bench_module.run)
    result = run(args)
    option = 0 if args.json else orjson.OPT_INDENT_2
    print(orjson.dumps(result, option=option | orjson.OPT_SERIALIZE_NUMPY).decode())
    return 0
