"""Everything waitress-specific in one place: the server's settings, the connection budget, graceful stop.

The connection itself (deciding on the request head, the spool, sendfile) is waitress_channel.py.
"""

from __future__ import annotations

import logging
import os
import resource
import signal
import stat as stat_mod
import time
from pathlib import Path

import waitress
from waitress import wasyncore
from waitress.channel import HTTPChannel
from waitress.server import BaseWSGIServer

from .errors import StreamBroken
from .memory import limit_malloc_arenas
from .paths import TEMP_PREFIX
from .replies import shutting_down, status_line
from .uploads import server_body_limit
from .waitress_channel import LINGER_SECONDS, NodeChannel, Settings, channel_class

log = logging.getLogger("wsgi_stream")

DEFAULT_HEAD_TIMEOUT = 10.0
DEFAULT_CONNECTION_LIMIT = 512
# Near the connection limit (above HIGH of it), connections that are idle or still sending their
# request head are closed, longest waiting first, down to LOW of it; only ones waiting for at
# least PRESSURE_WAIT seconds, so a request that just connected gets its turn.
PRESSURE_HIGH, PRESSURE_LOW, PRESSURE_WAIT = 0.75, 0.5, 1.0
# Request bodies spool here, under the root: hidden like an upload's temporary files (paths.py).
SPOOL_NAME = TEMP_PREFIX + "spool"
# waitress reads at most this much per recv(); its default (8 KiB) makes uploads CPU-bound.
RECV_BYTES = 256 << 10


class ShutdownGate:
    """Passes requests to the app until shutdown starts; then answers 503 (keep-alive clients included)."""

    def __init__(self, app):
        self.app = app
        self.closing = False

    def __call__(self, environ, start_response):
        if not self.closing:
            return self.app(environ, start_response)
        reply = shutting_down()
        start_response(status_line(reply.status), reply.headers)
        return reply.body


