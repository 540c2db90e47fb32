"""The shim's channel without a reader thread: whichever thread waits reads, and hands
frames that are not its own to their owner (a platform answer to its waiter, anything else
to the main loop)."""

from __future__ import annotations

import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from burst import wire
from burst._shim.main import Channel
from burst.exception import UnavailableError


class Agent:
    """The agent's end of one shim connection, driven by the test."""

    def __init__(self, path: Path) -> None:
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen()
        self.conn: socket.socket | None = None
        self._accepted = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self.conn, _ = self.listener.accept()
        self._accepted.set()

    def send(self, msg: object) -> None:
        self._accepted.wait(5)
        assert self.conn is not None
        self.conn.sendall(wire.frame(msg))  # type: ignore[arg-type]

    def recv(self) -> object:
        self._accepted.wait(5)
        assert self.conn is not None
        header = self.conn.recv(4, socket.MSG_WAITALL)
        body = self.conn.recv(wire.frame_length(header), socket.MSG_WAITALL)
        return wire.from_shim_decoder.decode(body)


@pytest.fixture
def pair() -> Iterator[tuple[Agent, Channel]]:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "s"
        agent = Agent(path)
        chan = Channel(str(path))
        yield agent, chan
        chan.sock.close()
        if agent.conn is not None:
            agent.conn.close()
        agent.listener.close()


def _run_input(i: int) -> wire.RunInput:
    return wire.RunInput(input_id=f"in-{i}", call_id=f"ca-{i}", attempt=1, attempt_token="t",
                          payload=b"", payload_format="pickle")


def test_main_loop_reads_inputs_in_order(pair: tuple[Agent, Channel]) -> None:
    agent, chan = pair
    for i in range(3):
        agent.send(_run_input(i))
    assert [chan.next_frame().input_id for _ in range(3)] == ["in-0", "in-1", "in-2"]


def test_answer_reaches_a_thread_while_the_main_loop_is_the_reader(
        pair: tuple[Agent, Channel]) -> None:
    agent, chan = pair
    got: list[object] = []
    main = threading.Thread(target=lambda: got.append(chan.next_frame()), daemon=True)
    main.start()
    time.sleep(0.1)  # the main loop now blocks reading the socket
    answer: list[bytes] = []
    t = threading.Thread(target=lambda: answer.append(chan.request("dict", b"q", timeout=5)),
                         daemon=True)
    t.start()
    req = agent.recv()
    assert isinstance(req, wire.PlatformRequest) and req.body == b"q"
    agent.send(wire.PlatformResponse(req_id=req.req_id, body=b"a"))
    t.join(5)
    assert answer == [b"a"]
    assert main.is_alive() and got == []  # the response was not the main loop's
    agent.send(_run_input(7))
    main.join(5)
    assert [f.input_id for f in got] == ["in-7"]  # type: ignore[attr-defined]


def test_a_waiting_thread_reads_and_queues_the_main_loops_frames(
        pair: tuple[Agent, Channel]) -> None:
    agent, chan = pair
    answer: list[bytes] = []
    t = threading.Thread(target=lambda: answer.append(chan.request("queue", b"x", timeout=5)),
                         daemon=True)
    t.start()
    req = agent.recv()
    agent.send(_run_input(1))  # arrives first: for the main loop, which is not reading
    agent.send(wire.PlatformResponse(req_id=req.req_id, body=b"y"))  # type: ignore[attr-defined]
    t.join(5)
    assert answer == [b"y"]
    assert chan.next_frame().input_id == "in-1"


def test_request_times_out_and_frees_the_reader_role(pair: tuple[Agent, Channel]) -> None:
    agent, chan = pair
    t0 = time.monotonic()
    with pytest.raises(UnavailableError, match="did not answer a dict request in time"):
        chan.request("dict", b"", timeout=0.3)
    assert 0.25 < time.monotonic() - t0 < 3
    agent.recv()
    agent.send(_run_input(2))  # someone else can still read
    assert chan.next_frame().input_id == "in-2"


def test_closed_connection_ends_the_main_loop_and_fails_requests(
        pair: tuple[Agent, Channel]) -> None:
    agent, chan = pair
    agent.send(_run_input(3))
    agent._accepted.wait(5)
    assert agent.conn is not None
    agent.conn.shutdown(socket.SHUT_WR)
    assert chan.next_frame().input_id == "in-3"  # what arrived before the end still counts
    assert chan.next_frame() is None
    with pytest.raises(UnavailableError, match="closed the connection"):
        chan.request("dict", b"", timeout=2)
