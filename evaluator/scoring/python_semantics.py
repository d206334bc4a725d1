"""Python's own string semantics, applied once per distinct value of a column.

The official metrics lean on `int()`, `str.isnumeric()`, `str.lower()` and `str.strip()`, whose Unicode rules
differ from Polars' in corners (full-width digits, `1_000`, `\\x1c` as whitespace...). Model outputs repeat a
lot, so calling the real Python function on each *distinct* value is both exact and fast.
"""

from __future__ import annotations

from typing import Callable

import polars as pl

# Every character Python's str.strip() / int() treat as whitespace (Polars' idea of whitespace differs);
# the last of them is U+3000.
PY_WHITESPACE = "".join(chr(c) for c in range(0x3001) if chr(c).isspace())
OUT_OF_RANGE = 2**62


def map_unique(series: pl.Series, fn: Callable, dtype: pl.DataType) -> pl.Series:
    """`fn` applied to each distinct non-null value, broadcast back to every row (nulls stay null)."""
    uniques = series.drop_nulls().unique()
    mapped = pl.Series("mapped", [fn(v) for v in uniques.to_list()], dtype=dtype)
    lookup = pl.DataFrame({"key": uniques, "mapped": mapped})
    return series.to_frame("key").join(lookup, on="key", how="left", maintain_order="left")["mapped"]


def python_int(piece: str) -> int | None:
    """`int(piece)` as the official code calls it, None where it raises (the official `except: continue`)."""
    try:
        value = int(piece)
    except ValueError:
        return None
    # Beyond int64 a number still takes its place in the list but can match no truth or index: clamp it.
    return max(-OUT_OF_RANGE, min(OUT_OF_RANGE, value))


def int_lists(pieces: pl.Series) -> pl.Series:
    """A list[str] column → list[int]: each piece through `int()`, failures dropped, order kept."""
    frame = pl.DataFrame({"pieces": pieces}).with_row_index("i")
    exploded = frame.explode("pieces", empty_as_null=True)
    exploded = exploded.with_columns(value=map_unique(exploded["pieces"], python_int, pl.Int64))
    grouped = exploded.group_by("i", maintain_order=True).agg(pl.col("value").drop_nulls())
    return grouped["value"].alias(pieces.name)


def first_matching_char(text: str, predicate: Callable[[str], bool]) -> str:
    """hf_multi_choice.py's answer: the first character passing the test, else the whole text."""
    for ch in text:
        if predicate(ch):
            return ch
    return text
