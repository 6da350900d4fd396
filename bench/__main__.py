"""`python -m bench NAME [--quick]` runs one benchmark, `python -m bench all` runs every one.

Benchmarks are found by name: any module in this package (not starting with `_`) that defines
`run(quick: bool) -> dict`. After each run the figures are printed as one JSON line,
`{"bench": NAME, ...}`, so the last line of the output is always machine-readable.
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import json
import pkgutil
import sys
import time
from pathlib import Path
from typing import Any

PACKAGE = "bench"


def benchmark_names() -> list[str]:
    folder = Path(__file__).parent
    return sorted(module.name for module in pkgutil.iter_modules([str(folder)])
                  if not module.name.startswith("_"))


def load(name: str) -> Any:
    module = importlib.import_module(f"{PACKAGE}.{name}")
    if not callable(getattr(module, "run", None)):
        raise SystemExit(f"bench.{name} has no run(quick) function")
    return module


def main(argv: list[str] | None = None) -> int:
    names = benchmark_names()
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("name", choices=[*names, "all"], help="the benchmark to run, or all")
    parser.add_argument("--quick", action="store_true", help="a short run (under a minute), same output shape")
    parser.add_argument("--soak", type=float, metavar="MINUTES",
                        help="benchmarks that take it (reliability): run the load MINUTES longer, sampling memory")
    args = parser.parse_args(argv)
    chosen = names if args.name == "all" else [args.name]
    failed = False
    for name in chosen:
        module = load(name) if args.name != "all" else _maybe_load(name)
        if module is None:
            continue
        started = time.perf_counter()
        try:
            options = {"soak_minutes": args.soak} if args.soak and "soak_minutes" in inspect.signature(
                module.run).parameters else {}
            figures = module.run(quick=args.quick, **options)
        except Exception as exc:  # `all` goes on to the next benchmark
            if args.name != "all":
                raise
            figures = {"error": f"{type(exc).__name__}: {exc}"}
            failed = True
        figures = {"bench": name, "quick": args.quick, **figures,
                   "wall_seconds": round(time.perf_counter() - started, 1)}
        print(json.dumps(figures, default=str), flush=True)
    return 1 if failed else 0


def _maybe_load(name: str) -> Any:
    try:
        module = importlib.import_module(f"{PACKAGE}.{name}")
    except ImportError as exc:
        print(f"skipping bench.{name}: {exc}", file=sys.stderr)
        return None
    return module if callable(getattr(module, "run", None)) else None


if __name__ == "__main__":
    sys.exit(main())
