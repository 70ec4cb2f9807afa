"""Chooses and builds the dataflow's input from the settings: live, local exchange or replay."""

from __future__ import annotations

import logging
from collections.abc import Callable

from bytewax.inputs import FixedPartitionedSource, Source, StatefulSourcePartition

from coinbase.feeds import DEFAULT_PRODUCTS
from coinbase.rest import REPLAY_NO_AUDITS
from service.runtime import Shutdown
from service.settings import ConfigError, Settings

log = logging.getLogger(__name__)


def build_source(
    settings: Settings, shutdown: Shutdown
) -> tuple[FixedPartitionedSource, list[str]]:
    """The input for these settings and the products it serves; refuses what cannot run.
    ``shutdown`` ends the process when every product of a live feed failed for good (one
    line, the outputs' closers run), and removes what a replay prepared on an early exit."""
    if settings.replay is not None:  # every format, one file or many: importers.replay
        # imported here, not at the top: a live run neither needs the importers nor
        # pays for them (0.2 s of a 0.7 s start, in every process of a cluster)
        from importers.replay import ReplayInputError, open_replay
        from recording.format import RecordingError

        try:
            source, prepared = open_replay(
                settings.replay,
                settings.products,
                report=settings.replay_report,
                audits=settings.replay_audits,
            )
        except (RecordingError, ReplayInputError) as exc:
            raise ConfigError(f"ORDERBOOK_REPLAY: {exc}") from None
        if settings.replay_audits and not getattr(source, "recorded_audits", False):
            # once, when the run starts (log_resumes), so that a start that fails
            # later (a dashboard port in use) still says one line only
            source.start_notice = REPLAY_NO_AUDITS  # audits asked, none recorded
        shutdown.add_closer(
            prepared.close
        )  # a converted recording removed on a signal too
        return source, list(source.products)
    # The live feed's modules are imported here, not at the top: a replay neither needs
    # them nor pays for them (0.08 s of a 0.29 s start, in every process of a cluster).
    from coinbase.auth import Credentials
    from coinbase.runner import LoopRunner
    from coinbase_source import CoinbaseSource
    from local_exchange import embedded

    products = list(settings.products or DEFAULT_PRODUCTS)
    # The flow's loop, run by the worker's polls: no feed thread (coinbase.runner)
    runner = LoopRunner(inline=True)
    if settings.feed == "sim":
        url = settings.ws_url or embedded.exchange_url(
            products, settings.sim_depth, settings.sim_rate
        )
        source = CoinbaseSource(
            products,
            feed="sim",
            url=url,
            watchdog_seconds=settings.watchdog_seconds,
            on_stats=_stats_observer(settings),
            max_message_bytes=settings.max_message_bytes,
            on_all_failed=shutdown.failed,
            **_audit_options(
                settings, None if settings.ws_url else embedded.rest_url()
            ),
            poll_together=True,  # see CoinbaseSource: a poll per connection
            runner=runner,
        )
        return source, products
    credentials = None
    if settings.feed == "exchange-auth":
        try:
            credentials = Credentials.from_env()
        except ValueError as exc:
            raise ConfigError(f"ORDERBOOK_FEED=exchange-auth: {exc}") from None
    source = CoinbaseSource(
        products,
        feed=settings.feed,
        url=settings.ws_url,
        credentials=credentials,
        watchdog_seconds=settings.watchdog_seconds,
        on_stats=_stats_observer(settings),
        max_message_bytes=settings.max_message_bytes,
        on_all_failed=shutdown.failed,
        **_audit_options(settings),
        poll_together=True,
        runner=runner,
    )
    return source, products


def _audit_options(settings: Settings, local_rest_url: str | None = None) -> dict:
    """The REST audit's options of the source. Its REST base: ``ORDERBOOK_REST_URL``,
    else the embedded local exchange's for sim, else the source's default for its
    WebSocket URL (:func:`coinbase.rest.default_rest_url`)."""
    return {
        "audit_interval": settings.audit_interval,
        "audit_levels": settings.audit_levels,
        "rest_url": settings.rest_url or local_rest_url,
        "audit_rate": settings.audit_rate,
    }


def _stats_observer(settings: Settings):
    """The partitions' connection counters as metrics, when metrics are served."""
    if not settings.metrics_enabled:
        return None
    from service.metrics import observe_partition_stats

    return observe_partition_stats


class ResumeLoggingSource(FixedPartitionedSource):
    """Wraps a partitioned source to log, per partition, that a run resumed.

    Bytewax hands each partition its saved state on resume; the partition then starts with
    a reset, so its books are rebuilt from fresh snapshots. Saying so makes a resumed run
    distinguishable from a fresh one in the logs. Nothing else changes: the partitions
    are the inner source's own.
    """

    def __init__(
        self,
        inner: FixedPartitionedSource,
        on_build: Callable[[], object] | None = None,
    ) -> None:
        self.inner = inner
        self.on_build = on_build
        """Called at every partition built: the flow runs (the stall watchdog starts)."""
        self.start_notice: str | None = getattr(inner, "start_notice", None)
        """A warning the inner source has for the run, said at its first partition."""

    def list_parts(self) -> list[str]:
        return self.inner.list_parts()

    def build_part(
        self, step_id: str, for_part: str, resume_state: object
    ) -> StatefulSourcePartition:
        if resume_state is not None:
            log.info(
                "%s: resuming from recovery state; the book is rebuilt from a fresh "
                "snapshot",
                for_part,
            )
        notice, self.start_notice = self.start_notice, None
        if notice is not None:
            log.warning("%s", notice)
        part = self.inner.build_part(step_id, for_part, resume_state)
        if self.on_build is not None:
            self.on_build()
        return part


def log_resumes(source: Source, on_build: Callable[[], object] | None = None) -> Source:
    """``source`` wrapped by :class:`ResumeLoggingSource` when it is partitioned;
    ``on_build`` is called at every partition built."""
    if isinstance(source, FixedPartitionedSource) and not isinstance(
        source, ResumeLoggingSource
    ):
        return ResumeLoggingSource(source, on_build)
    return source
