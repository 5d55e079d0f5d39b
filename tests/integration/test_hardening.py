"""One waitress node under load: many slow clients at once, a thousand aborted downloads, 20 stops.

Node a (64 threads, serve.py's default) serves its own files, forwards b's files and builds
cluster ZIPs of both. Clients are raw sockets with small receive buffers. Features that have not
landed yet (an endpoint answering 501) are left out of the mix.
"""

import hashlib
import http.client
import io
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import support
from support import read_head

POOL_MAXSIZE = 16  # wsgi_stream.peers.PeerClient: idle keep-alive connections kept per peer


@pytest.fixture
def pair(cluster_factory):
    """Nodes a (64 threads) and b, with files on both; returns (a, b, kinds that work)."""
    cl = cluster_factory(names=("a", "b"), threads=64)
    a, b = cl["a"], cl["b"]
    rng = random.Random(7)
    for node in (a, b):
        (node.root / "big.bin").write_bytes(rng.randbytes(3 << 20))
        (node.root / "mid.bin").write_bytes(rng.randbytes(1 << 20))
    kinds = ["local", "range"]
    if get(a, "/nodes/b/files/mid.bin")[0] != 501:
        kinds.append("forwarded")
    if get(a, "/cluster/files/mid.bin")[0] != 501:
        kinds.append("zip")
    return a, b, kinds


