"""The MQTT driver's sans-I/O command book, without a broker: messages in, decisions out."""

from __future__ import annotations

import pytest

from controller.lineio import (
    BinLevel,
    DeviceFault,
    DivertCommand,
    DivertReply,
    LineEvent,
    LinkState,
    PhotoEyeEdge,
)
from drivers.lineio import mqtt_codec as codec
from drivers.lineio.mqtt_book import NOTHING, RECANCEL_S, SCHEDULED_MEMORY, CommandBook, Inbound
from drivers.lineio.mqtt_events import EventQueue

TOPICS = codec.Topics("sorter", "line1")
BOOT = "c0ffee01"


def make_book(*, sensors: bool = True) -> CommandBook:
    return CommandBook(TOPICS, ["D1", "D2"], sensors=sensors, where="test")


def command(command_id: int, diverter: str = "D1", fire_enc: int = 10_000) -> DivertCommand:
    return DivertCommand(command_id, command_id, diverter, fire_enc, 150.0)


def reply(book: CommandBook, diverter: str, command_id: int, accepted: bool = True,
          reason: codec.Reason = "") -> Inbound:
    return book.receive(TOPICS.reply(diverter),
                        codec.encode_reply(DivertReply(command_id, accepted, reason)))


def status(book: CommandBook, node: str, text: bytes) -> Inbound:
    return book.receive(TOPICS.node_status(node), text)


def event(book: CommandBook, seq: int, first: int | None = None, boot: str = BOOT,
          enc: int | None = None) -> Inbound:
    line_event = PhotoEyeEdge("induct", seq % 2 == 1, seq if enc is None else enc)
    return book.receive(TOPICS.events, codec.encode_event(
        codec.SensorEvent("sensors", boot, seq, line_event, first)))


def drain(queue: EventQueue) -> list[LineEvent]:
    taken = []
    while (item := queue.pop()) is not None:
        taken.append(item)
    return taken


# --- correlation ----------------------------------------------------------------------------


def test_a_reply_is_handed_to_its_divert_once() -> None:
    book = make_book()
    book.sent(command(7))
    answer = reply(book, "D1", 7)
    assert answer == Inbound(answer=DivertReply(7, True, ""))
    assert reply(book, "D1", 7) is NOTHING  # a QoS 1 duplicate
    assert (book.stats.commands, book.stats.replies, book.stats.bad_payloads) == (1, 1, 0)
    book.settled(7)
    assert reply(book, "D1", 7) is NOTHING  # a duplicate of the answer taken: no error
    assert reply(book, "D1", 99) is NOTHING
    assert book.stats.bad_by_kind == {"unknown_corr": 1}  # never sent
    assert book.stats.conflicting_replies == 0


def test_two_different_replies_for_one_command_are_counted_either_order() -> None:
    """A forged "refused: late" racing the node's "accepted": whichever comes first is taken,
    the other is counted as a conflict (the node's word and the forger's disagree)."""
    book = make_book()
    book.sent(command(7))
    book.sent(command(8))
    assert reply(book, "D1", 7, False, "late").answer == DivertReply(7, False, "late")
    assert reply(book, "D1", 7) is NOTHING  # still waiting: the second is not believed
    assert reply(book, "D1", 8).answer == DivertReply(8, True, "")
    book.settled(8)
    assert reply(book, "D1", 8, False, "late") is NOTHING  # after it settled
    assert book.stats.conflicting_replies == 2
    assert (book.stats.replies, book.stats.refused, book.stats.bad_payloads) == (2, 1, 0)


def test_statuses_and_events_of_unknown_nodes_are_refused_and_bounded() -> None:
    """Only the configured node ids are followed: made-up ones are refused and counted, and
    the heartbeat's acknowledgements never name them."""
    book = make_book()
    for n in range(200):
        status(book, f"X{n}", b"offline")
        book.receive(TOPICS.events, codec.encode_event(codec.SensorEvent(
            f"fake{n}", BOOT, 1, BinLevel("B1", True), 1)))
    assert book.nodes == {}
    assert book.acks() == {}
    assert drain(book.queue) == []
    assert book.stats.unknown_nodes == 200
    assert book.stats.foreign_statuses == 200  # another link's nodes: ignored, not an error
    assert book.stats.bad_by_kind == {"unknown_node": 200}
    event(book, 1, 1)
    assert set(book.acks()) == {"sensors"}
    assert status(book, "D1", b"offline").queued
    assert book.node_offline("D1")


def test_a_refusal_is_counted() -> None:
    book = make_book()
    book.sent(command(8))
    assert reply(book, "D1", 8, False, "late").answer == DivertReply(8, False, "late")
    assert (book.stats.replies, book.stats.refused) == (1, 1)


