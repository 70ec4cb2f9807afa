"""Issue 19's "Done when", end to end: the real service audits its books against the local
exchange's REST books while it runs.

One run (tests/support/audit_run.py, started with the session by tests/conftest.py so
that its two minutes overlap the other tests; these tests are collected last) serves all
three: silent corruption of three products beside two clean ones, REST errors of every
kind once the corruptions are repaired, and audits every second of every product for
over two minutes at 200 update batches a second per product.
"""

from __future__ import annotations

import re
from collections import Counter
from datetime import datetime
from decimal import Decimal

import pytest

from tests.support.audit_run import (
    AUDIT_RATE,
    AUDIT_SECONDS,
    CLEAN,
    CORRUPTED,
    PRODUCTS,
    REST_ERRORS,
)
from tests.support.exchange_client import ARRIVAL_JITTER, busiest_window

pytestmark = pytest.mark.slow  # processes, sockets and threads


def _t(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _levels(levels: list) -> list[tuple[Decimal, Decimal]]:
    return [(Decimal(p), Decimal(s)) for p, s in levels]


def _metric(text: str, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    found = 0.0
    for line in text.splitlines():
        match = re.match(rf"{name}\{{(.*)\}} (\S+)$", line)
        if match is None:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
        if all(have.get(k) == v for k, v in labels.items()):
            found += float(match.group(2))
    return found


@pytest.fixture(scope="module")
def run(audit_run) -> dict:
    assert "error" not in audit_run, audit_run.get("error")
    assert audit_run["exit"] == 0, audit_run["stderr"][-3000:]
    assert "Traceback" not in audit_run["stderr"]
    return audit_run


def _by_product(run: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {p: [] for p in PRODUCTS}
    for audit in run["audits"]:
        out[audit["product_id"]].append(audit)
    return out


def test_silent_corruption_is_found_within_two_audits_resynced_and_counted(run):
    audits = _by_product(run)
    for product, kind in CORRUPTED.items():
        injected = run["corrupted"][product]
        assert injected["kind"] == kind
        drifts = [a for a in audits[product] if a["result"] == "drift"]
        assert len(drifts) == 1, (product, drifts)
        drift = drifts[0]
        # exactly the level injected, with both sizes
        assert [
            (m["side"], Decimal(m["price"]), Decimal(m["ours"]), Decimal(m["rest"]))
            for m in drift["mismatches"]
        ] == [
            (
                injected["side"],
                Decimal(injected["price"]),
                Decimal(injected["client_size"]),
                Decimal(injected["true_size"]),
            )
        ], product
        # found within two audit intervals: by the first or second audit requested
        # after the injection (or by one already under way)
        before = [
            a
            for a in audits[product]
            if injected["at"] <= _t(a["requested"]) < _t(drift["requested"])
            and a["result"] != "skipped"
        ]
        assert len(before) <= 1, (product, before)
        # resynced: the one product asked for a fresh snapshot, and audits match again
        after = audits[product][audits[product].index(drift) + 1 :]
        assert any(a["result"] == "match" for a in after), product
        assert f"{product} [sim]: audit found drift" in run["stderr"] or (
            "similar messages suppressed" in run["stderr"]
        )
    # the metrics count exactly what was injected
    text = run["metrics"]
    for product in PRODUCTS:
        want = 1 if product in CORRUPTED else 0
        assert (
            _metric(text, "orderbook_audit_drift_levels_total", product_id=product)
            == want
        )
        assert (
            _metric(text, "orderbook_audits_total", product_id=product, result="drift")
            == want
        )
    # ... and every audit record, by result: between the records in the file before
    # and after the scrape (audits go on meanwhile; a record is counted just after it
    # is written, so one may be in the file and not yet counted)
    low, high = run["audit_counts_before_scrape"], run["audit_counts_after_scrape"]
    for key in set(low) | set(high):
        product, result = key.split("/")
        value = _metric(
            text, "orderbook_audits_total", product_id=product, result=result
        )
        assert low.get(key, 0) - 1 <= value <= high.get(key, 0), key


def test_every_book_equals_the_true_book_on_the_top_50_levels_at_the_end(run):
    """Once the market is paused, corrupted books (resynced) and clean ones alike."""
    assert run["final_depths"]
    for product, ours in run["final_depths"].items():
        true = run["true_books"][product]
        assert _levels(ours["bids"]) == _levels(true["bids"]), product
        assert _levels(ours["asks"]) == _levels(true["asks"]), product
        assert len(ours["bids"]) == len(ours["asks"]) == 50
    # every book: its first audit once paused touched nothing and compared the whole
    # top 50 a side with the REST book, the true book, and found them equal
    audits = _by_product(run)
    for product in PRODUCTS:
        first = next(a for a in audits[product] if _t(a["requested"]) >= run["still"])
        assert first["result"] == "match", (product, first)
        assert first["touched"] == 0 and first["compared"] == 100, (product, first)


def test_a_clean_feed_audited_every_second_for_two_minutes_never_drifts(run):
    assert run["audits_ended"] - run["audits_began"] >= AUDIT_SECONDS
    audits = _by_product(run)
    for product in CLEAN:
        results = Counter(a["result"] for a in audits[product])
        assert results["drift"] == 0, (product, results)
        # every second asked: on a loaded machine, and with the REST errors' backoff,
        # at least half of them
        assert results["match"] >= AUDIT_SECONDS / 2, (product, results)
        # each compared levels: the untouched ones of the top 50 a side (at this
        # rate, 20 to 45 of ~140 prices)
        compared = [a["compared"] for a in audits[product] if a["result"] == "match"]
        assert min(compared) > 0, product
    # the REST request rate the exchange saw never exceeds the budget in any second
    times = sorted(t for t, _, _ in run["rest_requests"])
    assert len(times) >= AUDIT_SECONDS * len(PRODUCTS) / 2
    assert busiest_window(times, 1.0 - ARRIVAL_JITTER) <= AUDIT_RATE


def test_rest_failures_are_counted_backed_off_and_the_feed_goes_on(run):
    failed = [a for a in run["audits"] if a["result"] == "failed"]
    reasons = Counter(a["reason"] for a in failed)
    assert reasons["HTTP 429"] >= 1 and reasons["HTTP 500"] >= 1, reasons
    assert reasons["not JSON"] >= 1 and reasons["timeout"] >= 1, reasons
    assert len(failed) == sum(count for _, count in REST_ERRORS)
    assert _metric(run["metrics"], "orderbook_audits_total", result="failed") == len(
        failed
    )
    assert "REST audit of" in run["stderr"]  # logged, at a limited rate
    # backed off: after a 429 or a 500 no request for at least the backoff's least
    # delay (1 s, jittered from its upper half: 0.5 s), as the exchange noted the
    # arrivals (ARRIVAL_JITTER); without a backoff the next would come 0.2 s later
    log = run["rest_requests"]
    for i, (t, _, status) in enumerate(log[:-1]):
        if status in (429, 500):
            gap = log[i + 1][0] - t
            assert gap >= 0.5 - ARRIVAL_JITTER, (status, log[i : i + 2])
    # the feed and its summaries went on: every product, never silent for 5 s (a
    # REST request that blocked the feed would silence it for the 10-s timeout hold;
    # the margin is for a machine the other tests keep busy)
    start, end = run["rest_errors_at"], run["rest_errors_done"]
    assert end - start >= 10  # the timeout alone holds a request 10 s
    for product in PRODUCTS:
        times = sorted(
            _t(t) for t in run["summary_times"][product] if start <= _t(t) <= end
        )
        assert times, product
        gaps = [b - a for a, b in zip([start, *times], [*times, end], strict=True)]
        assert max(gaps) < 5.0, (product, max(gaps))