class BrokenStreamFilter(logging.Filter):
    """Turns waitress's traceback for a deliberately cut response (StreamBroken) into one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], StreamBroken):
            record.msg, record.args = "%s: connection closed early: %s", (record.getMessage(), record.exc_info[1])
            record.exc_info, record.exc_text, record.levelno, record.levelname = None, None, logging.WARNING, "WARNING"
        return True


def _channels(server) -> list[NodeChannel]:
    return [ch for ch in list(server.active_channels.values()) if isinstance(ch, NodeChannel)]


def _busy_channels(socket_map) -> int:
    return sum(1 for ch in list(socket_map.values())
               if isinstance(ch, HTTPChannel) and (ch.requests or ch.total_outbufs_len))


# -- the connection budget ------------------------------------------------------------------

def to_close(channels, now: float, *, client_timeout: float, head_timeout: float, limit: int,
             open_count: int) -> dict[str, list]:
    """Which connections to close now, by reason (a pure function of the channels' state)."""
    found = {"stalled": [], "head": [], "linger": [], "pressure": []}
    for ch in channels:
        waiting = ch.waiting_for_head()
        if ch.total_outbufs_len and ch.last_activity < now - client_timeout:
            found["stalled"].append(ch)  # waitress would not close one with a request running
        elif waiting is not None and now - waiting > head_timeout:
            found["head"].append(ch)
        elif ch.lingering_since is not None and now - ch.lingering_since > LINGER_SECONDS:
            found["linger"].append(ch)
    open_count -= sum(map(len, found.values()))
    if open_count > PRESSURE_HIGH * limit:
        doomed = {id(ch) for chs in found.values() for ch in chs}
        idle = sorted((since, id(ch), ch) for ch in channels
                      if id(ch) not in doomed and (since := ch.idle_since()) is not None
                      and now - since >= PRESSURE_WAIT)
        excess = open_count - int(PRESSURE_LOW * limit)
        found["pressure"] = [ch for _, _, ch in idle[:max(excess, 0)]]
    return found


_REASONS = {"stalled": "read nothing for {client_timeout:g}s mid-response",
            "head": "sent no complete request head within {head_timeout:g}s",
            "pressure": "were idle while the server neared its limit of {limit} connections"}


def budget_connections(server, head_timeout: float) -> None:
    """Add to waitress's maintenance (every cleanup_interval): close what holds a slot for nothing.

    waitress closes only connections idle between requests (channel_timeout). Here also: a client
    that stopped reading mid-response for channel_timeout, a request head not complete within
    `head_timeout`, a refused request's lingering close that lasts, and near the connection limit
    idle connections and slow heads, longest waiting first.
    """
    original = server.maintenance
    adj = server.adj

    def maintenance(now):
        original(now)
        found = to_close(_channels(server), now, client_timeout=adj.channel_timeout, head_timeout=head_timeout,
                         limit=adj.connection_limit, open_count=len(server._map))
        closing = [ch for chs in found.values() for ch in chs]
        for reason, chs in found.items():
            if chs and reason in _REASONS:
                log.warning("closing %d connection(s) that %s (%s)", len(chs),
                            _REASONS[reason].format(client_timeout=adj.channel_timeout, head_timeout=head_timeout,
                                                    limit=adj.connection_limit),
                            ", ".join(sorted({ch.addr[0] for ch in chs})[:5]))
        if closing:
            # Not here: maintenance runs while waitress builds its poll lists, so a socket closed now
            # could be handed to poll(); the trigger runs the closes after poll() returned.
            server.trigger.pull_trigger(lambda: [ch.close_now() for ch in closing if ch.socket is not None])

    server.maintenance = maintenance


def fit_connection_limit(limit: int, threads: int) -> int:
    """`limit`, the open-files limit raised to fit it where allowed; lowered (with a warning) where not."""
    need = limit + 2 * threads + 64  # + a file or peer connection per thread, the spool, logs
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (need if hard == resource.RLIM_INFINITY else min(need, hard), hard))
        except (ValueError, OSError):
            pass
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft != resource.RLIM_INFINITY and soft < need:
        fitted = max(16, soft - 2 * threads - 64)
        log.warning("connection limit lowered from %d to %d: only %d open files allowed (ulimit -n)",
                    limit, fitted, soft)
        return fitted
    return limit


# -- the spool ------------------------------------------------------------------------------

def prepare_spool(root: Path) -> Path | None:
    """The root's hidden directory for request bodies (created 0700); None (and a warning) if unusable."""
    path = Path(root) / SPOOL_NAME
    try:
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        st = os.lstat(path)
        if not stat_mod.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            log.warning("%s is not a directory of this user: request bodies spool in $TMPDIR", path)
            return None
        if stat_mod.S_IMODE(st.st_mode) != 0o700:
            os.chmod(path, 0o700)
        for leftover in path.glob("body-*"):  # named spool files (no O_TMPFILE) of a node that died
            leftover.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("cannot use %s (%s): request bodies spool in $TMPDIR", path, exc.strerror)
        return None
    return path


# -- graceful stop --------------------------------------------------------------------------

