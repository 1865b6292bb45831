"""Reading memory-mapped arrays without keeping their pages in the process's RSS.

A page of a file mapping, once touched, counts in the process's RSS for as long as the map
lives, so hashing a 1 GB mapped dataset would show as +1 GB. The readers here (row gathers,
chunked hashing) drop the pages they have read as they go: the data stays in the page cache
(reclaimable by the kernel), and a later access reads it again.
"""

from __future__ import annotations

import mmap

import numpy as np

__all__ = ["DROP_EVERY_BYTES", "drop_mapped_pages", "gather_rows"]

DROP_EVERY_BYTES = 64 << 20  # bytes read between two drops of the mapped pages


def _mapping(arr: np.ndarray) -> mmap.mmap | None:
    """The file mapping under `arr` (a np.memmap or a view of one), else None."""
    base: object = arr
    while base is not None:
        found = getattr(base, "_mmap", None)
        if isinstance(found, mmap.mmap):
            return found
        base = getattr(base, "base", None)
    return None


def drop_mapped_pages(arr: np.ndarray) -> None:
    """Drop the pages of `arr`'s file mapping from this process (no-op for in-memory arrays)."""
    found = _mapping(arr)
    if found is not None and hasattr(mmap, "MADV_DONTNEED"):
        found.madvise(mmap.MADV_DONTNEED)


def gather_rows(X: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """X[idx] as an array in memory; a mapped X is read in ascending rows, a region at a time.

    Equal to X[idx]. The rows are taken by regions of the file of DROP_EVERY_BYTES each (a
    page fault maps its neighbours too, so what counts is the span read, not the rows
    taken), and the region's pages are dropped after it: the gather's file-backed RSS stays
    near DROP_EVERY_BYTES however many rows it takes.
    """
    idx = np.asarray(idx, dtype=np.int64)
    if _mapping(X) is None:
        return X[idx]
    out = np.empty((len(idx), *X.shape[1:]), dtype=X.dtype)
    row_bytes = max(1, int(np.prod(X.shape[1:], dtype=np.int64)) * X.dtype.itemsize)
    order = np.argsort(idx, kind="stable")
    rows = idx[order]
    per_region = max(1, DROP_EVERY_BYTES // row_bytes)
    ends = np.searchsorted(rows, np.arange(per_region, len(X) + per_region, per_region))
    start = 0
    for end in ends.tolist():
        if end > start:
            out[order[start:end]] = X[rows[start:end]]
            drop_mapped_pages(X)
            start = end
    return out
