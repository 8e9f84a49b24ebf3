"""Keeping polars frames cheap to work with.

`polars.read_csv` returns every column in one chunk per reader thread. Elementwise
string work on such columns runs chunk by chunk across the cores, so the chunks
are worth keeping. But a frame whose columns disagree on chunk boundaries is
copied into single chunks by the next `select`, at a cost of one copy of every
column. A column that batcher adds to a read frame is therefore cut at the same
boundaries as the columns already there.
"""

from __future__ import annotations

import polars as pl


def chunked_like(series: pl.Series, template: pl.Series) -> pl.Series:
    """`series` (same length as `template`) cut into `template`'s chunks, without copying."""
    lengths = template.chunk_lengths()
    if len(lengths) <= 1 or series.chunk_lengths() == lengths:
        return series
    if series.len() != template.len():
        raise ValueError(f"lengths differ: {series.len()} and {template.len()}")
    whole = series.rechunk()
    parts: list[pl.Series] = []
    offset = 0
    for length in lengths:
        parts.append(whole.slice(offset, length))
        offset += length
    return pl.concat(parts, rechunk=False)


def row_numbers_like(template: pl.Series, first: int, name: str) -> pl.Series:
    """Int64 row numbers `first, first+1, ...`, one per value of `template`, in its chunks."""
    numbers = pl.int_range(first, first + template.len(), dtype=pl.Int64, eager=True)
    return chunked_like(numbers.alias(name), template)
