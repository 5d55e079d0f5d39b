"""A peer's file forwarded under waitress is relayed with splice(): the right bytes, or a cut, never a short "whole".

Node a forwards b's file: after the head and the first block, a's worker thread moves the
rest from b's socket to the client's with splice() (strace shows it). A slow reader, a
range, a client that leaves and a peer that breaks off or stalls each end as they do when
the body is read and yielded: the bytes, or a connection closed early. Every case ends with a
holding no connection to b it does not need and one access-log line with the bytes sent.
"""

import hashlib
import os
import re
import socket
import struct
import time

import pytest

import support
from faultproxy import FaultProxy

SIZE = 24 << 20
MiB = 1 << 20


@pytest.fixture(scope="module")
def hop(tmp_path_factory):
    """Nodes a and b (waitress), a reaching b through a fault proxy; b holds big.bin."""
    tmp = tmp_path_factory.mktemp("relay")
    with FaultProxy() as proxy:
        cl = support.start_cluster(tmp, ("a", "b"), urls={"b": proxy.url}, start=["a"], threads=4,
                                   read_timeout=1)
        try:
            proxy.target = (cl["b"].host, cl["b"].port)
            support.launch(cl["b"], cl.config_path).wait_ready()
            (cl["b"].root / "big.bin").write_bytes(os.urandom(SIZE))
            yield cl, proxy
        finally:
            cl.stop()


@pytest.fixture
def a(hop):
    cl, proxy = hop
    proxy.set("pass")
    return cl["a"]


@pytest.fixture
def proxy(hop):
    return hop[1]


def data(hop) -> bytes:
    return (hop[0]["b"].root / "big.bin").read_bytes()


def get(a, extra: bytes = b"", rcvbuf=None, pause: float = 0.0) -> tuple[int, dict, bytes, bool]:
    """GET big.bin of b through a on a raw socket: status, headers, body, and whether it was all there."""
    with support.raw_get(a, "/nodes/b/files/big.bin", b"Connection: close\r\n" + extra, rcvbuf) as s:
        status, headers, body = support.read_head(s)
        try:
            while chunk := s.recv(256 << 10):
                body += chunk
                if pause:
                    time.sleep(pause)
        except ConnectionError:
            pass
    return status, headers, body, len(body) == int(headers["content-length"])


def logged(a, status: int) -> list[int]:
    """Byte counts of a's access-log lines for big.bin of b with `status`."""
    return [int(m.group(1)) for m in re.finditer(rf'"GET /nodes/b/files/big\.bin" {status} (\d+) ', a.log())]


def connections_to(a, proxy) -> int:
    """a's TCP connections to the proxy standing for b (from /proc/net/tcp, state ESTABLISHED)."""
    host, port = proxy.url.rsplit("//", 1)[1].split(":")
    want = f"{socket.inet_aton(host)[::-1].hex().upper()}:{int(port):04X}"
    inodes = set()
    for fd in os.listdir(f"/proc/{a.pid}/fd"):
        try:
            link = os.readlink(f"/proc/{a.pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    count = 0
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if fields[2] == want and fields[3] == "01" and fields[9] in inodes:
                count += 1
    return count


def settles(measure, limit, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if measure() <= limit:
            return True
        time.sleep(0.05)
    return False


def test_whole_file(a, hop):
    before = len(logged(a, 200))
    status, headers, body, whole = get(a)
    assert status == 200 and whole and hashlib.sha256(body).digest() == hashlib.sha256(data(hop)).digest()
    assert support.wait_for(lambda: len(logged(a, 200)) > before)
    assert logged(a, 200)[-1] == SIZE


def test_open_range(a, hop):
    status, headers, body, whole = get(a, b"Range: bytes=3000000-\r\n")
    assert status == 206 and whole and headers["content-range"] == f"bytes 3000000-{SIZE - 1}/{SIZE}"
    assert body == data(hop)[3000000:]


def test_slow_reader(a, hop):
    status, _, body, whole = get(a, rcvbuf=64 << 10, pause=0.001)
    assert status == 200 and whole and body == data(hop)


def test_keep_alive_after_a_relay(a, hop):
    """The client's connection serves another request after a relayed body."""
    with support.raw_get(a, "/nodes/b/files/big.bin") as s:
        status, headers, rest = support.read_head(s)
        assert status == 200
        got = len(rest)
        while got < SIZE:
            got += len(s.recv(1 << 20))
        assert got == SIZE
        s.sendall(f"GET /healthz HTTP/1.1\r\nHost: {a.host}\r\n\r\n".encode())
        status, _, _ = support.read_head(s)
        assert status == 200


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
def test_client_that_leaves_frees_the_peer_connection(a, proxy, reset):
    before = len(logged(a, 200))
    s = support.raw_get(a, "/nodes/b/files/big.bin", rcvbuf=16 << 10)
    got = 0
    while got < 3 * MiB:
        got += len(s.recv(64 << 10))
    if reset:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    assert support.wait_for(lambda: len(logged(a, 200)) > before)
    counts = logged(a, 200)[before:]
    assert len(counts) == 1 and 3 * MiB <= counts[0] < SIZE  # what went out, not the whole file
    assert settles(lambda: connections_to(a, proxy), 0), "a still holds the relayed connection to b"
    assert support.http("GET", f"{a.url}/healthz").status == 200


@pytest.mark.parametrize("mode", ["cut", "stall_after"])
def test_peer_that_breaks_off_mid_relay_cuts_the_client(a, hop, proxy, mode):
    before = len(logged(a, 200))
    proxy.set(mode, cut_after=5 * MiB)
    started = time.monotonic()
    status, _, body, whole = get(a)
    assert status == 200 and not whole, "a short body was presented as complete"
    assert 2 * MiB < len(body) <= 5 * MiB and data(hop).startswith(body)
    assert time.monotonic() - started < 5  # read_timeout = 1
    assert support.wait_for(lambda: len(logged(a, 200)) > before)
    assert logged(a, 200)[-1] == len(body)
    line = [line for line in a.log().splitlines() if "stream from node b broke off" in line][-1]
    assert "big.bin" in line and ("closed early" in line or "sent nothing for 1 s" in line)


@pytest.mark.skipif(not support.can_strace(), reason="strace is not installed or may not trace here (ptrace refused)")
def test_strace_shows_splice(a, hop, tmp_path):
    got = {}
    spliced = support.traced_bytes(a.pid, "splice", tmp_path / "strace.txt", lambda: got.update(answer=get(a)))
    assert got["answer"][0] == 200 and got["answer"][3]
    # Each relayed byte is spliced twice (socket -> pipe -> socket); the first 1 MiB block is read.
    assert spliced >= 2 * (SIZE - 2 * MiB)
