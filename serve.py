#!/usr/bin/env python3
"""Run a wsgi_stream node under waitress, or a three-node demo cluster on loopback."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from wsgi_stream.config import ConfigError, check_node, load_config, single_node_config
from wsgi_stream.errors import ApiError
from wsgi_stream.peers import PeerClient
from wsgi_stream.replies import shutting_down, status_line

# Each download that is not a plain local file (a forwarded file, a cluster ZIP) keeps one waitress
# thread busy for as long as it runs; many long downloads at once need many threads.
DEFAULT_THREADS = 64


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Serve files of one wsgi_stream node with waitress.")
    p.add_argument("--config", help="cluster TOML file (without it: serve --root as a one-node cluster)")
    p.add_argument("--node", help="this node's name in the config (default without config: the host name)")
    p.add_argument("--root", help="directory to serve when there is no config (default: the current one)")
    p.add_argument("--listen", help="HOST:PORT to listen on (default: the node's url, or 127.0.0.1:8080)")
    p.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                   help=f"waitress worker threads (default {DEFAULT_THREADS})")
    p.add_argument("--grace", type=float, default=30.0,
                   help="seconds running downloads may take to finish after SIGTERM (default 30)")
    p.add_argument("--client-timeout", type=int, default=120,
                   help="seconds before closing a connection whose client sends or reads nothing (default 120)")
    p.add_argument("--check", action="store_true",
                   help="check the config and reach every peer's /healthz, print one line per node, then exit")
    p.add_argument("--demo", action="store_true", help="start a three-node demo cluster on loopback")
    p.add_argument("--demo-dir", default=os.path.join(tempfile.gettempdir(), "wsgi_stream-demo"),
                   help="where the demo keeps its files (default: %(default)s)")
    return p.parse_args(argv)


def resolve_config(args, parser_error):
    """The Config and node name the arguments ask for; exits with status 2 on a bad config."""
    try:
        if args.config:
            if args.root:
                parser_error("--root applies only without --config (the config names each node's root)")
            if not args.node:
                parser_error("--node is required with --config")
            config = load_config(args.config)
            node = args.node
        else:
            config = single_node_config(args.root or ".", args.listen or "127.0.0.1:8080", args.node)
            node = next(iter(config.nodes))
        check_node(config, node)
    except ConfigError as exc:
        print(f"serve.py: error: {exc}", file=sys.stderr)
        sys.exit(2)
    return config, node


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
    from waitress.channel import HTTPChannel
    return sum(1 for ch in list(server._map.values())
               if isinstance(ch, HTTPChannel) and (ch.requests or ch.total_outbufs_len))


def _stop_listening(server) -> None:
    from waitress.server import BaseWSGIServer
    for dispatcher in list(server._map.values()):
        if isinstance(dispatcher, BaseWSGIServer):
            dispatcher.accepting = False
            dispatcher.del_channel()
            dispatcher.socket.close()


class BrokenStreamFilter(logging.Filter):
    """Turns waitress's traceback for a deliberately cut response (StreamBroken) into one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        from wsgi_stream.errors import StreamBroken

        if record.exc_info and isinstance(record.exc_info[1], StreamBroken):
            record.msg, record.args = "%s: connection closed early: %s", (record.getMessage(), record.exc_info[1])
            record.exc_info, record.exc_text, record.levelno, record.levelname = None, None, logging.WARNING, "WARNING"
        return True


def cut_stalled_clients(server) -> None:
    """Also close connections whose client stopped reading mid-response for channel_timeout seconds.

    waitress only times out connections between requests; a client that stays connected but reads
    nothing would otherwise hold a worker thread (forwarded files, ZIPs, ranges) for ever.
    """
    log = logging.getLogger("wsgi_stream")
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
    import threading

    from waitress import wasyncore

    log = logging.getLogger("wsgi_stream")

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