def test_stray_replies_are_refused_by_kind() -> None:
    book = make_book()
    book.sent(command(9, "D1"))
    assert reply(book, "D2", 9) is NOTHING  # from another diverter than it went to
    assert reply(book, "D9", 9) is NOTHING  # a diverter not on this link
    assert reply(book, "D1", 10) is NOTHING  # no such divert
    assert book.stats.bad_by_kind == {"wrong_diverter": 1, "unknown_diverter": 1,
                                      "unknown_corr": 1}
    assert reply(book, "D1", 9).answer is not None  # the right one still gets through


def test_a_reply_after_giving_up_is_late_not_bad() -> None:
    book = make_book()
    book.sent(command(11))
    book.settled(11)
    book.give_up(11, "D1", now=5.0)
    assert reply(book, "D1", 11) is NOTHING
    assert (book.stats.late_replies, book.stats.bad_payloads) == (1, 0)


def test_hostile_messages_are_counted_and_change_nothing() -> None:
    book = make_book(sensors=False)
    book.sent(command(12))
    refused = [
        (TOPICS.reply("D1"), b"x" * (codec.MAX_PAYLOAD + 1)),
        (TOPICS.reply("D1"), b'{"corr": 12, "accepted": true, "extra": 1}'),
        (TOPICS.reply("D1"), b'{"corr": 12, "accepted": 1}'),
        (TOPICS.events, b'{"node":"sensors","seq":1,"kind":"bin_level","bin":"B1",'
                        b'"full":true}'),  # no sensors on this link
        (TOPICS.encoder, b'{"enc":5}'),
        (TOPICS.divert("D1"), codec.encode_divert(command(12))),  # a controller's own topic
        ("elsewhere/line1/io/heartbeat", b"{}"),
        (TOPICS.node_status("D1"), b"online "),
    ]
    for topic, payload in refused:
        assert book.receive(topic, payload) is NOTHING
    assert book.stats.bad_by_kind == {"too_large": 1, "bad_reply": 2, "unknown_topic": 4,
                                      "bad_status": 1}
    assert book.stats.bad_payloads == len(refused)
    assert not book.queue
    assert book.nodes == {}
    assert reply(book, "D1", 12).answer == DivertReply(12, True, "")


# --- cancels --------------------------------------------------------------------------------


def test_cancels_are_repeated_while_recent_and_until_sent() -> None:
    book = make_book()
    book.give_up(21, "D1", now=100.0)
    book.give_up(22, "D2", now=100.0)
    book.cancel_unsent(23, "D2")
    assert book.cancels_to_repeat(100.0 + RECANCEL_S - 1) == {21: "D1", 22: "D2", 23: "D2"}
    assert book.cancels_to_repeat(100.0, node="D2") == {22: "D2", 23: "D2"}
    book.cancel_sent(23)
    assert book.cancels_to_repeat(100.0 + RECANCEL_S + 1) == {}


# --- node states and restore ----------------------------------------------------------------


def test_node_statuses_ask_for_cancels_restores_and_faults() -> None:
    book = make_book()
    assert status(book, "D1", b"safe") is NOTHING
    assert status(book, "D1", b"online") == Inbound(repeat_cancels="D1", restore="D1")
    assert status(book, "D1", b"online") == Inbound(repeat_cancels="D1")  # no change: no restore
    assert status(book, "D1", b"safe") is NOTHING
    assert book.stats.node_failsafes == 1
    assert status(book, "D1", b"offline") == Inbound(queued=True)
    assert status(book, "D1", b"offline") is NOTHING  # reported once
    assert drain(book.queue) == [DeviceFault("node D1", "offline (lost or shut down)")]
    assert book.node_offline("D1")
    assert status(book, "D1", b"online").restore == "D1"
    assert not book.node_offline("D1")
    assert status(book, "D1", b"") is NOTHING  # a cleared retained status
    assert book.nodes == {}
    assert book.stats.nodes_offline == 1


def test_a_new_connection_restores_every_node_that_says_online() -> None:
    book = make_book()
    status(book, "D1", b"online")
    book.connecting()
    assert book.nodes == {}
    assert status(book, "D1", b"online").restore == "D1"  # nothing known since the connect


def test_what_is_restored_is_what_is_still_due() -> None:
    book = make_book()
    for c in (command(31, fire_enc=1_000), command(32, fire_enc=5_000),
              command(33, "D2", fire_enc=5_000), command(34, fire_enc=9_000)):
        book.accepted(c, enc=0)
    book.taken_back(34)
    assert [c.command_id for c in book.to_restore("D1", enc=2_000)] == [32]
    assert book.held(enc=2_000) == {"D1": [command(32, fire_enc=5_000)],
                                    "D2": [command(33, "D2", fire_enc=5_000)]}
    # an encoder message forgets the due ones too
    book.receive(TOPICS.encoder, codec.encode_encoder(5_000))
    assert book.held(enc=None) == {}


