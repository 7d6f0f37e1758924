"""Toxic parsing and the timing rules of the fault proxy, without sockets."""

from __future__ import annotations

import random

import pytest

from agentverify.faults._gojson import dumps
from agentverify.faults.toxics import (
    TOXIC_TYPES,
    ApiError,
    BandwidthSchedule,
    ToxicSpec,
    latency_delay,
    parse_direction,
    parse_toxic,
    slice_offsets,
    update_toxic,
)


def parse(body: bytes, taken: tuple[str, ...] = ()) -> ToxicSpec:
    return parse_toxic(body, exists=lambda name: name in taken)


def error(body: bytes, taken: tuple[str, ...] = ()) -> tuple[int, str]:
    with pytest.raises(ApiError) as info:
        parse(body, taken)
    return info.value.status, info.value.message


# --- parsing ------------------------------------------------------------------------

def test_defaults_stream_toxicity_name_and_zero_attributes() -> None:
    spec = parse(b'{"type": "latency"}')
    assert (spec.name, spec.stream, spec.toxicity, spec.attributes) == \
        ("latency_downstream", "downstream", 1.0, {"latency": 0, "jitter": 0})
    assert parse(b'{"type": "slicer", "stream": "upstream"}').name == "slicer_upstream"


def test_every_type_has_its_attributes_in_toxiproxys_order() -> None:
    expected = {"latency": ["latency", "jitter"], "bandwidth": ["rate"], "slow_close": ["delay"],
                "timeout": ["timeout"], "reset_peer": ["timeout"], "noop": [],
                "slicer": ["average_size", "size_variation", "delay"], "limit_data": ["bytes"]}
    for toxic_type, attrs in expected.items():
        assert list(parse(b'{"type": "%s"}' % toxic_type.encode()).attributes) == attrs
    assert set(TOXIC_TYPES) == set(expected)


def test_unknown_keys_ignored_null_attributes_accepted_and_keys_case_insensitive() -> None:
    spec = parse(b'{"Type": "bandwidth", "NAME": "bw", "attributes": {"Rate": 7, "burst": 3}, "extra": 1}')
    assert (spec.name, spec.attributes) == ("bw", {"rate": 7})
    assert parse(b'{"type": "latency", "attributes": null}').attributes == {"latency": 0, "jitter": 0}
    assert parse(b'{"type": "latency", "toxicity": null, "stream": null}').stream == "downstream"


def test_errors_in_toxiproxys_order() -> None:
    assert error(b"") == (400, "bad request body: EOF")
    assert error(b'{"type": "latency"')[1] == "bad request body: unexpected EOF"
    # The stream is checked before the type, the type before the name, the name before attributes.
    assert error(b'{"type": "nope", "stream": "sideways"}') == \
        (400, "stream was invalid, can be either upstream or downstream")
    assert error(b'{"type": "nope"}') == (400, "invalid toxic type")
    assert error(b'{"type": "latency", "attributes": {"latency": "x"}}', taken=("latency_downstream",)) == \
        (409, "toxic already exists")
    status, message = error(b'{"type": "latency", "attributes": {"latency": 1.5}}')
    assert status == 400 and "cannot unmarshal number 1.5" in message and "latency" in message
    assert error(b'{"type": "latency", "attributes": 5}')[0] == 400
    assert error(b'{"type": "latency", "toxicity": "high"}')[0] == 400


def test_an_explicit_empty_stream_is_invalid_but_an_empty_name_gets_the_default() -> None:
    assert error(b'{"type": "noop", "stream": ""}')[0] == 400
    assert parse(b'{"type": "noop", "name": ""}').name == "noop_downstream"


def test_stream_is_case_insensitive_and_kept_as_given() -> None:
    assert parse_direction("UpStream") == 0 and parse_direction("downstream") == 1
    spec = parse(b'{"type": "noop", "stream": "UpStream"}')
    assert (spec.stream, spec.direction, spec.name) == ("UpStream", 0, "noop_UpStream")


