"""The waitress channel's rules without sockets: framing, the head's verdict, the spool, which connections go."""

import os
import types

import pytest
from waitress.adjustments import Adjustments

from wsgi_stream.replies import Reply
from wsgi_stream.server import to_close
from wsgi_stream.waitress_channel import HeadParser, Settings, SpoolBuffer, framing_problem

# -- framing_problem: RFC 9112 §6.3 and request smuggling ------------------------------------------

FRAMING = [
    # (head, problem expected?)
    (b"PUT /f HTTP/1.1\r\nHost: x\r\nContent-Length: 5", False),
    (b"PUT /f HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked", False),
    (b"GET / HTTP/1.0\r\nHost: x", False),
    (b"PUT /f HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked", True),
    (b"PUT /f HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 5", True),
    (b"PUT /f HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5", True),
    (b"PUT /f HTTP/1.1\r\nContent-Length: 5\r\ncontent-length: 6", True),
    (b"PUT /f HTTP/1.1\r\nX-A: 1\r\n Transfer-Encoding: chunked", True),
    (b"PUT /f HTTP/1.1\r\nX-A: 1\r\n\tmore", True),
    (b"PUT /f HTTP/1.0\r\nTransfer-Encoding: chunked", True),
    (b"PUT /f HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked", True),
]


@pytest.mark.parametrize("head,ambiguous", FRAMING)
def test_framing_problem(head, ambiguous):
    assert (framing_problem(head) is not None) == ambiguous


# -- HeadParser: the verdict comes when the head is complete, before any body byte ---------------------

class FakeChannel:
    def __init__(self, verdict, spool_dir=None):
        self.settings = Settings(spool_dir=spool_dir, memory_limit=1024)
        self.verdict, self.heads = verdict, []

    def check_head(self, parser):
        self.heads.append((parser.command, parser.path, parser.body_rcv.getbuf().__len__()))
        return self.verdict


def parse(data: bytes, channel: FakeChannel) -> tuple[HeadParser, int]:
    parser = HeadParser(Adjustments(), channel=channel)
    consumed = 0
    while consumed < len(data) and not parser.completed:
        consumed += parser.received(data[consumed:])
    return parser, consumed


REFUSAL = Reply(401, [("Content-Length", "0")])


@pytest.mark.parametrize("framing,body", [
    (b"Content-Length: 20\r\n", b"x" * 20),
    (b"Transfer-Encoding: chunked\r\n", b"14\r\n" + b"x" * 20 + b"\r\n0\r\n\r\n"),
], ids=["length", "chunked"])
def test_a_refused_head_completes_at_once_and_swallows_what_followed(framing, body):
    channel = FakeChannel(REFUSAL)
    data = b"PUT /files/a HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n" + framing + b"\r\n" + body
    parser, consumed = parse(data, channel)
    assert channel.heads == [("PUT", "/files/a", 0)]  # decided with no body byte buffered
    assert parser.completed and parser.refusal is REFUSAL and parser.error is None
    assert consumed == len(data)  # the body is never parsed as a next request
    assert parser.body_rcv is None and not parser.expect_continue and parser.connection_close
    assert parser.get_body_stream().read() == b""


def test_an_accepted_head_reads_its_body():
    channel = FakeChannel(None)
    parser, consumed = parse(b"PUT /files/a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", channel)
    assert parser.completed and parser.refusal is None and parser.get_body_stream().read() == b"hello"
    assert len(channel.heads) == 1


