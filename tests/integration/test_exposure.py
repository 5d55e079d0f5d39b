"""What a waitress node gives a client it does not trust: decided on the head, framing, spool, connections.

Clients are raw sockets, so what is measured is what a client sees: how many body bytes it got
to send before the answer came, whether a second request hidden in a body ever runs, how long
/healthz takes while hundreds of sockets idle or trickle.
"""

import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import support
from support import REPO, NodeProcess

TOKEN = "s3cret"
AUTH = f"Authorization: Bearer {TOKEN}\r\n".encode()
LIMIT = 64 << 20  # max_upload_size: a 50 MiB body would be accepted with the token
BIG = 50 << 20
SPOOL = ".wsgi_stream-upload-spool"


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    cl = support.start_cluster(tmp_path_factory.mktemp("exposure"), ("a",), token=TOKEN, uploads=True,
                               max_upload_size=LIMIT)
    try:
        (cl["a"].root / "hello.txt").write_text("hello\n")
        yield cl["a"]
    finally:
        cl.stop()


def read_response(s: socket.socket, data: bytes = b"") -> tuple[int, dict, bytes, bytes]:
    """(status, headers, body, bytes after it) of one response with a Content-Length."""
    status, headers, rest = support.read_head(s, data)
    length = int(headers.get("content-length", 0))
    while len(rest) < length:
        chunk = s.recv(65536)
        if not chunk:
            break
        rest += chunk
    return status, headers, rest[:length], rest[length:]


def push_body(node, head: bytes, total: int, chunked: bool = False) -> tuple[int, dict, bytes, int, float]:
    """Send `head`, then up to `total` body bytes as fast as the socket takes them, until an answer comes.

    Returns (status, headers, body, body bytes sent before the answer began, seconds to the answer).
    """
    block = b"\0" * (64 << 10)
    if chunked:
        block = b"%x\r\n" % len(block) + block + b"\r\n"
    s = socket.create_connection((node.host, node.port), timeout=10)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 << 10)
    started = time.monotonic()
    try:
        s.sendall(head)
        s.setblocking(False)
        sent, pending = 0, memoryview(b"")
        while time.monotonic() - started < 20:
            readable, writable, _ = select.select([s], [s] if sent < total else [], [], 1)
            if readable:
                break
            if writable:
                if not pending:
                    pending = memoryview(block)
                try:
                    n = s.send(pending)
                except BlockingIOError:
                    continue
                except OSError:  # the node closed: its answer is in our receive buffer
                    break
                pending, sent = pending[n:], sent + n
        else:
            raise AssertionError(f"no answer after sending {sent} bytes")
        elapsed = time.monotonic() - started
        s.setblocking(True)
        status, headers, body, _ = read_response(s)
        return status, headers, body, sent, elapsed
    finally:
        s.close()


def healthz(node, timeout=5) -> float:
    started = time.monotonic()
    r = support.http("GET", f"{node.url}/healthz", timeout=timeout)
    assert r.status == 200, r.data
    return time.monotonic() - started


def spooled(node) -> list[str]:
    return os.listdir(node.root / SPOOL)


# -- decided on the head, before the body ------------------------------------------------------------

REFUSED = [
    ("GET /healthz", b"", 413, "payload_too_large"),
    ("GET /list/", b"", 401, "unauthorized"),
    ("PUT /files/big.bin", b"", 401, "unauthorized"),
    ("PUT /nowhere/big.bin", b"", 401, "unauthorized"),  # the token first: no route is told to a stranger
    ("PUT /nowhere/big.bin", AUTH, 404, "not_found"),
    ("PUT /healthz", AUTH, 405, "method_not_allowed"),
    ("PUT /files/big.bin", AUTH + b"Content-Length: %d\r\n" % (LIMIT + 1), 413, "payload_too_large"),
]


CASES = [(*r, chunked) for r in REFUSED for chunked in (False, True) if not (chunked and b"Content-Length" in r[1])]


@pytest.mark.parametrize("line,extra,status,code,chunked", CASES,
                         ids=[f"{c[0]}-{c[2]}-{'chunked' if c[4] else 'length'}" for c in CASES])