def test_update_merges_attributes_and_keeps_toxicity_when_omitted() -> None:
    spec = parse(b'{"type": "latency", "toxicity": 0.5, "attributes": {"latency": 100, "jitter": 10}}')
    assert update_toxic(spec, b'{"attributes": {"latency": 1000}}') == (0.5, {"latency": 1000, "jitter": 10})
    assert update_toxic(spec, b'{"toxicity": 0.25, "name": "x", "type": "slicer"}') == \
        (0.25, {"latency": 100, "jitter": 10})
    assert update_toxic(spec, b'{"attributes": null}')[1] == {"latency": 100, "jitter": 10}
    with pytest.raises(ApiError) as info:
        update_toxic(spec, b'{"attributes": {"jitter": "big"}}')
    assert info.value.status == 400


def test_toxic_json_is_toxiproxys() -> None:
    spec = parse(b'{"type": "latency", "toxicity": 0.2, "attributes": {"latency": 100}}')
    assert dumps(spec.to_json()) == ('{"attributes":{"latency":100,"jitter":0},"name":"latency_downstream",'
                                     '"type":"latency","stream":"downstream","toxicity":0.2}')
    assert dumps(parse(b'{"type": "noop"}').to_json()).endswith('"toxicity":1}')


# --- timing rules -----------------------------------------------------------------------

def test_latency_jitter_stays_within_plus_minus_jitter() -> None:
    rng = random.Random(1)
    delays = [latency_delay(100, 20, rng) for _ in range(2000)]
    assert min(delays) >= 0.08 and max(delays) < 0.12
    assert min(delays) < 0.085 and max(delays) > 0.115  # the whole range is used
    assert latency_delay(100, 0, rng) == 0.1


def test_bandwidth_splits_large_chunks_and_carries_its_debt() -> None:
    schedule = BandwidthSchedule(1000)  # 1 MB/s: pieces of 100 KB every 100 ms
    pieces, tail_wait = schedule.plan(480_000)
    assert pieces == [(0.1, 100_000)] * 4 and tail_wait == pytest.approx(0.08)
    schedule.settle(0.081)  # the timer overshot by 1 ms
    pieces, tail_wait = schedule.plan(10_000)
    assert pieces == [] and tail_wait == pytest.approx(0.009)


def test_bandwidth_total_time_matches_the_rate() -> None:
    schedule = BandwidthSchedule(50)  # 50 KB/s
    total = 0.0
    for _ in range(20):  # 20 chunks of 16 KB = 320 KB
        pieces, tail = schedule.plan(16_000)
        total += sum(wait for wait, _ in pieces) + tail
        schedule.settle(tail)
    assert total == pytest.approx(320_000 / 50_000, rel=0.01)


def test_slicer_offsets_cover_the_range_in_order() -> None:
    rng = random.Random(3)
    offsets = slice_offsets(0, 480_000, 1024, 512, rng)
    sizes = [offsets[i + 1] - offsets[i] for i in range(0, len(offsets), 2)]
    assert offsets[0] == 0 and offsets[-1] == 480_000
    assert all(offsets[i] == offsets[i + 1] for i in range(1, len(offsets) - 1, 2))
    assert all(size > 0 for size in sizes) and sum(sizes) == 480_000
    assert 480 / 2 <= len(sizes) <= 480 / 2 + 480  # Toxiproxy's own bound in slicer_test.go


def test_slicer_zero_variation_gives_exact_slices_and_degenerate_settings_terminate() -> None:
    rng = random.Random(0)
    offsets = slice_offsets(0, 24, 1, 0, rng)
    assert len(offsets) // 2 == 24
    assert slice_offsets(0, 0, 10, 0, rng) == [0, 0]
    # Go recurses forever with average_size 0 and panics on a variation wider than the range.
    assert len(slice_offsets(0, 100, 0, 0, rng)) // 2 == 100
    wild = slice_offsets(0, 50, 2, 500, rng)
    assert wild[0] == 0 and wild[-1] == 50