def test_restore_replies_are_taken_by_the_book() -> None:
    book = make_book()
    kept, late, faulted = command(41), command(42), command(43)
    for c in (kept, late, faulted):
        book.accepted(c, enc=0)
        book.restore_sent(c)
    assert reply(book, "D1", 41) is NOTHING
    assert reply(book, "D1", 42, False, "late") is NOTHING
    assert reply(book, "D1", 43, False, "fault") is NOTHING
    assert (book.stats.restored, book.stats.restore_refused, book.stats.bad_payloads) == \
        (3, 2, 0)
    # late: forgotten; fault: in its fail-safe again, so restored on its next "online"
    assert [c.command_id for c in book.to_restore("D1", enc=0)] == [41, 43]
    assert reply(book, "D1", 41) is NOTHING
    assert book.stats.bad_by_kind == {"unknown_corr": 1}  # its restore was answered already
    book.forget_held()
    assert book.to_restore("D1", enc=0) == []


def test_without_an_encoder_count_the_book_stays_bounded() -> None:
    book = make_book(sensors=False)
    for i in range(SCHEDULED_MEMORY + 10):
        book.accepted(command(1000 + i, fire_enc=i), enc=None)
    held = book.to_restore("D1", enc=None)
    assert len(held) == SCHEDULED_MEMORY
    assert min(c.fire_enc for c in held) == 10  # the ones due first went


# --- sensor events --------------------------------------------------------------------------


def test_events_are_delivered_in_order_once() -> None:
    book = make_book()
    assert event(book, 1) == Inbound(queued=True)
    assert event(book, 2).queued
    assert event(book, 2) is NOTHING  # duplicate
    assert event(book, 4, first=1) is NOTHING  # early: 3 is still on its way
    assert event(book, 3, first=1).queued
    assert event(book, 4, first=1).queued
    assert [e.enc for e in drain(book.queue) if isinstance(e, PhotoEyeEdge)] == [1, 2, 3, 4]
    assert (book.stats.events, book.stats.duplicate_events, book.stats.early_events,
            book.stats.missed_events) == (4, 1, 1, 0)
    assert book.acks() == {"sensors": codec.Ack(BOOT, 4)}


def test_a_gap_the_node_no_longer_holds_is_counted_missed() -> None:
    book = make_book()
    event(book, 1)
    assert event(book, 9, first=7) is NOTHING  # 7 and 8 come first
    assert event(book, 7, first=7).queued
    assert book.stats.missed_events == 5  # 2..6 overflowed the node's backlog
    assert book.acks()["sensors"].seq == 7


def test_a_new_boot_starts_from_its_first_event() -> None:
    book = make_book()
    event(book, 1)
    event(book, 2)
    assert event(book, 2, first=2, boot="b2").queued  # its 1 was acknowledged: not held
    assert event(book, 1, boot="b2") is NOTHING
    assert event(book, 4, first=2, boot="b2") is NOTHING  # 3 comes first
    assert event(book, 3, first=2, boot="b2").queued
    assert book.stats.node_restarts == 1
    assert book.acks() == {"sensors": codec.Ack("b2", 3)}
    assert [e.enc for e in drain(book.queue) if isinstance(e, PhotoEyeEdge)] == [1, 2, 2, 3]


def test_the_encoder_never_runs_ahead_of_events_not_taken() -> None:
    book = make_book()
    book.receive(TOPICS.encoder, codec.encode_encoder(100))
    assert book.queue.encoder() == 100
    event(book, 1, enc=150)
    book.receive(TOPICS.encoder, codec.encode_encoder(200))
    book.receive(TOPICS.encoder, codec.encode_encoder(300))
    assert book.queue.encoder() == 100  # the event at 150 is not taken yet
    assert book.queue.pop() == PhotoEyeEdge("induct", True, 150)
    assert book.queue.encoder() == 300
    assert book.queue.pop() is None
    book.receive(TOPICS.events, codec.encode_event(codec.SensorEvent(
        "sensors", BOOT, 2, BinLevel("B1", True))))
    assert book.queue.received == 300
    assert drain(book.queue) == [BinLevel("B1", True)]


# --- the link -------------------------------------------------------------------------------


def test_an_outage_is_counted_and_reported_once() -> None:
    book = make_book()
    assert book.state.value == "connecting"
    book.went_up(now=0.0, client_id="c")
    assert book.went_down("connection lost", now=1.0)
    assert not book.went_down("cannot connect", now=1.5)
    book.went_up(now=3.0, client_id="c")
    assert book.state is LinkState.UP
    assert (book.stats.connects, book.stats.outages, book.stats.reconnects) == (2, 1, 1)
    assert drain(book.queue) == [DeviceFault("mqtt", "link down: connection lost")]
    book.closed()
    assert (book.state, book.stats.last_error) == (LinkState.DOWN, "closed")


@pytest.mark.parametrize("text", [b"online", b"safe", b"offline"])
def test_every_status_is_remembered(text: bytes) -> None:
    book = make_book()
    status(book, "D2", text)
    assert book.nodes == {"D2": text.decode()}
