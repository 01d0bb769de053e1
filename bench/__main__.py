"""Tiny runner: `python -m bench [name ...]` runs bench/<name>.py's main() (default: every module)."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    modules = pkgutil.iter_modules([str(Path(__file__).parent)])
    available = sorted(m.name for m in modules if not m.name.startswith("_"))
    names = argv or available
    unknown = sorted(set(names) - set(available))
    if unknown:
        print(
            f"unknown benchmark(s): {', '.join(unknown)}; available: {', '.join(available)}",
            file=sys.stderr,
        )
        return 2
    failed = 0
    for name in names:
        print(f"== bench.{name}", flush=True)
        failed += int(bool(importlib.import_module(f"bench.{name}").main()))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