def run_node(args, parser_error) -> None:
    import waitress

    from wsgi_stream import make_app
    from wsgi_stream.uploads import server_body_limit

    config, node = resolve_config(args, parser_error)
    listen = args.listen or f"{config.nodes[node].host}:{config.nodes[node].port}"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    limit_malloc_arenas()  # before waitress starts its threads
    app = make_app(config, node)
    gate = ShutdownGate(app)
    logging.getLogger("waitress").addFilter(BrokenStreamFilter())
    # Keep a slow client's pending output in memory and small (at most about two chunks): waitress
    # would otherwise queue up to 16 MiB per connection and spill to temporary files beyond 1 MiB.
    server = waitress.create_server(
        gate, listen=listen, threads=args.threads, ident="wsgi_stream",
        outbuf_high_watermark=config.chunk_size, outbuf_overflow=3 * config.chunk_size,
        connection_limit=max(100, 2 * args.threads), clear_untrusted_proxy_headers=True,
        channel_timeout=args.client_timeout, cleanup_interval=max(1, min(30, args.client_timeout // 2)),
        max_request_body_size=server_body_limit(config))  # waitress's default refuses uploads >= 1 GiB
    cut_stalled_clients(server)
    install_graceful_shutdown(server, gate, args.grace)
    logging.getLogger("wsgi_stream").info("node %s serving %s on http://%s (%d threads)",
                                          node, app.root, listen, args.threads)
    try:
        server.run()
    finally:
        server.task_dispatcher.shutdown(timeout=5)
    logging.getLogger("wsgi_stream").info("node %s stopped", node)


def run_check(args, parser_error) -> int:
    """Check the config and every peer; one line per node; 0 when all is well, 1 otherwise."""
    config, node = resolve_config(args, parser_error)
    client = PeerClient(config, node)
    problems = 0
    print(f"config {config.source}: {len(config.nodes)} nodes, token {'set' if config.token else 'not set'}, "
          f"uploads {'on' if config.uploads else 'off'}")
    for name, peer in config.nodes.items():
        if name == node:
            print(f"  {name:<12} {peer.url:<32} ok (this node, root {peer.root})")
            continue
        started = time.monotonic()
        try:
            status, message = client.health(name)
            if status != "ok":
                raise ApiError(message)
            client.get_json(name, "/list/")  # proves the token is accepted
            print(f"  {name:<12} {peer.url:<32} ok ({(time.monotonic() - started) * 1000:.0f} ms)")
        except ApiError as exc:
            problems += 1
            print(f"  {name:<12} {peer.url:<32} PROBLEM: {exc.message}")
    return 1 if problems else 0


# -- demo ------------------------------------------------------------------------------------

def _free_port(host: str) -> int:
    import socket
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _write_demo_files(root: Path, name: str) -> None:
    """A few files of different sizes, some the same path on every node."""
    (root / "logs").mkdir(parents=True, exist_ok=True)
    (root / "logs" / "app.log").write_text(
        "".join(f"{name} 2026-11-25T12:00:{i % 60:02d} request {i} ok\n" for i in range(2000)))
    (root / "logs" / "errors.log").write_text(f"{name}: no errors\n")
    (root / "hello.txt").write_text(f"Hello from node {name}!\n")
    (root / f"only-on-{name}.txt").write_text(f"This file is only on {name}.\n")
    bundle = root / "bundle.tar.gz"
    if not bundle.exists():
        with open(bundle, "wb") as f:
            f.write(os.urandom(8 << 20))
    (root / "rapport d'été.txt").write_text("UTF-8 names work.\n")


def run_demo(args) -> None:
    base = Path(args.demo_dir)
    names = ["a", "b", "c"]
    lines = ["[cluster]", "uploads = true", ""]
    for name in names:
        root = base / name
        _write_demo_files(root, name)
        lines += [f"[nodes.{name}]", f'url = "http://127.0.0.1:{_free_port("127.0.0.1")}"',
                  f'root = "{root}"', ""]
    config_path = base / "cluster.toml"
    config_path.write_text("\n".join(lines))
    config = load_config(config_path)
    procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), "--config", str(config_path),
                               "--node", name, "--threads", str(args.threads)]) for name in names]
    print(f"\nwsgi_stream demo: three nodes, files under {base}, config {config_path}\n")
    for name in names:
        print(f"  node {name}: open {config.nodes[name].url}/")
    url = config.nodes["a"].url
    print(f"\n  try: curl -OJ {url}/nodes/b/files/logs/app.log"
          f"\n       curl -OJ {url}/cluster/files/logs\n\nCtrl-C stops all three.\n", flush=True)
    try:
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
    print("demo stopped")


def main(argv=None) -> None:
    args = parse_args(argv)
    parser_error = argparse.ArgumentParser(prog="serve.py").error
    if args.threads < 1:
        parser_error("--threads must be at least 1")
    if args.check:
        sys.exit(run_check(args, parser_error))
    if args.demo:
        run_demo(args)
    else:
        run_node(args, parser_error)


if __name__ == "__main__":
    main()
