"""The router's inference log: append-only Parquet, one directory per UTC day, and its window reader.

Why Parquet: the drift gate reads a few feature columns of a week of traffic (prior week vs current
window); a columnar file lets it read just those columns, compressed, without parsing every request.
Writes are buffered in memory and flushed as a new part file every `flush_rows` rows or `flush_seconds`
seconds, on shutdown, and on `POST /admin/flush`. A part file is written under a dot-name and renamed,
so a reader never sees a half-written file. Layout and schema (also in serving/METRICS.md):

    log_dir/date=YYYY-MM-DD/part-<first-ts-ms>-<random>.parquet

one row per input row of a request:

    _ts          timestamp[us, UTC]  when the router received the request
    _request_id  string              x-request-id (V2 `id` when the client sent one)
    _version     string              version that answered (after any fallback to the incumbent)
    _status      int16               HTTP status returned to the client
    _latency_ms  float64             router-side latency of the whole request
    _entity_key  string (nullable)   sticky-routing key, when the client sent one
    _row         int32               row index inside the request
    _output      float64 (nullable)  score of this row (positive-class probability); null on errors
    <feature>    float64 | string    one column per feature, named as the model's inputs

Feature names starting with `_` are reserved (the router rejects them).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

META_SCHEMA = pa.schema(
    [
        ("_ts", pa.timestamp("us", tz="UTC")),
        ("_request_id", pa.string()),
        ("_version", pa.string()),
        ("_status", pa.int16()),
        ("_latency_ms", pa.float64()),
        ("_entity_key", pa.string()),
        ("_row", pa.int32()),
        ("_output", pa.float64()),
    ]
)
META_COLUMNS = tuple(META_SCHEMA.names)


def _feature_array(values: list[Any]) -> pa.Array:
    """Numbers (and booleans) as float64 so every part file agrees on the type; anything else as string."""
    try:
        return pa.array(values, type=pa.float64())
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([None if v is None else str(v) for v in values], type=pa.string())


class InferenceLogWriter:
    """Buffers log rows column by column and writes them out as Parquet part files.

    Columns are kept as Python lists (appending is the only per-request work on the event loop); the
    Arrow conversion and the Parquet write run in `write`, which the router calls in a worker thread.
    """

    def __init__(self, log_dir: Path, flush_rows: int) -> None:
        self.log_dir = log_dir
        self.flush_rows = flush_rows
        self._cols: dict[str, list[Any]] = {name: [] for name in META_COLUMNS}
        self._n = 0

    def append(
        self,
        *,
        ts: datetime,
        request_id: str,
        version: str,
        status: int,
        latency_ms: float,
        entity_key: str | None,
        columns: dict[str, list[Any]],
        rows: int,
        outputs: list[float] | None,
    ) -> bool:
        """Add one request's rows; True when the buffer has reached `flush_rows`."""
        cols = self._cols
        cols["_ts"] += [int(ts.timestamp() * 1_000_000)] * rows  # epoch µs: cheap to append and convert
        cols["_request_id"] += [request_id] * rows
        cols["_version"] += [version] * rows
        cols["_status"] += [status] * rows
        cols["_latency_ms"] += [latency_ms] * rows
        cols["_entity_key"] += [entity_key] * rows
        cols["_row"] += range(rows)
        cols["_output"] += outputs if outputs is not None and len(outputs) == rows else [None] * rows
        for name, values in columns.items():
            column = cols.get(name)
            if column is None:
                column = cols[name] = [None] * self._n
            column += values
        self._n += rows
        for column in cols.values():
            if len(column) < self._n:  # a feature this request did not carry
                column += [None] * (self._n - len(column))
        return self._n >= self.flush_rows

    def take(self) -> dict[str, list[Any]]:
        """Hand the buffered columns to a writer and start a new buffer."""
        taken = self._cols
        self._cols = {name: [] for name in META_COLUMNS}
        self._n = 0
        return taken

    def write(self, columns: dict[str, list[Any]]) -> list[Path]:
        """Write taken columns as one part file per UTC day present; returns the files written. Blocking."""
        if not columns["_ts"]:
            return []
        ts = pa.array(columns["_ts"], type=pa.int64()).cast(META_SCHEMA.field("_ts").type)
        arrays = {"_ts": ts} | {
            name: pa.array(columns[name], type=META_SCHEMA.field(name).type) for name in META_COLUMNS[1:]
        }
        features = sorted(n for n in columns if not n.startswith("_"))
        arrays |= {name: _feature_array(columns[name]) for name in features}
        table = pa.table(arrays)
        days = pc.strftime(table["_ts"], format="%Y-%m-%d")
        written = []
        for day in pc.unique(days).to_pylist():
            part = table.filter(pc.equal(days, day))
            part_dir = self.log_dir / f"date={day}"
            part_dir.mkdir(parents=True, exist_ok=True)
            first_ms = int(part["_ts"][0].as_py().timestamp() * 1000)
            name = f"part-{first_ms}-{uuid.uuid4().hex[:12]}.parquet"
            tmp = part_dir / f".{name}.tmp"
            try:
                pq.write_table(part, tmp, compression="zstd")
                os.replace(tmp, part_dir / name)
            except OSError:  # e.g. disk full: leave no half-written part behind
                tmp.unlink(missing_ok=True)
                raise
            written.append(part_dir / name)
        return written


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def part_files(log_dir: Path | str, start: datetime, end: datetime) -> list[Path]:
    """Part files of the day partitions that overlap [start, end)."""
    log_dir = Path(log_dir)
    start, end = _utc(start), _utc(end)
    files: list[Path] = []
    day = start.date()
    while day <= end.date():
        files += sorted((log_dir / f"date={day.isoformat()}").glob("part-*.parquet"))
        day += timedelta(days=1)
    return files


def read_window(
    log_dir: Path | str,
    start: datetime,
    end: datetime,
    features: Sequence[str] | None = None,
    *,
    versions: Sequence[str] | None = None,
    ok_only: bool = True,
) -> pd.DataFrame:
    """Log rows with `start <= _ts < end` (naive datetimes are UTC) as a DataFrame.

    Columns: the meta columns (`_ts`, `_version`, `_status`, `_output`, ...) and the requested feature
    columns (all features when `features` is None); a feature missing from some part files reads as
    null there. `ok_only` keeps only rows answered with a 2xx status (what drift should compare);
    `versions` keeps only rows answered by those versions.
    """
    files = part_files(log_dir, start, end)
    if not files:
        fields = [META_SCHEMA.field(n) for n in META_COLUMNS]
        fields += [pa.field(f, pa.float64()) for f in features or ()]
        return pa.schema(fields).empty_table().to_pandas()
    schema = pa.unify_schemas([pq.read_schema(f) for f in files])
    if features is None:
        features = [n for n in schema.names if not n.startswith("_")]
    missing = [f for f in features if f not in schema.names]
    for name in missing:
        schema = schema.append(pa.field(name, pa.float64()))
    dataset = ds.dataset([str(f) for f in files], schema=schema, format="parquet")
    ts = pc.field("_ts")
    cond = (ts >= pa.scalar(_utc(start), schema.field("_ts").type)) & (
        ts < pa.scalar(_utc(end), schema.field("_ts").type)
    )
    if ok_only:
        cond &= (pc.field("_status") >= 200) & (pc.field("_status") < 300)
    if versions is not None:
        cond &= pc.field("_version").isin(list(versions))
    table = dataset.to_table(columns=[*META_COLUMNS, *features], filter=cond)
    return table.sort_by("_ts").to_pandas()
