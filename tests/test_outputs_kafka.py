"""The Kafka output against librdkafka's mock cluster (a real broker protocol on
127.0.0.1), and delivery errors that must stop the run, never vanish."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from common.validation import ConfigError
from orderbook import OrderBook
from service.outputs import OutputFailed, parse_outputs
from service.outputs.kafka import KafkaRecordSink
from tests.support.flow import (
    FlowProcess,
    by_product,
    flow_env,
    read_jsonl,
    run_script,
)
from tests.support.outputs import small_recording

pytestmark = pytest.mark.slow


@pytest.fixture
def mock_cluster():
    """Bootstrap servers of a one-broker mock cluster, alive while the fixture is."""
    from confluent_kafka import Producer

    holder = Producer({"test.mock.num.brokers": 1})
    brokers = holder.list_topics(timeout=10).orig_broker_name.split("/")[0]
    yield brokers
    del holder


def consume(brokers: str, topic: str, expected: int, timeout: float = 60) -> list:
    """Every record of ``topic`` from its start, up to ``expected`` of them.

    The consumer is assigned every partition of the topic instead of subscribing as a
    group member: the mock cluster's group join took 3.1 s per call, the assignment
    0.06 s (the same records, in the same order per partition)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": brokers,
            "group.id": f"test-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
        }
    )
    got = []
    deadline = time.monotonic() + timeout
    try:
        partitions = {}
        while not partitions and time.monotonic() < deadline:
            found = consumer.list_topics(topic, timeout=10).topics.get(topic)
            if found is not None and found.error is None:
                partitions = found.partitions
            else:
                time.sleep(0.05)  # the topic is not there yet: poll its metadata
        consumer.assign(
            [TopicPartition(topic, n, OFFSET_BEGINNING) for n in partitions]
        )
        while partitions and len(got) < expected and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                got.append((msg.key().decode(), json.loads(msg.value())))
    finally:
        consumer.close()
    return got


def test_a_replay_into_kafka_gives_the_records_of_its_jsonl(tmp_path, mock_cluster):
    recording = small_recording(tmp_path / "session.jsonl.gz", 1000)
    out = tmp_path / "a.jsonl"
    env = flow_env(
        ORDERBOOK_REPLAY=str(recording),
        ORDERBOOK_SPREAD_THRESHOLD="0",
        ORDERBOOK_DEPTH_LEVELS="3",
        ORDERBOOK_DEPTH_INTERVAL="0.1",
        ORDERBOOK_OUTPUT=f"jsonl:{out},kafka:{mock_cluster}/orderbook",
    )
    flow = FlowProcess(["bytewax.run", "dataflow:flow"], env)
    assert flow.finish(timeout=120) == 0, flow.stderr[-3000:]
    records = read_jsonl(out)
    assert {r["type"] for r in records} == {"summary", "depth"}
    got = consume(mock_cluster, "orderbook", len(records))
    assert all(key == value["product_id"] for key, value in got)
    # one product, one key, one partition: each product's records in order
    assert by_product([value for _, value in got]) == by_product(records)


def test_unreachable_brokers_are_refused_at_start():
    with pytest.raises(ConfigError, match="did not answer"):
        import service.outputs.kafka as kafka

        old, kafka.START_TIMEOUT_S = kafka.START_TIMEOUT_S, 1.0
        try:
            parse_outputs("kafka:127.0.0.1:1/orderbook")
        finally:
            kafka.START_TIMEOUT_S = old


def test_a_failed_delivery_stops_the_output_instead_of_vanishing():
    """Nothing listens on port 1: librdkafka retries until its delivery timeout, then
    reports the message failed, and the partition raises rather than go on."""
    sink = KafkaRecordSink(["127.0.0.1:1"], "orderbook", {"delivery.timeout.ms": 1000})
    part = sink.build("out", 0, 1)
    book = OrderBook("BTC-USD")
    book.apply_snapshot([("100", "1")], [("101", "1")])
    with pytest.raises(OutputFailed, match="1 Kafka deliveries failed.*timed out"):
        part.write_batch([book.summary(feed="sim")])


