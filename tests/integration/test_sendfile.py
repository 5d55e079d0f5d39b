"""Files under waitress go out with sendfile(): the right bytes, the file closed, the access log's count.

A whole file and a single range are sent by sendfile() from waitress's I/O thread (strace shows
it); a multi-range answer is a generator, copied. Every case ends with the node holding no
descriptor of the file.
"""

import email.parser
import os
import re
import socket
import struct
import time
from pathlib import Path

import pytest

import support

SIZE = 8 << 20


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    cl = support.start_cluster(tmp_path_factory.mktemp("sendfile"), ("a",), threads=4)
    try:
        (cl["a"].root / "big.bin").write_bytes(os.urandom(SIZE))
        yield cl["a"]
    finally:
        cl.stop()


def data(node) -> bytes:
    return (node.root / "big.bin").read_bytes()


def get(node, extra: bytes = b"", rcvbuf=None, pause: float = 0.0) -> tuple[int, dict, bytes]:
    """GET /files/big.bin on a raw socket (Connection: close), read to the end, `pause` s between reads."""
    with support.raw_get(node, "/files/big.bin", b"Connection: close\r\n" + extra, rcvbuf) as s:
        raw = b""
        while chunk := s.recv(64 << 10):
            raw += chunk
            if pause:
                time.sleep(pause)
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def file_open(node) -> bool:
    target = str(node.root / "big.bin")
    for fd in Path(f"/proc/{node.pid}/fd").iterdir():
        try:
            if os.readlink(fd) == target:
                return True
        except OSError:
            pass
    return False


def closed_soon(node, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not file_open(node):
            return True
        time.sleep(0.05)
    return False


def logged(node, status: int) -> list[int]:
    """Byte counts of the access-log lines for big.bin with `status`."""
    return [int(m.group(1)) for m in re.finditer(rf'"GET /files/big\.bin" {status} (\d+) ', node.log())]


def sendfile_bytes(node, tmp_path, request) -> int:
    """Run `request()` under strace -f on the node: the bytes its sendfile() calls sent."""
    return support.traced_bytes(node.pid, "sendfile", tmp_path / "strace.txt", request)


def test_whole_file(node):
    status, headers, body = get(node)
    assert status == 200 and int(headers["content-length"]) == SIZE and body == data(node)
    assert closed_soon(node)
    assert SIZE in logged(node, 200)


def test_single_range(node):
    status, headers, body = get(node, b"Range: bytes=1000-2999999\r\n")
    assert status == 206 and headers["content-range"] == f"bytes 1000-2999999/{SIZE}"
    assert body == data(node)[1000:3000000]
    assert closed_soon(node)
    assert 3000000 - 1000 in logged(node, 206)


def test_suffix_range(node):
    status, headers, body = get(node, b"Range: bytes=-5000\r\n")
    assert status == 206 and body == data(node)[-5000:]
    assert closed_soon(node)


def test_multi_range(node):
    status, headers, body = get(node, b"Range: bytes=0-99,5000000-5000999,-10\r\n")
    assert status == 206 and headers["content-type"].startswith("multipart/byteranges")
    message = email.parser.BytesParser().parsebytes(
        b"Content-Type: " + headers["content-type"].encode() + b"\r\n\r\n" + body)
    parts = [p.get_payload(decode=True) for p in message.get_payload()]
    whole = data(node)
    assert parts == [whole[:100], whole[5000000:5001000], whole[-10:]]
    assert closed_soon(node)


def test_slow_reader(node):
    status, headers, body = get(node, rcvbuf=16 << 10, pause=0.002)
    assert status == 200 and body == data(node)
    assert closed_soon(node)


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
def test_aborted_client(node, reset):
    before = len(logged(node, 200))
    s = support.raw_get(node, "/files/big.bin", rcvbuf=16 << 10)
    got = 0
    while got < 1 << 20:
        got += len(s.recv(64 << 10))
    if reset:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    assert closed_soon(node), "the file stays open after the client left"
    counts = logged(node, 200)[before:]
    assert len(counts) == 1 and 1 << 20 <= counts[0] < SIZE  # what went out, not the whole file
    assert support.http("GET", f"{node.url}/healthz").status == 200


@pytest.mark.skipif(not support.can_strace(), reason="strace is not installed or may not trace here (ptrace refused)")
@pytest.mark.parametrize("range_,length", [(None, SIZE), ("bytes=4096-", SIZE - 4096), ("bytes=100-1123", 1024)],
                         ids=["whole", "open-range", "small-range"])
def test_strace_shows_sendfile(node, tmp_path, range_, length):
    extra = f"Range: {range_}\r\n".encode() if range_ else b""
    got = {}
    sent = sendfile_bytes(node, tmp_path, lambda: got.update(answer=get(node, extra)))
    assert got["answer"][0] == (206 if range_ else 200) and len(got["answer"][2]) == length
    assert sent == length


@pytest.mark.skipif(not support.can_strace(), reason="strace is not installed or may not trace here (ptrace refused)")
def test_multi_range_is_copied_not_sent_by_sendfile(node, tmp_path):
    sent = sendfile_bytes(node, tmp_path, lambda: get(node, b"Range: bytes=0-9,20-29\r\n"))
    assert sent == 0


def test_a_file_that_shrinks_mid_download_is_cut_never_padded(node):
    shrink = node.root / "shrink.bin"
    shrink.write_bytes(os.urandom(SIZE))
    try:
        with support.raw_get(node, "/files/shrink.bin", rcvbuf=16 << 10) as s:
            raw = b""
            while len(raw) < 1 << 20:
                raw += s.recv(64 << 10)
            os.truncate(shrink, 2 << 20)
            while chunk := s.recv(64 << 10):
                raw += chunk
        head, _, body = raw.partition(b"\r\n\r\n")
        assert b"Content-Length: %d" % SIZE in head
        assert len(body) < SIZE  # the client can tell: fewer bytes than announced, then the connection closed
        assert "file shrank while being sent" in node.log()
    finally:
        shrink.unlink()