def test_a_refused_body_is_not_read(node, line, extra, status, code, chunked):
    framing = b"Transfer-Encoding: chunked\r\n" if chunked else \
        (b"" if b"Content-Length" in extra else b"Content-Length: %d\r\n" % BIG)
    head = f"{line} HTTP/1.1\r\nHost: x\r\n".encode() + extra + framing + b"\r\n"
    got, headers, body, sent, elapsed = push_body(node, head, BIG, chunked)
    print(f"\n{line} ({'chunked' if chunked else 'length'}): {got} after {sent / 1024:.0f} KiB, {elapsed:.2f}s")
    assert got == status and json.loads(body)["error"] == code
    assert headers.get("connection") == "close"
    assert sent < 4 << 20 and elapsed < 3
    assert healthz(node) < 1
    assert not (node.root / "big.bin").exists() and spooled(node) == []


def test_expect_100_continue_is_answered_without_the_continue(node):
    with socket.create_connection((node.host, node.port), timeout=10) as s:
        s.sendall(b"PUT /files/big.bin HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 1000\r\n\r\n")
        status, headers, body, _ = read_response(s)
    assert status == 401  # not 100 first: the client need not send the body at all


def test_an_accepted_upload_spools_in_the_root_and_is_linked_into_place(node):
    """While the body arrives it is an anonymous file in the root's hidden spool; the stored file is that inode."""
    data = os.urandom(8 << 20)
    head = (b"PUT /files/up/spooled.bin HTTP/1.1\r\nHost: x\r\n" + AUTH +
            b"Content-Length: %d\r\n\r\n" % len(data))
    with socket.create_connection((node.host, node.port), timeout=10) as s:
        s.sendall(head + data[:4 << 20])
        spool_dir = str(node.root / SPOOL)
        deadline, spool_fd = time.monotonic() + 5, None
        while spool_fd is None and time.monotonic() < deadline:
            for fd in Path(f"/proc/{node.pid}/fd").iterdir():
                try:
                    if os.readlink(fd).startswith(spool_dir + "/"):
                        spool_fd = fd
                except OSError:
                    pass
            time.sleep(0.05)
        assert spool_fd is not None, "the body is not spooling under the root"
        inode = os.stat(spool_fd).st_ino
        temp = os.environ.get("TMPDIR", "/tmp")
        links = [os.readlink(fd) for fd in Path(f"/proc/{node.pid}/fd").iterdir() if fd.is_symlink()]
        assert [link for link in links if link.startswith(temp + "/") and not link.startswith(str(node.root))
                and link != str(node.log_path)] == []  # waitress alone would spool in $TMPDIR
        s.sendall(data[4 << 20:])
        status, _, body, _ = read_response(s)
    assert status == 201, body
    stored = node.root / "up" / "spooled.bin"
    assert stored.read_bytes() == data
    assert stored.stat().st_ino == inode  # linked, not copied
    assert spooled(node) == []
    assert (node.root / SPOOL).stat().st_mode & 0o777 == 0o700
    listing = support.http("GET", f"{node.url}/list/", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert SPOOL not in [e["name"] for e in listing["entries"]]
    r = support.http("GET", f"{node.url}/files/{SPOOL}/x", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status == 404


# -- framing: one reading of the body, or none ---------------------------------------------------------

SMUGGLED = b"GET /files/hello.txt?smuggled=1 HTTP/1.1\r\nHost: x\r\n" + AUTH + b"\r\n"
AMBIGUOUS = {
    "cl-and-te": b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" % (5 + len(SMUGGLED)),
    "te-and-cl": b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
    "two-lengths": b"Content-Length: 0\r\nContent-Length: %d\r\n\r\n" % len(SMUGGLED),
    "folded-te": b"X-Pad: 1\r\n Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
    "two-te": b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("framing", AMBIGUOUS.values(), ids=AMBIGUOUS.keys())
def test_ambiguous_framing_is_400_and_nothing_else_runs(node, framing):
    request = b"PUT /files/smuggle.txt HTTP/1.1\r\nHost: x\r\n" + AUTH + framing + SMUGGLED
    with socket.create_connection((node.host, node.port), timeout=10) as s:
        s.sendall(request)
        status, headers, body, rest = read_response(s)
        while chunk := s.recv(65536):
            rest += chunk
    assert status == 400 and json.loads(body)["error"] == "bad_request", body
    assert headers.get("connection") == "close"
    assert rest == b""  # no second answer: the smuggled GET never ran
    time.sleep(0.2)
    assert "smuggled" not in node.log()
    assert not (node.root / "smuggle.txt").exists()


def test_transfer_encoding_in_http_1_0_is_400(node):
    with socket.create_connection((node.host, node.port), timeout=10) as s:
        s.sendall(b"PUT /files/old.txt HTTP/1.0\r\nHost: x\r\n" + AUTH +
                  b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\nabc")
        status, _, body, _ = read_response(s)
    assert status == 400 and json.loads(body)["error"] == "bad_request"


def test_a_head_too_large_is_json(node):
    with socket.create_connection((node.host, node.port), timeout=10) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (300 << 10) + b"\r\n\r\n")
        status, _, body, _ = read_response(s)
    assert status == 431 and json.loads(body)["error"] == "headers_too_large"


# -- connections: a budget, not a lock-out -----------------------------------------------------------

class Crowd:
    """`idle` sockets that send nothing and `trickling` ones sending one header byte every `pause` s."""

    def __init__(self, node, idle: int, trickling: int, pause: float = 0.5):
        self.node, self.pause = node, pause
        self.idle = [self._connect() for _ in range(idle)]
        self.trickling = [self._connect() for _ in range(trickling)]
        self.closed_at: dict[int, float] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._trickle, daemon=True)

    def _connect(self) -> socket.socket:
        s = socket.socket()
        s.settimeout(10)
        s.connect_ex((self.node.host, self.node.port))  # beyond the backlog: still counted, never accepted
        return s

    def _trickle(self):
        started = time.monotonic()
        head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 10000
        i = 0
        while not self.stop.is_set():
            for n, s in enumerate(self.trickling):
                if n in self.closed_at:
                    continue
                try:
                    s.send(head[i:i + 1])
                except OSError:
                    self.closed_at[n] = time.monotonic() - started
            i += 1
            self.stop.wait(self.pause)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(10)
        for s in self.idle + self.trickling:
            s.close()


def test_healthz_answers_with_140_idle_and_140_trickling_sockets(node):
    with Crowd(node, idle=140, trickling=140):
        time.sleep(1.5)
        latencies = [healthz(node) for _ in range(5)]
    print(f"\n/healthz with 140 idle + 140 trickling: max {max(latencies) * 1000:.0f} ms")
    assert max(latencies) < 1


def start_budget_node(tmp_path, connection_limit: int, head_timeout: float) -> NodeProcess:
    """One node run through server.serve() with a small connection budget."""
    host = support.loopback_host()
    port = support.free_port(host)
    root = tmp_path / "root"
    root.mkdir()
    config = support.write_config(tmp_path / "c.toml", {"a": (f"http://{host}:{port}", root)})
    node = NodeProcess("a", f"http://{host}:{port}", root, host, port, tmp_path / "node.log")
    code = ("import logging, sys\n"
            "from wsgi_stream.app import make_app\n"
            "from wsgi_stream.server import serve\n"
            "logging.basicConfig(level=logging.INFO)\n"
            "app = make_app(sys.argv[1], 'a')\n"
            "serve(app, app.config, sys.argv[2], 8, 1, 120, head_timeout=float(sys.argv[3]),"
            " connection_limit=int(sys.argv[4]))\n")
    with open(node.log_path, "wb") as log:
        node.proc = subprocess.Popen([sys.executable, "-c", code, str(config), f"{host}:{port}", str(head_timeout),
                                      str(connection_limit)], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    node.wait_ready()
    return node


def test_over_the_limit_idle_and_slow_heads_go_first_and_healthz_still_answers(tmp_path):
    node = start_budget_node(tmp_path, connection_limit=100, head_timeout=3)
    try:
        with Crowd(node, idle=140, trickling=140) as crowd:
            time.sleep(0.5)
            waited = healthz(node, timeout=10)
            time.sleep(4.5)
            print(f"\nlimit 100, 140 idle + 140 trickling: /healthz in {waited:.1f}s, "
                  f"{len(crowd.closed_at)} trickling closed; then {healthz(node) * 1000:.0f} ms")
            assert waited < 8  # behind ~180 queued connects, freed about 50 a second
            assert healthz(node) < 1
            assert len(crowd.closed_at) > 100  # trickling heads do not hold a slot for ever
        log = node.log()
        assert "sent no complete request head within 3s" in log
        assert "neared its limit of 100 connections" in log
    finally:
        node.stop()
