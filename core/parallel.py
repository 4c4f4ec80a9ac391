"""Per-image work (decoding, resizing, PNG encoding) spread over the CPU's cores.

Pillow, numpy and ISA-L release the GIL in their heavy loops, so threads run them in
parallel; a single item runs inline, with no pool to start.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


def map_images(function: Callable[[Item], Result], items: Sequence[Item]) -> list[Result]:
    workers = min(len(items), os.cpu_count() or 1)
    if workers < 2:
        return [function(item) for item in items]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gazer-images") as pool:
        return list(pool.map(function, items))
