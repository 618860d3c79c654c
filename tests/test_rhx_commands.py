"""RHX's command port: each reply matched to its command, whatever the reads look like."""

from __future__ import annotations

import itertools
import logging
import socket
import threading
import time

import pytest

from recording_adapters.rhx_commands import MAX_TRANSMISSION, RhxCommandPort, encode, transmissions
from xdream.errors import SessionError

COMMANDS = ["get runmode", "get sampleratehertz", "set a-000.tcpdataoutputenabledspike true",
            "set h-127.tcpdataoutputenabledspike true", "execute connecttcpspikedataoutput"]
# what RHX writes for them, one write each (TCPCommunicator::writeQString): the sentinel's
# answer after each command but `get runmode`, which is its own
WRITES = ["Return: RunMode Stop",
          "Return: SampleRateHertz 30000", "Return: RunMode Stop",
          "Return: RunMode Stop",
          "Unrecognized parameter", "Return: RunMode Stop",
          "Return: RunMode Stop"]
EXPECTED = ["Return: RunMode Stop", "Return: SampleRateHertz 30000", None, "Unrecognized parameter", None]


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def test_every_cut_of_the_replies_into_three_reads_matches_the_same_replies(pair):
    stream = "".join(WRITES)
    for i, j in itertools.combinations(range(len(stream) + 1), 2):
        port = RhxCommandPort(pair[0], 1.0)
        entries = port._send(COMMANDS, asked=True)
        for piece in (stream[:i], stream[i:j], stream[j:]):
            port._feed(piece)
        assert [e.reply for e in entries] == EXPECTED, (i, j)
        assert all(e.done for e in entries) and port.waiting == 0
        pair[1].recv(65536)


def test_ask_over_a_socket_gets_the_replies_written_one_by_one(pair):
    port = RhxCommandPort(pair[0], 5.0)
    sent: list[str] = []

    def rhx():
        sent.append(pair[1].recv(65536).decode())
        for w in WRITES:
            pair[1].sendall(w.encode())
            time.sleep(0.002)

    threading.Thread(target=rhx, daemon=True).start()
    assert port.ask(COMMANDS) == EXPECTED
    assert sent == [encode(COMMANDS)] and sent[0].endswith(";")
    assert sent[0].count("get runmode") == len(COMMANDS)


def test_words_that_came_before_the_question_are_not_its_answer(pair, caplog):
    port = RhxCommandPort(pair[0], 0.3)
    pair[1].sendall(b"Return: RunMode Stop")     # a stale answer, as the old adapter left one
    time.sleep(0.05)
    with caplog.at_level(logging.ERROR), pytest.raises(SessionError, match="no answer"):
        port.ask(["get sampleratehertz"])
    assert "unasked: Return: RunMode Stop" in caplog.text


def test_posted_replies_come_out_of_pump_and_unasked_words_are_logged(pair, caplog):
    port = RhxCommandPort(pair[0], 2.0)
    port.post(["execute connecttcpspikedataoutput"])
    pair[1].sendall(b"Unrecognized actionReturn: RunMode Run")
    replies: list = []
    for _ in range(50):
        replies += port.pump()
        if replies:
            break
        pair[0].settimeout(0.01)
    assert replies == [("execute connecttcpspikedataoutput", "Unrecognized action")]
    port.last_unanswered = "set runmode run"
    pair[1].sendall(b"Board must be stopped in order to start running")
    with caplog.at_level(logging.ERROR):
        port._read(1.0)
    assert "unasked (after 'set runmode run'): Board must be stopped" in caplog.text


def test_transmissions_stay_under_one_segment_and_keep_every_command():
    commands = [f"set {chr(65 + i // 128)}-{i % 128:03d}.tcpdataoutputenabledspike true" for i in range(1024)]
    parts = transmissions(commands)
    assert [c for p in parts for c in p] == commands
    assert all(len(encode(p)) <= MAX_TRANSMISSION for p in parts)