def get(node, path, headers=None, timeout=30):
    conn = http.client.HTTPConnection(node.host, node.port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def target(kind: str, name: str) -> tuple[str, bytes]:
    """(path, extra request header lines) for a download of `kind`."""
    return {"local": (f"/files/{name}", b""),
            "range": (f"/files/{name}", b"Range: bytes=1000-\r\n"),
            "forwarded": (f"/nodes/b/files/{name}", b""),
            "zip": (f"/cluster/files/{name}", b"")}[kind]


def expected(kind: str, a, b, name: str) -> bytes | None:
    """The exact bytes of a download of `kind` (None for a ZIP: checked with zipfile)."""
    if kind == "local":
        return (a.root / name).read_bytes()
    if kind == "range":
        return (a.root / name).read_bytes()[1000:]
    if kind == "forwarded":
        return (b.root / name).read_bytes()
    return None


def open_download(node, path, extra=b"", rcvbuf=None) -> socket.socket:
    return support.raw_get(node, path, b"Connection: close\r\n" + extra, rcvbuf)


def slow_download(node, path, extra, block=64 << 10, pause=0.05) -> tuple[int, bytes]:
    """Read the body `block` bytes at a time, pausing `pause` s between blocks, small receive buffer."""
    with open_download(node, path, extra, rcvbuf=16 << 10) as s:
        status, headers, body = read_head(s)
        length = int(headers["content-length"])
        parts = [body]
        got = len(body)
        while got < length:
            want = got + block
            while got < min(want, length):
                chunk = s.recv(min(want, length) - got)
                if not chunk:
                    raise ConnectionError(f"{path}: closed after {got} of {length} bytes")
                parts.append(chunk)
                got += len(chunk)
            time.sleep(pause)
        return status, b"".join(parts)


def check_zip(data: bytes, a, b, name: str) -> None:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        assert z.testzip() is None
        assert z.read(f"a/{name}") == (a.root / name).read_bytes()
        assert z.read(f"b/{name}") == (b.root / name).read_bytes()


class HealthPoller:
    """Polls /healthz every 0.1 s on a fresh connection; records each answer's latency."""

    def __init__(self, node):
        self.node, self.latencies, self.failures = node, [], []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                status, _ = get(self.node, "/healthz", timeout=5)
                if status != 200:
                    self.failures.append(status)
            except OSError as exc:
                self.failures.append(repr(exc))
            self.latencies.append(time.monotonic() - started)
            self.stop.wait(0.1)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(10)


def test_32_slow_clients_all_complete_and_healthz_stays_fast(pair):
    a, b, kinds = pair
    jobs = [(kinds[i % len(kinds)], "big.bin") for i in range(32)]
    results = {}

    def run(i, kind, name):
        path, extra = target(kind, name)
        results[i] = slow_download(a, path, extra)

    started = time.monotonic()
    with HealthPoller(a) as health, ThreadPoolExecutor(len(jobs)) as pool:
        futures = [pool.submit(run, i, kind, name) for i, (kind, name) in enumerate(jobs)]
        for f in futures:
            f.result(timeout=90)
    elapsed = time.monotonic() - started
    for i, (kind, name) in enumerate(jobs):
        status, body = results[i]
        assert status == (206 if kind == "range" else 200), (kind, status)
        if kind == "zip":
            check_zip(body, a, b, name)
        else:
            assert hashlib.sha256(body).digest() == hashlib.sha256(expected(kind, a, b, name)).digest(), kind
    print(f"\n32 slow clients ({', '.join(kinds)}): {elapsed:.1f}s; healthz answers {len(health.latencies)}, "
          f"max {max(health.latencies) * 1000:.0f} ms; node a VmHWM {a.rss_peak_kib() // 1024} MiB")
    assert health.failures == []
    assert len(health.latencies) >= 10 and max(health.latencies) < 1.0
    assert a.rss_peak_kib() < 300 * 1024


# -- leaks -------------------------------------------------------------------------------------

def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            link = os.readlink(fd)
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    return inodes


def established_to(pid: int, host: str, port: int) -> int:
    """How many of `pid`'s sockets are ESTABLISHED connections to host:port (from /proc/net/tcp)."""
    want = "%08X:%04X" % (struct.unpack("<I", socket.inet_aton(host))[0], port)
    mine = socket_inodes(pid)
    count = 0
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[2] == want and fields[3] == "01" and fields[9] in mine:
            count += 1
    return count


def open_files(pid: int, root: Path) -> list[str]:
    found = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            link = os.readlink(fd)
        except OSError:
            continue
        if link.startswith(str(root)):
            found.append(link)
    return found


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def settle(check, timeout=20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return check()


def abort_download(node, path, extra, after: int, reset: bool) -> None:
    """Ask for `path`, read about `after` bytes of the answer, then close (FIN, or RST if `reset`)."""
    s = open_download(node, path, extra)
    try:
        got = 0
        while got < after:
            chunk = s.recv(min(65536, after - got))
            if not chunk:
                break
            got += len(chunk)
    finally:
        if reset:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()


def test_1000_aborted_downloads_leak_nothing(pair):
    a, b, kinds = pair
    # Warm up: one full download of each kind, so the peer pool has its connections.
    for kind in kinds:
        path, extra = target(kind, "mid.bin")
        with open_download(a, path, extra) as s:
            status, headers, rest = read_head(s)
            while s.recv(1 << 20):
                pass
    time.sleep(0.5)
    fds_a, fds_b, peer_conns = fd_count(a.pid), fd_count(b.pid), established_to(a.pid, b.host, b.port)

    rng = random.Random(20261125)
    sizes = {"local": 1 << 20, "range": (1 << 20) - 1000, "forwarded": 1 << 20, "zip": 2 << 20}
    plan = []
    for i in range(1000):
        kind = kinds[i % len(kinds)]
        after = 0 if rng.random() < 0.05 else rng.randrange(sizes[kind])
        plan.append((kind, after, rng.random() < 0.5))
    started = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        for f in [pool.submit(abort_download, a, *target(kind, "mid.bin"), after, reset)
                  for kind, after, reset in plan]:
            f.result(timeout=60)
    aborted_in = time.monotonic() - started

    assert settle(lambda: not open_files(a.pid, a.root) and not open_files(b.pid, b.root)), \
        (open_files(a.pid, a.root), open_files(b.pid, b.root))
    assert settle(lambda: fd_count(a.pid) <= fds_a + POOL_MAXSIZE + 4), (fds_a, fd_count(a.pid))
    assert settle(lambda: established_to(a.pid, b.host, b.port) <= max(peer_conns, POOL_MAXSIZE))
    assert settle(lambda: fd_count(b.pid) <= fds_b + POOL_MAXSIZE + 4), (fds_b, fd_count(b.pid))
    after_fds = (fd_count(a.pid), fd_count(b.pid), established_to(a.pid, b.host, b.port))

    # No worker thread is stuck: 64 full downloads at once still complete promptly.
    def full(i):
        kind = kinds[i % len(kinds)]
        path, extra = target(kind, "mid.bin")
        with open_download(a, path, extra) as s:
            status, headers, body = read_head(s)
            parts = [body]
            while chunk := s.recv(1 << 20):
                parts.append(chunk)
        body = b"".join(parts)
        if kind == "zip":
            check_zip(body, a, b, "mid.bin")
        else:
            assert body == expected(kind, a, b, "mid.bin"), kind
        return kind

    started = time.monotonic()
    with ThreadPoolExecutor(64) as pool:
        done = list(pool.map(full, range(64), timeout=30))
    full_in = time.monotonic() - started
    assert len(done) == 64
    assert get(a, "/healthz", timeout=1)[0] == 200
    print(f"\n1000 aborted ({', '.join(kinds)}) in {aborted_in:.1f}s; fds a {fds_a}->{after_fds[0]}, "
          f"b {fds_b}->{after_fds[1]}, a->b established {peer_conns}->{after_fds[2]}; "
          f"64 full downloads in {full_in:.1f}s; a VmHWM {a.rss_peak_kib() // 1024} MiB")
    assert a.rss_peak_kib() < 300 * 1024


# -- stops -------------------------------------------------------------------------------------

def start_single(tmp_path: Path, i: int, *flags: str) -> support.NodeProcess:
    """One node (4 threads) through serve.py, its log in node-<i>.log."""
    host = support.loopback_host()
    port = support.free_port(host)
    root = tmp_path / "root"
    if not root.exists():
        root.mkdir()
        (root / "big.bin").write_bytes(os.urandom(8 << 20))
    config = support.write_config(tmp_path / f"c{i}.toml", {"a": (f"http://{host}:{port}", root)}, chunk_size=65536)
    node = support.NodeProcess("a", f"http://{host}:{port}", root, host, port, tmp_path / f"node-{i}.log")
    with open(node.log_path, "wb") as log:
        node.proc = subprocess.Popen(
            [sys.executable, str(support.REPO / "serve.py"), "--config", str(config), "--node", "a",
             "--threads", "4", *flags], stdout=log, stderr=log)
    node.wait_ready()
    return node


def keep_busy(node) -> list[socket.socket]:
    """Downloads the client does not read (a whole file by sendfile, a range by a worker), a slow head, an idle one."""
    stalled = [support.raw_get(node, "/files/big.bin", rcvbuf=4096),
               support.raw_get(node, "/files/big.bin", b"Range: bytes=1-\r\n", rcvbuf=4096)]
    for s in stalled:
        assert s.recv(12).startswith(b"HTTP/1.1 20")
    slow = socket.create_connection((node.host, node.port), timeout=5)
    slow.sendall(b"GET /healthz HTTP/1.1\r\nHo")
    return stalled + [slow, socket.create_connection((node.host, node.port), timeout=5)]


def test_20_stops_of_idle_and_busy_nodes_are_quiet(tmp_path):
    """SIGTERM or SIGINT, idle or mid-download: exit 0, the right signal named, no traceback."""
    for i in range(20):
        sig = (signal.SIGTERM, signal.SIGINT)[i // 2 % 2]
        node = start_single(tmp_path, i, "--grace", "1")
        clients = keep_busy(node) if i % 2 else []
        try:
            node.proc.send_signal(sig)
            assert node.proc.wait(10) == 0, node.log()
        finally:
            for s in clients:
                s.close()
            node.stop()
        log = node.log()
        assert f"{sig.name}: refusing new requests" in log, log
        assert "Traceback" not in log and "Exception" not in log and "Errno" not in log, log


def test_a_second_signal_exits_at_once_and_says_which(tmp_path):
    node = start_single(tmp_path, 0, "--grace", "60")
    clients = keep_busy(node)
    try:
        node.proc.send_signal(signal.SIGINT)
        time.sleep(0.3)
        started = time.monotonic()
        node.proc.send_signal(signal.SIGTERM)
        assert node.proc.wait(5) == 1 and time.monotonic() - started < 2
    finally:
        for s in clients:
            s.close()
        node.stop()
    log = node.log()
    assert "SIGINT: refusing new requests" in log and "second SIGTERM: exiting now" in log
    assert "Traceback" not in log
