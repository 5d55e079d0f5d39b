"""A fault-injecting TCP proxy for tests: put it between a node and its peer, then break things.

Node a reaches peer b only through the proxy; b's real process listens on its own host:port::

    from faultproxy import proxied_cluster

    def test_cut(cluster_factory):
        with proxied_cluster(cluster_factory, names=("a", "b"), proxied=["b"], read_timeout=1) as (cl, px):
            px["b"].set("cut", cut_after=1000)           # the next connection a opens to b is cut
            r = support.http("GET", cl["a"].url + "/nodes/b/files/big.bin", stream=True)
            ...

The same by hand (target known only once the cluster is written)::

    with FaultProxy() as proxy:
        cl = cluster_factory(names=("a", "b"), urls={"b": proxy.url}, start=["a"])
        proxy.target = (cl["b"].host, cl["b"].port)
        support.launch(cl["b"], cl.config_path).wait_ready()   # b listens on its host:port

Modes, applied to each new connection (to the first `times` ones only, if set; later ones pass):

- "pass": forward both ways.
- "refuse": accept, then reset at once (RST): the client's request fails like a dead peer.
  (For a real ECONNREFUSED, point the URL at `support.free_port()` with nothing listening.)
- "stall": accept and never answer (the request is read and dropped).
- "hold": accept and never read: a hung peer, whose client's sends block once the buffers fill.
- "cut": forward, then close both sides once `cut_after` response bytes went to the client.
- "cut_request": forward, then close both sides once `cut_after` request bytes went upstream.
- "stall_after": forward `cut_after` response bytes, then forward nothing more, keeping both open.
- "slow": forward, the request bytes at most `rate` bytes per second (a slow link to the node).
- "hold_answer": forward the request; hold the answer back until `release()` (then it passes whole).

`sent_up` counts the request bytes forwarded upstream over all connections.

`proxy.latency = 0.02` (any mode) holds every piece of a request 20 ms before passing it on, so
each round trip through the proxy takes that much longer, as between sites.

Existing connections keep the behaviour they started with; `set()` closes them by default, so
a client's pooled keep-alive connection does not dodge the new mode.
"""

from __future__ import annotations

import socket
import struct
import threading
import time

MODES = ("pass", "refuse", "stall", "hold", "cut", "cut_request", "stall_after", "slow", "hold_answer")
_BLOCK = 64 * 1024


def _reset(sock: socket.socket) -> None:
    """Close `sock` with an RST instead of a FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


def _shut(sock: socket.socket) -> None:
    # shutdown() wakes a recv() blocked in another thread; close() alone does not.
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


class _Link:
    """One proxied connection: the client's socket, the upstream one, and when it is over."""

    def __init__(self, client: socket.socket, upstream: socket.socket | None = None):
        self.client, self.upstream = client, upstream
        self.closed = threading.Event()
        self.stalled = False
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            if self.closed.is_set():
                return
            self.closed.set()
        _shut(self.client)
        if self.upstream is not None:
            _shut(self.upstream)


