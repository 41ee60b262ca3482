"""Shadow pairs: the incumbent's and the candidate's answers to the same input, kept for the canary.

Each pair is appended as one JSON line to `pairs_dir/pairs-YYYY-MM-DD.jsonl` (UTC day) and kept in a
bounded in-memory ring that `GET /admin/pairs?since=SEQ` pages through. Why JSON lines and not Parquet:
pairs are read incrementally by cursor while the canary bakes, they are a small fraction of traffic, and
a JSON line is complete the moment it is written (no footer), so a crash loses at most the unflushed
tail. A record:

    seq                      int, increasing per router process (the paging cursor)
    epoch                    router process id (uuid); a new epoch means seq restarted
    request_id, ts           the client request; ts in unix seconds
    inputs_digest            blake2b-128 of the request's `inputs` JSON
    inputs                   feature columns {name: [values per row]}
    primary                  "incumbent" or "candidate": which side answered the client
    incumbent, candidate     versions
    incumbent_output, candidate_output          per-row scores (null when unreadable / failed)
    incumbent_latency_ms, candidate_latency_ms  upstream call latencies (injected latency included)
    incumbent_status, candidate_status          HTTP status of each call
    disagreeing_rows         rows whose decisions (score >= threshold) differ; null unless both are 200
"""

from __future__ import annotations

import contextlib
import uuid
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson


class PairStore:
    """Append-only pair file plus the ring the admin API serves.

    The ring holds each pair as its encoded JSON line (with seq and ts beside it for paging), not as a
    dict: tens of thousands of nested dicts would make every full garbage collection, and so the router's
    tail latency, slower.
    """

    def __init__(self, pairs_dir: Path, keep: int, on_lost: Callable[[int], None] = lambda _n: None) -> None:
        self.pairs_dir = pairs_dir
        self.epoch = uuid.uuid4().hex
        self.on_lost = on_lost
        self._ring: deque[tuple[int, float, bytes]] = deque(maxlen=keep)
        self._next_seq = 0
        self._day: str | None = None
        self._file: IO[bytes] | None = None
        self._buffered = 0  # lines written to the file object since its last successful flush

    def add(self, record: dict[str, Any]) -> int:
        """Number the record, keep it, and append it to today's file (buffered; see flush). Returns seq.

        A write that fails (disk full) never fails the caller: the pair stays in the ring (the canary still
        reads it), the lines not on disk are reported to ``on_lost``, and the next add reopens the file.
        """
        seq = self._next_seq
        self._next_seq += 1
        line = orjson.dumps({"seq": seq, "epoch": self.epoch, **record})
        self._ring.append((seq, record["ts"], line))
        day = datetime.fromtimestamp(record["ts"], UTC).strftime("%Y-%m-%d")
        try:
            if day != self._day or self._file is None:
                self.close()
                self.pairs_dir.mkdir(parents=True, exist_ok=True)
                self._file = open(self.pairs_dir / f"pairs-{day}.jsonl", "ab")  # noqa: SIM115 - kept open
                self._day = day
            self._file.write(line + b"\n")
            self._buffered += 1
        except OSError:
            self._lose(1)
        return seq

    def _lose(self, extra: int) -> None:
        """The buffered lines (and ``extra``) did not reach the disk: report them, drop the file object."""
        lost, self._buffered = self._buffered + extra, 0
        file, self._file = self._file, None
        if file is not None:
            with contextlib.suppress(OSError):
                file.close()
        self.on_lost(lost)

    def page(self, since: int | None, since_ts: float | None, limit: int, **extra: Any) -> bytes:
        """JSON of the pairs with seq > since (and ts >= since_ts), oldest first, at most `limit`.

        `{"epoch", "next", "truncated", "pairs", **extra}`: `next` is the cursor for the following call;
        `truncated` says pairs after `since` were already evicted from the ring (read the file for those).
        """
        ring = self._ring
        first = ring[0][0] if ring else self._next_seq
        start = 0 if since is None else max(0, since + 1 - first)
        lines = []
        last = since if since is not None else first - 1
        for i in range(start, len(ring)):
            seq, ts, line = ring[i]
            if since_ts is not None and ts < since_ts:
                continue
            lines.append(line)
            last = seq
            if len(lines) >= limit:
                break
        head = {"epoch": self.epoch, "next": last, "truncated": since is not None and since + 1 < first, **extra}
        return orjson.dumps(head)[:-1] + b',"pairs":[' + b",".join(lines) + b"]}"

    def flush(self) -> None:
        if self._file is not None:
            try:
                self._file.flush()
                self._buffered = 0
            except OSError:
                self._lose(0)

    def close(self) -> None:
        if self._file is not None:
            self.flush()
        if self._file is not None:
            self._file.close()
            self._file = None
