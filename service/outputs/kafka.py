"""``kafka:BOOTSTRAP_SERVERS/TOPIC``: records as JSON values keyed by product id (the
entry's form, librdkafka settings after the topic, what a failed delivery does: see
docs/outputs.md, "Kafka").

Written through Bytewax's own connector (``bytewax.connectors.kafka.KafkaSink``, which
produces a batch then ``flush()``-es it). Brokers are separated by ``;`` because ``,``
separates outputs. Delivery errors are never dropped: a message that still fails after
librdkafka's own retries (:data:`DELIVERY_TIMEOUT_MS`) comes back in the delivery
report, and the partition raises :class:`~service.outputs.registry.OutputFailed`, which
stops the run rather than go on with a hole in the topic.

Only plain librdkafka settings may follow the topic: confluent-kafka's Python-level
options (callbacks such as ``error_cb``/``on_delivery``, ``logger``,
``default.topic.config``, ``delivery.report.only.error``) are refused at start in one
line, since a text cannot be a callback. librdkafka's own log lines never reach stderr
raw: the start check discards them (an unreachable broker is one line, not ~200
``%3|...|FAIL|`` lines), and while running they go through the service's logging, at most
one every 5 seconds. Secrets (``sasl.password=...``, any setting whose name looks secret)
are redacted wherever an entry, a setting or a client's error text is shown.
"""

from __future__ import annotations

import logging

from bytewax.outputs import DynamicSink, StatelessSinkPartition

from common.logs import RateLimitedLog
from common.text import redact_text, shown
from service.outputs.registry import OutputFailed, OutputKind

log = logging.getLogger(__name__)
_client_log = RateLimitedLog(log, interval_seconds=5.0)

DELIVERY_TIMEOUT_MS = 30_000
"""How long librdkafka keeps retrying a message before reporting it failed."""
START_TIMEOUT_S = 10.0
"""How long the start check waits for the brokers' metadata."""
PYTHON_OPTIONS = frozenset(
    {"logger", "default.topic.config", "delivery.report.only.error"}
)
"""confluent-kafka options that take Python objects; so do ``*_cb`` and ``on_*``."""


def _plain_setting(key: str) -> bool:
    return not (key in PYTHON_OPTIONS or key.endswith("_cb") or key.startswith("on_"))


def parse_target(arg: str) -> tuple[list[str], str, dict[str, str]]:
    """``HOST:PORT[;HOST:PORT...]/TOPIC[?librdkafka.setting=value&...]``."""
    target, _, query = arg.partition("?")
    servers, slash, topic = target.rpartition("/")
    brokers = [b.strip() for b in servers.split(";") if b.strip()]
    if not slash or not topic.strip() or not brokers:
        raise ValueError("expected kafka:HOST:PORT/TOPIC (several brokers joined by ;)")
    for broker in brokers:
        host, colon, port = broker.rpartition(":")
        if not colon or not host or not port.isdigit():
            raise ValueError(f"broker {broker!r} is not HOST:PORT")
    config = {}
    for pair in filter(None, query.split("&")):
        key, eq, value = pair.partition("=")
        key = key.strip()
        if not eq:
            raise ValueError(f"{shown(pair)!r} is not a librdkafka setting=value")
        if not key:
            raise ValueError("a librdkafka setting without a name ('=...')")
        if not _plain_setting(key):
            raise ValueError(
                f"{shown(key)} is not a plain librdkafka setting (callbacks and other "
                "Python objects cannot be given as text)"
            )
        config[key] = value.strip()
    return brokers, topic.strip(), config


class _DeliveryErrors:
    """Collects failed deliveries from librdkafka's delivery reports."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def on_delivery(self, err, msg) -> None:
        if err is not None:
            self.errors.append(f"{err.str()} (topic {msg.topic()}, key {msg.key()!r})")

    @staticmethod
    def on_client_error(err) -> None:
        _client_log.warning("kafka: %s", err.str())


class _ClientLog:
    """librdkafka's log lines, through the service's logging, rate-limited (a broker
    that went away is logged by librdkafka on every reconnection attempt)."""

    def __init__(self, config: dict) -> None:
        self._config = config

    def log(self, level: int, msg: str, *args: object) -> None:
        text = redact_text(msg % args if args else msg, self._config)
        _client_log.log(level, "kafka: %s", shown(text, 300))


def _silent() -> logging.Logger:
    """A logger that drops everything: librdkafka's lines during the start check."""
    quiet = logging.getLogger(f"{__name__}.start_check")
    quiet.propagate = False
    if not quiet.handlers:
        quiet.addHandler(logging.NullHandler())
    return quiet