def test_no_body_no_verdict():
    channel = FakeChannel(REFUSAL)
    parser, _ = parse(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", channel)
    assert parser.completed and parser.refusal is None and channel.heads == []


def test_ambiguous_framing_is_an_error_before_any_verdict():
    channel = FakeChannel(None)
    parser, _ = parse(b"PUT /f HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nabc", channel)
    assert parser.completed and parser.error.code == 400 and channel.heads == []


# -- SpoolBuffer: memory while small, then an anonymous file in the spool directory ---------------------

def test_spool_buffer_keeps_small_bodies_in_memory(tmp_path):
    buf = SpoolBuffer(Settings(spool_dir=tmp_path, memory_limit=10), None)
    buf.append(b"hello")
    assert buf.spooled() is None and buf.getfile().read() == b"hello" and len(buf) == 5


def test_spool_buffer_moves_to_an_unnamed_file_in_the_spool(tmp_path):
    buf = SpoolBuffer(Settings(spool_dir=tmp_path, memory_limit=10), None)
    for part in (b"0123456", b"789abc", b"def"):
        buf.append(part)
    spooled = buf.spooled()
    assert spooled is not None and os.fstat(spooled.fileno()).st_size == 16
    assert os.readlink(f"/proc/self/fd/{spooled.fileno()}").startswith(str(tmp_path) + "/")
    assert os.listdir(tmp_path) == []  # O_TMPFILE: no name, nothing left if the node dies
    assert buf.getfile().read() == b"0123456789abcdef"
    buf.close()
    assert spooled.closed


def test_spool_buffer_goes_straight_to_the_file_for_a_large_declared_length(tmp_path):
    buf = SpoolBuffer(Settings(spool_dir=tmp_path, memory_limit=10), 100)
    buf.append(b"x")
    assert buf.spooled() is not None


# -- to_close: which connections a node closes, and why ------------------------------------------------

def conn(*, requests=(), outbuf=0, last=0.0, waiting=None, idle=None, lingering=None, addr="127.0.0.1"):
    return types.SimpleNamespace(requests=list(requests), total_outbufs_len=outbuf, last_activity=last,
                                 lingering_since=lingering, addr=(addr, 1),
                                 waiting_for_head=lambda: waiting, idle_since=lambda: idle)


def closes(channels, now=100.0, limit=100, open_count=None):
    found = to_close(channels, now, client_timeout=30, head_timeout=10, limit=limit,
                     open_count=len(channels) if open_count is None else open_count)
    return {reason: [channels.index(ch) for ch in chs] for reason, chs in found.items() if chs}


CASES = [
    ("a reader that stalled mid-response", [conn(requests=[1], outbuf=5, last=60)], {"stalled": [0]}),
    ("a reader that reads", [conn(requests=[1], outbuf=5, last=99)], {}),
    ("sendfile stalled after the task ended", [conn(outbuf=5, last=60)], {"stalled": [0]}),
    ("a head started 11 s ago", [conn(waiting=89.0, idle=89.0)], {"head": [0]}),
    ("a head started 9 s ago", [conn(waiting=91.0, idle=91.0)], {}),
    ("a lingering close that lasts", [conn(lingering=90.0)], {"linger": [0]}),
    ("an idle keep-alive under the limit", [conn(idle=10.0)], {}),
]


@pytest.mark.parametrize("what,channels,expected", CASES, ids=[c[0] for c in CASES])
def test_to_close(what, channels, expected):
    assert closes(channels) == expected


def test_near_the_limit_the_longest_waiting_idle_ones_go_down_to_half():
    channels = [conn(idle=90.0 + i * 0.1) for i in range(80)] + [conn(requests=[1]) for _ in range(5)]
    channels.append(conn(idle=99.5))  # waited under a second: keeps its turn
    found = closes(channels, limit=100)
    assert found == {"pressure": list(range(36))}  # 86 open -> 50


def test_below_three_quarters_of_the_limit_nothing_idle_goes():
    assert closes([conn(idle=1.0) for _ in range(70)], limit=100) == {}


def test_a_spool_that_fails_is_a_507_not_a_traceback(tmp_path):
    channel = FakeChannel(None, spool_dir=tmp_path / "gone")  # the directory was removed under the node
    parser, consumed = parse(b"PUT /files/a HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000,
                             channel)
    assert parser.completed and parser.error.code == 507
