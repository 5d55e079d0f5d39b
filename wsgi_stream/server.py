"""Everything waitress-specific in one place: the server's settings, stalled clients, graceful stop."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

import waitress
from waitress import wasyncore
from waitress.channel import HTTPChannel
from waitress.server import BaseWSGIServer

from .errors import StreamBroken
from .replies import shutting_down, status_line
from .uploads import server_body_limit

log = logging.getLogger("wsgi_stream")


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


def _busy_channels(server) -> int:
    return sum(1 for ch in list(server._map.values())
               if isinstance(ch, HTTPChannel) and (ch.requests or ch.total_outbufs_len))


def _stop_listening(server) -> None:
    for dispatcher in list(server._map.values()):
        if isinstance(dispatcher, BaseWSGIServer):
            dispatcher.accepting = False
            dispatcher.del_channel()
            dispatcher.socket.close()


class BrokenStreamFilter(logging.Filter):
    """Turns waitress's traceback for a deliberately cut response (StreamBroken) into one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], StreamBroken):
            record.msg, record.args = "%s: connection closed early: %s", (record.getMessage(), record.exc_info[1])
            record.exc_info, record.exc_text, record.levelno, record.levelname = None, None, logging.WARNING, "WARNING"
        return True


def cut_stalled_clients(server) -> None:
    """Also close connections whose client stopped reading mid-response for channel_timeout seconds.

    waitress only times out connections between requests; a client that stays connected but reads
    nothing would otherwise hold a worker thread (forwarded files, ZIPs, ranges) for ever.
    """
    timeout = server.adj.channel_timeout
    original = server.maintenance

    def maintenance(now):
        original(now)
        stalled = [channel for channel in list(server.active_channels.values())
                   if channel.requests and channel.total_outbufs_len and channel.last_activity < now - timeout]
        for channel in stalled:
            log.warning("closing connection from %s: it read nothing for %ds", channel.addr[0], timeout)
        if stalled:
            # Not will_close: that waits for the socket to turn writable, which it never will. And not
            # here: maintenance runs while waitress builds its select() lists, so a socket closed now
            # could be handed to select(); the trigger runs the close after select() returned.
            server.trigger.pull_trigger(lambda: [channel.handle_close() for channel in stalled])

    server.maintenance = maintenance


def install_graceful_shutdown(server, gate: ShutdownGate, grace: float) -> None:
    """SIGTERM/SIGINT: stop accepting, let running responses finish up to `grace` s, then end the loop.

    A second signal exits at once.
    """

    def drain():
        deadline = time.monotonic() + grace
        while _busy_channels(server) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = _busy_channels(server)
        if left:
            log.warning("grace period of %gs is over: cutting %d running responses", grace, left)
        # Closing every channel empties waitress's map, which ends its loop in the main thread.
        server.trigger.pull_trigger(lambda: wasyncore.close_all(server._map))

    def on_signal(signum, frame):
        if gate.closing:
            log.warning("second %s: exiting now", signal.Signals(signum).name)
            os._exit(1)
        gate.closing = True
        log.info("%s: refusing new requests, finishing %d running ones (up to %gs)",
                 signal.Signals(signum).name, _busy_channels(server), grace)
        # Sockets may only be closed from waitress's loop, not while its select() holds them.
        server.trigger.pull_trigger(lambda: _stop_listening(server))
        threading.Thread(target=drain, name="drain", daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's malloc arenas, so memory does not grow with every thread that carried a big transfer.

    glibc gives each thread its own arena; the 1 MiB blocks of a download then stay cached per
    thread: measured 84 MiB peak after 11 downloads under waitress, 46 MiB with this cap, same speed.
    """
    import ctypes

    try:
        ctypes.CDLL(None).mallopt(-8, arenas)  # M_ARENA_MAX; a no-op outside glibc
    except (OSError, AttributeError):
        pass


def serve(app, config, listen: str, threads: int, grace: float, client_timeout: int) -> None:
    """Run `app` under waitress on `listen` until SIGTERM/SIGINT (graceful) or a second signal."""
    limit_malloc_arenas()  # before waitress starts its threads
    gate = ShutdownGate(app)
    logging.getLogger("waitress").addFilter(BrokenStreamFilter())
    # Keep a slow client's pending output in memory and small (at most about two chunks): waitress
    # would otherwise queue up to 16 MiB per connection and spill to temporary files beyond 1 MiB.
    server = waitress.create_server(
        gate, listen=listen, threads=threads, ident="wsgi_stream",
        outbuf_high_watermark=config.chunk_size, outbuf_overflow=3 * config.chunk_size,
        connection_limit=max(100, 2 * threads), clear_untrusted_proxy_headers=True,
        channel_timeout=client_timeout, cleanup_interval=max(1, min(30, client_timeout // 2)),
        max_request_body_size=server_body_limit(config))  # waitress's default refuses uploads >= 1 GiB
    cut_stalled_clients(server)
    install_graceful_shutdown(server, gate, grace)
    log.info("node %s serving %s on http://%s (%d threads)", app.name, app.root, listen, threads)
    try:
        server.run()
    finally:
        server.task_dispatcher.shutdown(timeout=5)
