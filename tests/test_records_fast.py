"""The fast ways of the hot path give exactly what the plain ways give.

``OrderBookSummary.from_top`` fills its slots directly, ``to_json`` writes its text
directly, ``plain()`` takes ``str()`` where it can, and ``UpdateBook.each`` loops over
an item's events itself: each is checked here against the way it replaced (the frozen
dataclass's ``__init__``, ``orjson`` of ``to_dict()``, ``format(value, "f")``, one
``update_book`` call per event), on the cases that differ in form.
"""

import random
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal as D

import orjson
import pytest

from book_step import EachEvent, UpdateBook, update_book
from common.decimals import CTX, plain
from events import ASK, BID, BookChanges, BookReset, BookSnapshot
from records import OrderBookSummary

TOPS = [
    ("59999.99", "0.11191026", "60000", "0.03"),  # an integer ask: "6E+4" normalised
    ("65000.04000000", "1.50000000", "65000.05", "0.00000001"),
    ("0.00001234", "123456789.5", "0.00001235", "1E+3"),
    (
        "99999999999999.99999999999999",
        "0.00000000000001",
        "99999999999999.99999999999999",
        "1",
    ),
    ("1", "0E-8", "1.00000000000001", "99999999999999"),
]
TIMES = [
    datetime(2026, 1, 1, 0, 0, 0, 3000, tzinfo=UTC),
    datetime(2026, 1, 1, 0, 0, 0, tzinfo=UTC),  # no microseconds
    datetime(2026, 1, 1, 0, 0, 0, 1),  # naive: taken as UTC
    datetime(2026, 1, 1, 2, 0, 0, 5, tzinfo=timezone(timedelta(hours=2))),
    None,
]


def reference_summary(pid, bp, bs, ap, as_, time, feed):
    """The summary through the dataclass's own ``__init__``, fields computed in CTX."""
    spread = CTX.subtract(ap, bp)
    depth = CTX.add(bs, as_)
    finer = spread.normalize(CTX).scaleb(-4, CTX)
    return OrderBookSummary(
        pid,
        time,
        bp,
        bs,
        ap,
        as_,
        spread,
        CTX.divide(CTX.multiply(spread, 100), ap).quantize(D("1E-10"), context=CTX),
        CTX.divide(CTX.add(bp, ap), 2),
        CTX.divide(bs, depth).quantize(D("1E-10"), context=CTX),
        CTX.divide(
            CTX.add(CTX.multiply(bp, as_), CTX.multiply(ap, bs)), depth
        ).quantize(finer, context=CTX),
        feed,
    )


@pytest.mark.parametrize("top", TOPS)
@pytest.mark.parametrize("time", TIMES)
def test_from_top_and_to_json_equal_the_dataclass_and_orjson_of_to_dict(top, time):
    values = [D(v) for v in top]
    for pid, feed in [
        ("BTC-USD", "replay"),
        ('we"ird\\id\n\u00e9\u2028', "x\ty"),  # escapes: orjson's own
        ("", ""),
    ]:
        summary = OrderBookSummary.from_top(pid, *values, time=time, feed=feed)
        expected = reference_summary(pid, *values, time, feed)
        assert summary == expected
        assert [str(getattr(summary, f)) for f in summary.__slots__] == [
            str(getattr(expected, f)) for f in expected.__slots__
        ]
        assert summary.to_json() == orjson.dumps(expected.to_dict()).decode()


def test_a_summary_stays_frozen_and_hashable():
    summary = OrderBookSummary.from_top("BTC-USD", D(1), D(1), D(2), D(1))
    with pytest.raises(AttributeError):
        summary.mid = D(0)
    assert hash(summary) == hash(
        reference_summary("BTC-USD", D(1), D(1), D(2), D(1), None, "")
    )


def test_a_lone_surrogate_in_an_id_fails_as_orjson_did():
    summary = OrderBookSummary.from_top("BTC-\udc80", D(1), D(1), D(2), D(1))
    with pytest.raises(orjson.JSONEncodeError):
        summary.to_json()


def test_plain_is_format_f_of_the_normalised_value_for_every_form():
    def reference(value):
        text = format(value.normalize(CTX), "f")
        return "0" if text == "-0" else text

    rnd = random.Random(21)
    values = ["1E+3", "0.0000001", "-0", "0E-8", "-0.000", "NaN", "-Infinity", "1E+40"]
    values += [
        f"{rnd.choice('+-')}{rnd.randint(0, 10 ** rnd.randint(0, 20))}E{rnd.randint(-30, 30)}"
        for _ in range(20_000)
    ]
    for text in values:
        assert plain(D(text)) == reference(D(text)), text


def _events():
    """A snapshot, changes (some moving the top, some not), an unappliable change in
    the middle, a reset, a second snapshot."""
    t = datetime(2026, 1, 1, tzinfo=UTC)
    snap = BookSnapshot(
        "BTC-USD", [(D(100), D(1)), (D(99), D(2))], [(D(101), D(1))], None, "x", 5
    )
    out = [snap]
    for i in range(30):
        price = D(100) - i % 3 if i % 2 else D(101) + i % 4
        side = BID if i % 2 else ASK
        out.append(BookChanges("BTC-USD", [(side, price, D(i % 5))], t, "x", 10 + i))
    out.insert(12, BookChanges("BTC-USD", [("nonsense", D(1), D(1))], t, "x", 99))
    out += [BookReset("BTC-USD", "reconnected", "x"), snap]
    return out


def test_update_book_each_gives_what_one_call_per_event_gives():
    events = _events()
    state, expected = None, []
    for event in events:
        state, summary = update_book(state, event)
        if summary is not None:
            expected.append((event.received_ns, summary))
    got_state, got = UpdateBook().each(None, events)
    assert got == expected and len(got) > 5
    assert (got_state.book.top(), got_state.updates) == (
        state.book.top(),
        state.updates,
    )
    assert EachEvent(UpdateBook())(None, events)[1] == expected
