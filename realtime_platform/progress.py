"""Progress bars for operations commands (tqdm), writing to the command's stderr so stdout stays
scriptable."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from tqdm import tqdm


@contextmanager
def progress_bar(*, total: int | None, desc: str, unit: str, stream: Any) -> Iterator[Callable[[int], None]]:
    """Yields an `advance(n)` callback for services that report progress."""
    with tqdm(total=total, desc=desc, unit=unit, file=stream, dynamic_ncols=True, mininterval=0.2) as bar:
        yield bar.update
