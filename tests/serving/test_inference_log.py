"""Inference log: Parquet part files per UTC day, read back by window and features."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from serving.inference_log import InferenceLogWriter, read_window


def test_rows_round_trip_by_window_day_and_status(tmp_path) -> None:
    writer = InferenceLogWriter(tmp_path, flush_rows=3)
    day1 = datetime(2026, 1, 1, 23, 59, 59, tzinfo=UTC)
    day2 = day1 + timedelta(seconds=2)
    writer.append(
        ts=day1,
        request_id="a",
        version="v1",
        status=200,
        latency_ms=1.5,
        entity_key=None,
        columns={"x": [1, 2], "region": [3.0, 4.0]},
        rows=2,
        outputs=[0.1, 0.2],
    )
    full = writer.append(
        ts=day2,
        request_id="b",
        version="v2",
        status=500,
        latency_ms=2.5,
        entity_key="k",
        columns={"x": [5], "region": [6.0]},
        rows=1,
        outputs=None,
    )
    assert full
    files = writer.write(writer.take())
    assert sorted(f.parent.name for f in files) == ["date=2026-01-01", "date=2026-01-02"]
    assert not list(tmp_path.rglob(".*.tmp"))

    everything = read_window(tmp_path, day1, day2 + timedelta(seconds=1), ok_only=False)
    assert list(everything["_request_id"]) == ["a", "a", "b"]
    assert list(everything["x"]) == [1.0, 2.0, 5.0]
    assert everything["_output"].isna().tolist() == [False, False, True]

    ok = read_window(tmp_path, day1, day2 + timedelta(seconds=1), ["x"])
    assert list(ok.columns[-1:]) == ["x"] and list(ok["_version"]) == ["v1", "v1"]
    assert read_window(tmp_path, day2 + timedelta(days=3), day2 + timedelta(days=4), ["x"]).empty


def test_feature_missing_from_older_parts_reads_as_null(tmp_path) -> None:
    writer = InferenceLogWriter(tmp_path, flush_rows=100)
    t0 = datetime(2026, 3, 1, 12, tzinfo=UTC)
    writer.append(
        ts=t0,
        request_id="a",
        version="v1",
        status=200,
        latency_ms=1,
        entity_key=None,
        columns={"x": [1]},
        rows=1,
        outputs=[0.5],
    )
    writer.write(writer.take())
    writer.append(
        ts=t0 + timedelta(seconds=1),
        request_id="b",
        version="v1",
        status=200,
        latency_ms=1,
        entity_key=None,
        columns={"x": [2], "y": [3]},
        rows=1,
        outputs=[0.5],
    )
    writer.write(writer.take())
    frame = read_window(tmp_path, t0, t0 + timedelta(minutes=1), ["x", "y"])
    assert frame["y"].isna().tolist() == [True, False]
