"""The shared test helpers speak the real protocols: their frames go through the real
decoder, and the reference book built from the frames equals the one built from events."""

from __future__ import annotations

import json
from decimal import Decimal as D

import pytest

from coinbase.decode import FrameDecoder
from coinbase.feeds import subscribe_messages
from events import BookChanges, BookSnapshot
from tests.support import frames
from tests.support.reference_book import InvalidMessage, ReferenceBook, ReferenceBooks


def test_exchange_frames_decode_to_the_events_the_reference_book_expects():
    decoder = FrameDecoder("exchange", "exchange")
    bids, asks = frames.ladder(100, 3)
    wire = [
        frames.exchange_subscriptions(["BTC-USD"]),
        frames.exchange_snapshot("BTC-USD", bids, asks),
        frames.exchange_heartbeat("BTC-USD"),
        frames.exchange_l2update(
            "BTC-USD", [("buy", "99.5", "2"), ("sell", "101", "0")]
        ),
    ]
    events = [e for f in wire for e in decoder.decode(frames.text(f), 1)]
    assert [type(e) for e in events] == [BookSnapshot, BookChanges]
    from_events, from_frames = ReferenceBook(), ReferenceBooks()
    for event in events:
        from_events.apply(event)
    for frame in wire:
        from_frames.apply_exchange(json.loads(frames.text(frame)))
    assert from_frames.true_book_form("BTC-USD") == (from_events.bids, from_events.asks)
    assert from_events.top() == (D("99.5"), D(2), D(102), D("2.5"))


def test_advanced_trade_frames_decode_in_sequence():
    decoder = FrameDecoder("advanced-trade", "advanced-trade")
    wire = [
        frames.at_subscriptions(0),
        frames.at_snapshot(1, "ETH-USD", [("10", "1")], [("11", "1")]),
        frames.at_heartbeats(2),
        frames.at_update(3, "ETH-USD", [("offer", "10.5", "3")]),
    ]
    events = [e for f in wire for e in decoder.decode(frames.text(f))]
    book, books = ReferenceBook(), ReferenceBooks()
    for event in events:
        book.apply(event)
    for frame in wire:
        books.apply_at(frame)
    assert book.top() == books["ETH-USD"].top() == (D(10), D(1), D("10.5"), D(3))


def test_subscribe_builders_match_the_service():
    assert subscribe_messages("exchange", "BTC-USD") == [frames.exchange_subscribe()]
    assert subscribe_messages("advanced-trade", "BTC-USD") == [
        frames.at_subscribe(),
        frames.at_subscribe(channel="heartbeats"),
    ]


def test_reference_book_refuses_a_bad_message_whole():
    book = ReferenceBook()
    book.snapshot([("1", "1")], [("2", "1")])
    with pytest.raises(InvalidMessage):
        book.changes([("bid", "1.5", "1"), ("bid", "NaN", "1")])
    assert book.top() == (D(1), D(1), D(2), D(1)) and book.condition() == "ok"


def test_netns_says_why_it_cannot_run(monkeypatch):
    """The namespace tests skip with a reason a reader can act on, never fail."""
    from tests.support import netns

    monkeypatch.setattr(netns.os, "geteuid", lambda: 1000)
    assert netns.unavailable() == "network namespaces need root (ip netns add)"
    monkeypatch.setattr(netns.sys, "platform", "darwin")
    assert netns.unavailable() == "network namespaces need Linux"
