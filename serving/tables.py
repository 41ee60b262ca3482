"""Datasets as users hand them over: Parquet or CSV files, read the same way wherever a dataset is named.

The format is chosen by the file's extension, never sniffed, so a file means one thing everywhere (the gates,
the synthetic traffic, ``mlrelease init``), and its digest stays the sha256 of its bytes as given. CSV is
parsed deterministically: by pandas' C parser, whose one float converter (pandas >= 3.1) gives the correctly
rounded double of each number's text, on any machine, and with types inferred over the whole file at once, not
per chunk, so the same bytes always give the same frame (tests/components/test_datasets.py holds it to that).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

SUFFIXES = (".parquet", ".csv")


class TableError(ValueError):
    """A dataset file that cannot be read; the message names the file and the problem (callers add the fix)."""


def read_table(path: Path | str) -> pd.DataFrame:
    """The rows of a ``.parquet`` or ``.csv`` file (by extension, case-insensitive); TableError otherwise."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise TableError(f"{path} is not a {' or '.join(SUFFIXES)} file (extension {suffix or 'none'!r})")
    if not path.is_file():
        raise TableError(f"{path} does not exist")
    try:
        if suffix == ".csv":
            return pd.read_csv(path, engine="c", low_memory=False)
        return pd.read_parquet(path)
    except Exception as exc:  # pandas and pyarrow raise many types for unreadable files
        raise TableError(f"{path} is not readable {suffix[1:]} ({type(exc).__name__})") from None