class FaultProxy:
    """A loopback TCP proxy to (target_host, target_port) whose connections can be broken on purpose."""

    def __init__(self, target_host: str | None = None, target_port: int | None = None,
                 listen_host: str = "127.0.0.1", *, mode: str = "pass", cut_after: int = 0,
                 times: int | None = None, max_connections: int = 64):
        self.target = (target_host, target_port) if target_host else None
        self.max_connections = max_connections
        self.mode, self.cut_after, self.times, self.rate = "pass", 0, None, 0
        self.released = threading.Event()
        self.sent_up = 0
        self.latency = 0.0  # seconds added to every request piece passed upstream
        self.set(mode, cut_after=cut_after, times=times, drop=False)
        self.accepted = 0   # connections accepted since the last set()
        self.total = 0      # connections accepted ever
        self.faulted = 0    # connections that got a mode other than "pass"
        self._links: set[_Link] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._listener = socket.socket()
        self._listener.bind((listen_host, 0))
        self._listener.listen(128)
        self._listener.settimeout(0.1)
        self.host, self.port = self._listener.getsockname()[:2]
        self._thread = threading.Thread(target=self._accept_loop, name=f"faultproxy-{self.port}", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def active(self) -> int:
        """Connections currently open through the proxy."""
        with self._lock:
            return len(self._links)

    def set(self, mode: str, *, cut_after: int = 0, times: int | None = None, rate: int = 0,
            drop: bool = True) -> "FaultProxy":
        """Change the behaviour of new connections; `drop` closes the ones open now."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        self.mode, self.cut_after, self.times, self.rate = mode, cut_after, times, rate
        self.released.clear()
        self.accepted = 0
        if drop:
            self.close_connections()
        return self

    def release(self) -> None:
        """Let the answers a "hold_answer" connection kept back go on to the client."""
        self.released.set()

    def close_connections(self) -> None:
        """Close every connection open through the proxy now."""
        with self._lock:
            links = list(self._links)
        for link in links:
            link.close()

    def stop(self) -> None:
        """Stop listening and close every connection."""
        self._stopping.set()
        self._thread.join(5)
        self._listener.close()
        self.close_connections()

    def __enter__(self) -> "FaultProxy":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- inside ----------------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except (socket.timeout, BlockingIOError):
                continue
            except OSError:
                return
            client.settimeout(None)
            with self._lock:
                full = len(self._links) >= self.max_connections
                index = self.accepted
                self.accepted += 1
                self.total += 1
            mode = self.mode if self.times is None or index < self.times else "pass"
            if full or self.target is None:
                _reset(client)
                continue
            if mode != "pass":
                self.faulted += 1
            threading.Thread(target=self._serve, args=(client, mode, self.cut_after), daemon=True).start()

    def _serve(self, client: socket.socket, mode: str, limit: int) -> None:
        rate = self.rate if mode == "slow" else 0
        if mode == "refuse":
            _reset(client)
            return
        link = _Link(client)
        with self._lock:
            self._links.add(link)
        try:
            if mode == "stall":
                self._drain(link)
                return
            if mode == "hold":
                link.closed.wait()
                return
            try:
                link.upstream = socket.create_connection(self.target, timeout=5)
                link.upstream.settimeout(None)
            except OSError:
                _reset(client)
                link.closed.set()
                return
            down = threading.Thread(target=self._pump, daemon=True, args=(
                link, link.upstream, link.client, limit if mode in ("cut", "stall_after") else None,
                "stall" if mode == "stall_after" else "cut", 0, mode == "hold_answer"))
            down.start()
            self._pump(link, link.client, link.upstream, limit if mode == "cut_request" else None, "cut", rate)
            down.join()
        finally:
            link.close()
            with self._lock:
                self._links.discard(link)

    def _drain(self, link: _Link) -> None:
        """Read and drop what the client sends, answering nothing, until it or the proxy closes."""
        while not link.closed.is_set():
            try:
                if not link.client.recv(_BLOCK):
                    return
            except OSError:
                return

    def _pump(self, link: _Link, src: socket.socket, dst: socket.socket, limit: int | None,
              action: str, rate: int = 0, hold: bool = False) -> None:
        """Copy src to dst; at `limit` bytes cut the link or stall it; at most `rate` bytes/s; `hold`: wait for release()."""
        sent = 0
        started = time.monotonic()
        try:
            while True:
                data = src.recv(16384 if rate else _BLOCK)
                if hold:
                    while not (self.released.wait(0.1) or link.closed.is_set()):
                        pass
                if rate:
                    ahead = started + (sent + len(data)) / rate - time.monotonic()
                    if ahead > 0:
                        time.sleep(ahead)
                if not data:
                    if link.stalled or src is link.client:
                        # Client gone (or half-closed): nothing it still waits for can arrive.
                        link.close()
                    else:
                        dst.shutdown(socket.SHUT_WR)
                    return
                if link.stalled:
                    continue
                if self.latency and src is link.client:
                    time.sleep(self.latency)
                if limit is not None and sent + len(data) >= limit:
                    dst.sendall(data[:limit - sent])
                    sent = limit
                    if action == "cut":
                        link.close()
                        return
                    link.stalled = True
                    link.closed.wait()
                    return
                dst.sendall(data)
                sent += len(data)
                if src is link.client:
                    self.sent_up += len(data)
        except OSError:
            link.close()


class proxied_cluster:
    """Start a cluster where each node in `proxied` is reached through its own FaultProxy.

    Yields (cluster, {name: proxy}); the proxies stop on exit, the nodes with the cluster_factory.
    """

    def __init__(self, cluster_factory, proxied=("b",), names=("a", "b", "c"), start=None, **kwargs):
        self.factory, self.proxied, self.names = cluster_factory, tuple(proxied), tuple(names)
        self.start = tuple(names if start is None else start)
        self.kwargs = kwargs
        self.proxies: dict[str, FaultProxy] = {}

    def __enter__(self):
        import support

        self.proxies = {name: FaultProxy() for name in self.proxied}
        try:
            urls = dict(self.kwargs.pop("urls", {}) or {}, **{n: p.url for n, p in self.proxies.items()})
            direct = [n for n in self.start if n not in self.proxies]
            cluster = self.factory(names=self.names, urls=urls, start=direct, **self.kwargs)
            later = [n for n in self.start if n in self.proxies]
            for name in later:
                node = cluster[name]
                self.proxies[name].target = (node.host, node.port)
                support.launch(node, cluster.config_path, server=self.kwargs.get("server", "waitress"))
            for name in later:
                cluster[name].wait_ready()
        except BaseException:
            self.__exit__()
            raise
        return cluster, self.proxies

    def __exit__(self, *exc) -> None:
        for proxy in self.proxies.values():
            proxy.stop()