class Stopper:
    """SIGTERM/SIGINT: stop accepting, let running responses finish up to `grace` s, then stop.

    The signal handler only records the signal and wakes the loop; everything else runs in the
    loop (run_until_stopped), between two polls, so no socket is closed under waitress's feet.
    A second signal exits at once.
    """

    def __init__(self, socket_map: dict, servers: list, gate: ShutdownGate, grace: float):
        self.map, self.servers, self.gate, self.grace = socket_map, servers, gate, grace
        self.signal: str | None = None
        self.deadline: float | None = None
        self.closed = False

    def on_signal(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.signal is not None:
            log.warning("second %s: exiting now", name)
            os._exit(1)
        self.signal = name
        self.gate.closing = True
        if not self.closed:
            try:
                self.servers[0].trigger.pull_trigger()  # no thunk: takes no lock, just wakes poll()
            except OSError:
                pass

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self.on_signal)
        signal.signal(signal.SIGINT, self.on_signal)

    def step(self) -> bool:
        """Between two polls: start or continue the stop; True once everything is closed."""
        if self.signal is None:
            return False
        now = time.monotonic()
        if self.deadline is None:
            self.deadline = now + self.grace
            log.info("%s: refusing new requests, finishing %d running ones (up to %gs)",
                     self.signal, _busy_channels(self.map), self.grace)
            for server in self.servers:  # the listening sockets (not waitress's close(): it closes the trigger)
                server.accepting = False
                server.del_channel()
                server.socket.close()
        busy = _busy_channels(self.map)
        if busy and now < self.deadline:
            return False
        if busy:
            log.warning("grace period of %gs is over: cutting %d running responses", self.grace, busy)
        self.closed = True
        triggers = {id(server.trigger) for server in self.servers}
        for dispatcher in list(self.map.values()):
            if isinstance(dispatcher, NodeChannel):
                dispatcher.close_now()  # under the channel's lock: a worker may be sending on it
            elif id(dispatcher) in triggers:
                dispatcher.del_channel()  # its pipe stays open: a worker thread may still pull it
            else:
                dispatcher.close()
        self.map.clear()
        return True


def run_until_stopped(socket_map: dict, adj, stopper: Stopper) -> None:
    """waitress's loop, with the graceful stop run between two polls."""
    poll = wasyncore.poll2 if adj.asyncore_use_poll else wasyncore.poll
    while socket_map:
        poll(0.1 if stopper.signal else adj.asyncore_loop_timeout, socket_map)
        if stopper.step():
            return


def serve(app, config, listen: str, threads: int, grace: float, client_timeout: int, *,
          head_timeout: float = DEFAULT_HEAD_TIMEOUT, connection_limit: int = DEFAULT_CONNECTION_LIMIT) -> None:
    """Run `app` under waitress on `listen` until SIGTERM/SIGINT (graceful) or a second signal.

    `client_timeout`: seconds a client may send or read nothing (idle keep-alive, or mid-response);
    `head_timeout`: seconds to receive a complete request head; `connection_limit`: open
    connections at most (idle ones and slow heads are closed first as it nears).
    """
    limit_malloc_arenas()  # before waitress starts its threads
    gate = ShutdownGate(app)
    logging.getLogger("waitress").addFilter(BrokenStreamFilter())
    spool = prepare_spool(app.root) if config.uploads else None
    settings = Settings(check_head=getattr(app, "check_head", None), spool_dir=spool)
    socket_map: dict = {}
    # Keep a slow client's pending output in memory and small (at most about two chunks): waitress
    # would otherwise queue up to 16 MiB per connection and spill to temporary files beyond 1 MiB.
    # poll(), not select(): select() cannot watch file descriptors above 1023.
    waitress.create_server(
        gate, map=socket_map, listen=listen, threads=threads, ident="wsgi_stream",
        outbuf_high_watermark=config.chunk_size, outbuf_overflow=3 * config.chunk_size,
        connection_limit=fit_connection_limit(connection_limit, threads), clear_untrusted_proxy_headers=True,
        channel_timeout=client_timeout, cleanup_interval=1, recv_bytes=RECV_BYTES, asyncore_use_poll=True,
        max_request_body_size=server_body_limit(config))  # waitress's default refuses uploads >= 1 GiB
    servers = [d for d in socket_map.values() if isinstance(d, BaseWSGIServer)]
    for server in servers:
        server.channel_class = channel_class(settings)
        budget_connections(server, head_timeout)
    stopper = Stopper(socket_map, servers, gate, grace)
    stopper.install()
    log.info("node %s serving %s on http://%s (%d threads, %d connections, request heads within %gs)",
             app.name, app.root, listen, threads, servers[0].adj.connection_limit, head_timeout)
    try:
        run_until_stopped(socket_map, servers[0].adj, stopper)
    finally:
        servers[0].task_dispatcher.shutdown(timeout=5)