def test_a_broker_that_goes_away_mid_run_stops_the_run_in_one_line(tmp_path):
    """The mock cluster is destroyed under a running flow: librdkafka retries for the
    delivery timeout given after the topic, then the run stops, status 1, one line."""
    from confluent_kafka import Producer

    holder = Producer({"test.mock.num.brokers": 1})
    brokers = holder.list_topics(timeout=10).orig_broker_name.split("/")[0]
    out = tmp_path / "a.jsonl"
    env = flow_env(
        ORDERBOOK_FEED="sim",
        ORDERBOOK_SIM_DEPTH="100",
        ORDERBOOK_SPREAD_THRESHOLD="0",
        ORDERBOOK_OUTPUT=f"jsonl:{out},kafka:{brokers}/orderbook?delivery.timeout.ms=1500",
    )
    flow = FlowProcess(["bytewax.run", "dataflow:flow"], env)
    try:
        flow.wait_for(
            lambda: len(consume(brokers, "orderbook", 5, 5)) >= 5, 60, "records"
        )
    finally:
        del holder  # the broker is gone
    assert flow.finish(timeout=60) == 1, flow.stderr[-3000:]
    failed = [ln for ln in flow.stderr.splitlines() if "failed, stopping" in ln]
    assert len(failed) == 1 and "Kafka deliveries failed" in failed[0], flow.stderr
    assert "Traceback" not in flow.stderr


def test_the_same_kafka_topic_twice_is_refused(mock_cluster):
    """Finding 7: two entries writing to one topic of one cluster wrote every record
    twice (here they differ only by a client setting)."""
    raw = f"kafka:{mock_cluster}/orderbook,kafka:{mock_cluster}/orderbook?acks=all"
    with pytest.raises(ConfigError, match="same Kafka topic"):
        parse_outputs(raw)
    both = parse_outputs(f"kafka:{mock_cluster}/a,kafka:{mock_cluster}/b").specs
    assert len(both) == 2


def test_an_unreachable_broker_is_refused_in_one_line_without_librdkafka_logs(capfd):
    """Finding 23: the start check printed ~196 librdkafka lines on stderr before its
    one-line error. (Finding 9: the password given stays out of the line.)"""
    import service.outputs.kafka as kafka

    old, kafka.START_TIMEOUT_S = kafka.START_TIMEOUT_S, 2.0
    try:
        with pytest.raises(ConfigError) as err:
            parse_outputs("kafka:127.0.0.1:1/orderbook?sasl.password=hunter2")
    finally:
        kafka.START_TIMEOUT_S = old
    message = str(err.value)
    assert "did not answer" in message and "\n" not in message
    assert "hunter2" not in message and "sasl.password=***" in message
    captured = capfd.readouterr()
    assert "rdkafka" not in captured.err + captured.out, captured.err[:2000]


def test_a_kafka_password_never_reaches_the_failure_line(tmp_path):
    """Finding 9: a delivery failure mid-run printed the output's spec, password and
    all. The fan-out is driven in a process of its own (its failure path ends the
    process), against a mock cluster destroyed under it."""
    script = """
import sys
from confluent_kafka import Producer
from orderbook import OrderBook
from service.outputs import fan_out, parse_outputs
from service.runtime import SHUTDOWN

holder = Producer({"test.mock.num.brokers": 1})
brokers = holder.list_topics(timeout=10).orig_broker_name.split("/")[0]
raw = f"kafka:{brokers}/orderbook?delivery.timeout.ms=1000&sasl.password=hunter2"
part = fan_out(parse_outputs(raw).specs, SHUTDOWN).build("out", 0, 1)
book = OrderBook("BTC-USD")
book.apply_snapshot([("100", "1")], [("101", "1")])
del holder  # the broker is gone
part.write_batch([(0, book.summary(feed="sim"))])
print("not stopped")
"""
    proc = run_script(script, timeout=60)
    assert proc.returncode == 1, proc.stderr[-3000:]
    failed = [ln for ln in proc.stderr.splitlines() if "failed, stopping" in ln]
    assert len(failed) == 1 and "Kafka deliveries failed" in failed[0], proc.stderr
    assert "sasl.password=***" in failed[0]
    assert "hunter2" not in proc.stderr + proc.stdout
