"""Shadow pair store: cursor paging over the ring, eviction, and the append-only JSON-lines file."""

from __future__ import annotations

import orjson

from serving.pairs import PairStore


def test_pages_follow_the_cursor_and_report_eviction(tmp_path) -> None:
    store = PairStore(tmp_path, keep=3)
    for i in range(5):
        store.add({"ts": 1_800_000_000.0 + i, "request_id": f"r{i}"})
    first = orjson.loads(store.page(None, None, limit=2, pending=0))
    assert [p["seq"] for p in first["pairs"]] == [2, 3] and first["next"] == 3 and first["pending"] == 0
    assert orjson.loads(store.page(first["next"], None, limit=10))["pairs"][0]["request_id"] == "r4"
    assert orjson.loads(store.page(0, None, limit=10))["truncated"]
    empty = orjson.loads(store.page(4, None, limit=10))
    assert empty["pairs"] == [] and empty["next"] == 4
    assert [p["seq"] for p in orjson.loads(store.page(None, 1_800_000_003.5, 10))["pairs"]] == [4]

    store.close()
    lines = [orjson.loads(x) for f in tmp_path.glob("pairs-*.jsonl") for x in f.read_bytes().splitlines()]
    assert [p["seq"] for p in lines] == [0, 1, 2, 3, 4]
    assert {p["epoch"] for p in lines} == {store.epoch}
