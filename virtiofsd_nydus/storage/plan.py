"""Turning a set of missing chunks into as few backend range reads as possible."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .chunks import ChunkTable

DEFAULT_MERGE_LIMIT = 8 << 20  # bytes per merged read (nydus merges prefetch at 1 MiB)


@dataclass(frozen=True, slots=True)
class FetchRange:
    """One backend read: ``size`` bytes at ``offset`` of a blob, covering ``chunks``."""

    blob_index: int
    offset: int
    size: int
    chunks: tuple[int, ...]  # chunk indices, in stored order


def plan_ranges(
    indices: Iterable[int], chunks: ChunkTable, merge_limit: int = DEFAULT_MERGE_LIMIT
) -> list[FetchRange]:
    """Group chunks per blob and merge those stored back to back into one read.

    A chunk larger than ``merge_limit`` still gets its own read; a repeated index is read once.
    """
    order = sorted(
        set(indices), key=lambda i: (chunks[i].blob_index, chunks[i].compressed_offset, i)
    )
    out: list[FetchRange] = []
    cur: list[int] = []
    blob = start = end = 0
    for i in order:
        c = chunks[i]
        c_end = c.compressed_offset + c.compressed_size
        if (
            cur
            and c.blob_index == blob
            and c.compressed_offset == end
            and c_end - start <= merge_limit
        ):
            cur.append(i)
            end = c_end
            continue
        if cur:
            out.append(FetchRange(blob, start, end - start, tuple(cur)))
        cur, blob, start, end = [i], c.blob_index, c.compressed_offset, c_end
    if cur:
        out.append(FetchRange(blob, start, end - start, tuple(cur)))
    return out