class _KafkaPartition(StatelessSinkPartition):
    def __init__(self, inner, errors: _DeliveryErrors) -> None:
        self._inner = inner
        self._errors = errors

    def write_batch(self, items: list) -> None:
        from bytewax.connectors.kafka import KafkaSinkMessage

        messages = [
            KafkaSinkMessage(r.product_id.encode(), r.to_json().encode()) for r in items
        ]
        try:
            self._inner.write_batch(messages)
        except Exception as exc:  # produce() refused it: too large, queue full...
            raise OutputFailed(f"Kafka refused a record: {exc}") from exc
        self._check()

    def _check(self) -> None:
        if self._errors.errors:
            first = self._errors.errors[0]
            count = len(self._errors.errors)
            raise OutputFailed(f"{count} Kafka deliveries failed, the first: {first}")

    def close(self) -> None:
        self._inner.close()
        self._check()


class KafkaRecordSink(DynamicSink):
    """Records to ``topic``, keyed by product id, values the records' JSON."""

    def __init__(
        self, brokers: list[str], topic: str, config: dict | None = None
    ) -> None:
        self.brokers = brokers
        self.topic = topic
        self.config = dict(config or {})

    def build(self, step_id: str, worker_index: int, worker_count: int):
        from bytewax.connectors.kafka import KafkaSink

        errors = _DeliveryErrors()
        config = {
            "delivery.timeout.ms": DELIVERY_TIMEOUT_MS,
            **self.config,
            "on_delivery": errors.on_delivery,
            "error_cb": errors.on_client_error,
            "logger": _ClientLog(self.config),
        }
        inner = KafkaSink(self.brokers, self.topic, add_config=config)
        return _KafkaPartition(inner.build(step_id, worker_index, worker_count), errors)


def check_target(arg: str | None) -> str:
    """Well-formed, and the brokers answer a metadata request within START_TIMEOUT_S.

    librdkafka's log lines are discarded here: the one-line refusal says it all.
    Every message is freed of the secret settings' values before it is shown.
    """
    brokers, topic, config = parse_target(arg)
    from confluent_kafka import KafkaException, Producer
    from confluent_kafka.admin import AdminClient

    client = {"bootstrap.servers": ",".join(brokers), **config, "logger": _silent()}
    try:  # librdkafka checks the names and values of settings
        Producer(client)
    except KafkaException as exc:
        raise ValueError(redact_text(exc.args[0].str(), config)) from None
    except Exception as exc:  # confluent-kafka's own checks: TypeError, ValueError
        raise ValueError(redact_text(str(exc), config)) from None
    admin = AdminClient(client)
    try:
        admin.list_topics(timeout=START_TIMEOUT_S)
    except Exception as exc:
        why = redact_text(str(exc), config)
        raise ValueError(f"brokers {';'.join(brokers)} did not answer: {why}") from None
    query = "&".join(f"{k}={v}" for k, v in config.items())
    return f"{';'.join(brokers)}/{topic}" + (f"?{query}" if query else "")


def kafka_targets(arg: str | None) -> list[tuple]:
    """One target per broker: the same topic through any broker of a cluster is the
    same topic (brokers are compared as written, host names lower-cased)."""
    brokers, topic, _ = parse_target(arg)
    return [("the same Kafka topic", topic, broker.lower()) for broker in brokers]


KAFKA = OutputKind(
    "kafka",
    build=lambda arg, shutdown: KafkaRecordSink(
        *parse_target(arg)
    ),  # brokers, topic, config
    arg="required",
    help="kafka:HOST:PORT/TOPIC",
    check=check_target,
    targets=kafka_targets,
)
