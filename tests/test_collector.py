"""HTTP collector on a real uvicorn server and the real broker; its topic drained by the real
ingest stream, so what the collector answered is checked against silver and quarantine."""

import json

import httpx
import pytest
from deltalake import DeltaTable
from kafka import KafkaConsumer

from bench.collector_load import topic_records
from touchpoint.collector import SOURCE_FIELD, KeyRing, TokenBucket, create_app, running_in_thread
from touchpoint.core.catalog import table_path
from touchpoint.core.config import CollectorSettings, load_settings

WEB_KEY = "web-key-0123456789abcdef"
APP_KEY = "app-key-fedcba9876543210"


def collector_settings(settings, **limits):
    return settings.model_copy(update={"collector": CollectorSettings(
        api_keys={"web": WEB_KEY, "app": APP_KEY}, **limits)})


def event(event_id, **fields):
    return {"event_id": event_id, "event_type": "page_view", "event_ts": "2026-03-01T10:00:00+01:00",
            "anonymous_id": "anon-1", "context": {"page_url": "https://shop.example/"}, **fields}



def rows(settings, name):
    return DeltaTable(table_path(name, settings)).to_pyarrow_table().to_pylist()


# ---- pure parts ------------------------------------------------------------------------------------

def test_token_bucket_refills_at_its_rate():
    now = [100.0]
    bucket = TokenBucket(rate=2.0, burst=3, clock=lambda: now[0])
    assert [bucket.take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take() == pytest.approx(0.5)  # one token takes 1/rate seconds
    now[0] += 0.25
    assert bucket.take() == pytest.approx(0.25)
    now[0] += 0.25
    assert bucket.take() == 0.0
    now[0] += 60  # never more than the burst
    assert [bucket.take() for _ in range(4)][-1] == pytest.approx(0.5)


def test_key_ring_finds_the_source_and_nothing_else():
    ring = KeyRing({"web": WEB_KEY, "app": APP_KEY})
    assert ring.source_of(WEB_KEY) == "web"
    assert ring.source_of(APP_KEY) == "app"
    assert ring.source_of(WEB_KEY[:-1]) is None
    assert ring.source_of("") is None
    assert ring.source_of(None) is None


def test_api_keys_from_env_pairs_and_a_keys_file(tmp_path, monkeypatch):
    keys_file = tmp_path / "collector.keys"
    keys_file.write_text("# source=key\napp=app-key-from-file-000000\n\n")
    monkeypatch.setenv("TOUCHPOINT_COLLECTOR__API_KEYS", f"web={WEB_KEY}, partner={APP_KEY}")
    monkeypatch.setenv("TOUCHPOINT_COLLECTOR__API_KEYS_FILE", str(keys_file))
    from touchpoint.collector import load_api_keys

    settings = load_settings()
    assert load_api_keys(settings) == {"web": WEB_KEY, "partner": APP_KEY, "app": "app-key-from-file-000000"}
    assert WEB_KEY not in repr(settings) and WEB_KEY not in str(settings.collector)
    monkeypatch.setenv("TOUCHPOINT_COLLECTOR__API_KEYS", "web=short")
    with pytest.raises(ValueError, match="collector.api_keys") as error:
        load_settings()
    assert "short" not in str(error.value)


def test_no_keys_configured_refuses_to_start(settings):
    with pytest.raises(ValueError, match="no API keys configured"):
        create_app(settings, topic="unused")


# ---- HTTP semantics, real server and broker ----------------------------------------------------------

@pytest.mark.kafka
def test_unauthorised_oversized_and_rate_limited_requests_store_nothing(settings, kafka_topic):
    settings = collector_settings(settings, max_request_bytes=4096, max_batch_events=3, rate_per_second=0.5,
                                  rate_burst=3)
    with running_in_thread(create_app(settings, topic=kafka_topic)) as url, httpx.Client(base_url=url) as http:
        body = json.dumps(event("e-1")).encode()
        assert http.post("/v1/events", content=body).status_code == 401
        wrong = http.post("/v1/events", content=body, headers={"X-API-Key": WEB_KEY + "x"})
        assert (wrong.status_code, wrong.json()["error"], wrong.headers["www-authenticate"]) == (
            401, "unauthorized", "Bearer")

        headers = {"X-API-Key": WEB_KEY}
        big = json.dumps(event("e-big", properties={"note": "x" * 5000})).encode()
        too_big = http.post("/v1/events", content=big, headers=headers)
        assert (too_big.status_code, too_big.json()["error"]) == (413, "request_too_large")

        def chunks():  # no Content-Length: the limit is enforced while reading
            for _ in range(5):
                yield b" " * 1000
        chunked = http.post("/v1/events", content=chunks(), headers=headers)
        assert (chunked.status_code, chunked.json()["error"]) == (413, "request_too_large")

        batch = json.dumps([event(f"b-{i}") for i in range(4)]).encode()
        too_many = http.post("/v1/events", content=batch, headers=headers)
        assert (too_many.status_code, too_many.json()["error"]) == (413, "batch_too_large")

        limited = http.post("/v1/events", content=body, headers=headers)  # the 4th request of a burst of 3
        assert (limited.status_code, limited.json()["error"], limited.headers["retry-after"]) == (
            429, "rate_limited", "2")
        app = {"Authorization": f"Bearer {APP_KEY}"}
        other_source = http.post("/v1/events", content=body, headers=app)
        assert other_source.status_code == 202  # buckets are per key
        deep = http.post("/v1/events", content=b"[" * 3000, headers=app)  # would trip the parser's recursion limit
        assert (deep.status_code, deep.json()["error"]) == (400, "too_deeply_nested")
    assert topic_records(settings.kafka_bootstrap, kafka_topic) == 1  # only the one 202 request reached Kafka


@pytest.mark.kafka
def test_accepted_events_reach_silver_and_rejected_ones_quarantine(spark, settings, kafka_topic):
    from touchpoint.streaming.ingest import start_stream

    settings = collector_settings(settings)
    single = event("s-1", user_id="u-1")
    valid_order = {"event_id": "o-1", "event_type": "order", "event_ts": "2026-03-01T12:00:00Z", "user_id": "u-1",
                   "properties": {"order_id": "A-1", "revenue": 25.5, "currency": "EUR"}}
    no_identifier = {"event_id": "bad-1", "event_type": "page_view", "event_ts": "2026-03-01T10:00:00Z"}
    bad_currency = {**valid_order, "event_id": "bad-2", "properties": {"order_id": "A-2", "revenue": 3,
                                                                        "currency": "XXQ"}}
    with running_in_thread(create_app(settings, topic=kafka_topic)) as url, httpx.Client(base_url=url) as http:
        web, app = {"X-API-Key": WEB_KEY}, {"Authorization": f"Bearer {APP_KEY}"}
        first = http.post("/v1/events", json=single, headers=web)
        assert first.status_code == 202
        assert first.json() == {"accepted": 1, "rejected": 0,
                                "results": [{"index": 0, "event_id": "s-1", "status": "accepted"}]}

        batch = http.post("/v1/events", json=[event("b-1"), no_identifier, valid_order, "a string", bad_currency],
                          headers=app)
        assert batch.status_code == 202
        assert batch.json()["accepted"] == 2 and batch.json()["rejected"] == 3
        verdicts = [(r["index"], r["event_id"], r["status"], r.get("code")) for r in batch.json()["results"]]
        assert verdicts == [(0, "b-1", "accepted", None), (1, "bad-1", "rejected", "no_identifier"),
                            (2, "o-1", "accepted", None), (3, None, "rejected", "not_object"),
                            (4, "bad-2", "rejected", "unknown_currency")]

        garbage = http.post("/v1/events", content=b'{"event_id": "cut', headers=web)
        assert garbage.status_code == 400
        assert (garbage.json()["error"], garbage.json()["stored"]) == ("truncated_json", "quarantine")

    query = start_stream(spark, settings, topic=kafka_topic, query_name="ingest", trigger_once=True)
    query.awaitTermination(300)
    assert query.exception() is None, query.exception()

    silver = {r["event_id"]: r for r in rows(settings, "silver.events")}
    assert sorted(silver) == ["b-1", "o-1", "s-1"]
    assert silver["o-1"]["revenue"] == 25.5 and silver["o-1"]["currency"] == "EUR"
    assert str(silver["s-1"]["event_ts"]) == "2026-03-01 09:00:00+00:00"

    quarantine = sorted((r["error_code"], r["event_id"], r["payload"]) for r in rows(settings, "silver.quarantine"))
    assert [(code, event_id) for code, event_id, _ in quarantine] == [
        ("no_identifier", "bad-1"), ("not_object", None), ("truncated_json", None), ("unknown_currency", "bad-2")]
    payloads = {code: payload for code, _, payload in quarantine}
    assert json.loads(payloads["no_identifier"]) == {**no_identifier, SOURCE_FIELD: "app"}
    assert json.loads(payloads["not_object"]) == "a string"
    assert payloads["truncated_json"] == b'{"event_id": "cut'  # the raw body, byte for byte

    # The authenticated source travels in the raw payload kept in bronze.
    sources = {json.loads(r["payload"]).get("event_id"): json.loads(r["payload"])[SOURCE_FIELD]
               for r in rows(settings, "bronze.events") if r["payload"].startswith(b"{\"event_id\":\"")}
    assert sources == {"s-1": "web", "b-1": "app", "o-1": "app", "bad-1": "app", "bad-2": "app"}


@pytest.mark.kafka
def test_a_key_keeps_the_partition_java_clients_give_it(settings, kafka_topic):
    """murmur2 of the key, as kafka-python's and Java's partitioners: a device's events stay on the
    partition earlier collectors put them on. Some of these keys would land elsewhere by CRC-32."""
    import zlib

    from kafka.partitioner.default import murmur2

    devices = [f"device-{n}" for n in range(12)]
    by_murmur2 = {d: (murmur2(d.encode()) & 0x7FFFFFFF) % 2 for d in devices}
    assert any(by_murmur2[d] != zlib.crc32(d.encode()) % 2 for d in devices)  # the keys tell the two apart
    settings = collector_settings(settings)
    with running_in_thread(create_app(settings, topic=kafka_topic)) as url, httpx.Client(base_url=url) as http:
        answer = http.post("/v1/events", json=[event(f"k-{d}", anonymous_id=d) for d in devices],
                           headers={"X-API-Key": WEB_KEY})
        assert answer.status_code == 202
    consumer = KafkaConsumer(kafka_topic, bootstrap_servers=settings.kafka_bootstrap, auto_offset_reset="earliest",
                             consumer_timeout_ms=5000)
    try:
        placed = {r.key.decode(): r.partition for r in consumer}
    finally:
        consumer.close()
    assert placed == by_murmur2


@pytest.mark.kafka
def test_a_missing_topic_stops_the_start_and_a_lost_topic_answers_503(settings, kafka_topic):
    import re

    from touchpoint.infra import kafka

    settings = collector_settings(settings, produce_timeout_seconds=2)
    missing = f"{kafka_topic}.missing"
    with pytest.raises(RuntimeError, match=re.escape(
            f"the collector did not start: Kafka topic '{missing}' does not exist; create it first")):
        with running_in_thread(create_app(settings, topic=missing)):
            pass
    assert kafka.ensure_topic(missing, partitions=1, settings=settings)  # created now: the start did not create it
    kafka.delete_topic(missing, settings=settings)

    with running_in_thread(create_app(settings, topic=kafka_topic)) as url, httpx.Client(base_url=url) as http:
        headers = {"X-API-Key": WEB_KEY}
        assert http.post("/v1/events", json=event("before"), headers=headers).status_code == 202
        kafka.delete_topic(kafka_topic, settings=settings)
        lost = http.post("/v1/events", json=event("after"), headers=headers)
        assert (lost.status_code, lost.json()["error"], lost.headers["retry-after"]) == (503, "kafka_unavailable", "1")
