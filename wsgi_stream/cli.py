"""The command line: run one node under waitress, check a cluster, or start a demo cluster."""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

from .app import make_app
from .config import Config, ConfigError, check_node, config_from_dict, load_config, single_node_config
from .errors import ApiError
from .peers import PeerClient
from .server import DEFAULT_CONNECTION_LIMIT, DEFAULT_HEAD_TIMEOUT, serve

PROG = "wsgi-stream"

# Each download that is not a plain local file (a forwarded file, a cluster ZIP) keeps one waitress
# thread busy for as long as it runs; many long downloads at once need many threads.
DEFAULT_THREADS = 64
DEFAULT_PORT = 8080

USAGE = """\
%(prog)s [--root DIR] [--listen HOST[:PORT]] [--node NAME] [--token T] [--uploads] [--max-upload-size N] [options]
       %(prog)s --config FILE --node NAME [--listen HOST[:PORT]] [options]
       %(prog)s --check --config FILE --node NAME
       %(prog)s --demo [--demo-dir DIR] [options]"""

# The flags that stand for a [cluster] key when there is no config file.
SINGLE_NODE_FLAGS = {"token": "--token", "uploads": "--uploads", "max_upload_size": "--max-upload-size"}
# The flags the demo takes; it writes its own config.
DEMO_FLAGS = {"demo", "demo_dir", "threads", "grace", "client_timeout", "head_timeout", "connection_limit"}

_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


class StartError(Exception):
    """A problem that stops the start, worded as one line (exit status 2)."""


def parse_size(text: str) -> int | str:
    """Bytes from '1073741824', '512K', '10G' or '10GiB' (powers of 1024); other text as is, for the config check."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:([KMGT])(?:iB)?)?\s*", text, re.IGNORECASE)
    return int(match[1]) * _SIZE_UNITS[(match[2] or "").upper()] if match else text


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `wsgi-stream` (and serve.py)."""
    p = argparse.ArgumentParser(prog=PROG, usage=USAGE,
                                description="Serve files of one wsgi_stream node with waitress.")
    p.add_argument("--config", metavar="FILE",
                   help="cluster TOML file (without it: serve --root as a one-node cluster)")
    p.add_argument("--node", metavar="NAME",
                   help="this node's name in the config (required with --config); without one: the node's "
                        "name (default: the host name)")
    p.add_argument("--root", metavar="DIR", help="without --config: the directory to serve (default: the current one)")
    p.add_argument("--listen", metavar="HOST[:PORT]",
                   help=f"where to listen (default: the host:port of the node's url; without --config "
                        f"127.0.0.1:{DEFAULT_PORT}); a missing port is the url's, or {DEFAULT_PORT}")
    p.add_argument("--token", metavar="T", help="without --config: the cluster token every request must carry")
    p.add_argument("--uploads", action="store_true", default=None, help="without --config: accept PUT uploads")
    p.add_argument("--max-upload-size", metavar="N", type=parse_size,
                   help="without --config: the largest upload in bytes, or with K, M, G, T (powers of 1024); "
                        "0 = no limit")
    p.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                   help=f"waitress worker threads (default {DEFAULT_THREADS})")
    p.add_argument("--grace", type=float, default=30.0,
                   help="seconds running downloads may take to finish after SIGTERM (default 30)")
    p.add_argument("--client-timeout", type=int, default=120,
                   help="seconds before closing a connection whose client sends or reads nothing (default 120)")
    p.add_argument("--head-timeout", type=float, default=DEFAULT_HEAD_TIMEOUT,
                   help=f"seconds a client has to send a complete request head (default {DEFAULT_HEAD_TIMEOUT:g})")
    p.add_argument("--connection-limit", type=int, default=DEFAULT_CONNECTION_LIMIT,
                   help=f"open connections at most; idle ones and slow heads go first near it "
                        f"(default {DEFAULT_CONNECTION_LIMIT})")
    p.add_argument("--check", action="store_true",
                   help="check the config and reach every peer's /healthz, print one line per node, then exit")
    p.add_argument("--demo", action="store_true", help="start a three-node demo cluster on loopback")
    p.add_argument("--demo-dir", metavar="DIR", default=os.path.join(tempfile.gettempdir(), "wsgi_stream-demo"),
                   help="where the demo keeps its files (default: %(default)s)")
    # The demo's nodes end themselves when the demo process is gone (even killed by SIGKILL).
    p.add_argument("--exit-with-parent", metavar="PID", type=int, help=argparse.SUPPRESS)
    return p


def check_combinations(args, parser: argparse.ArgumentParser) -> None:
    """Usage errors (argparse's usage + one line) and flags that do not go together (StartError)."""
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    if args.head_timeout <= 0 or args.connection_limit < 1:
        parser.error("--head-timeout must be above 0 and --connection-limit at least 1")
    if args.demo:
        extra = [name for name, value in vars(args).items()
                 if name not in DEMO_FLAGS and value not in (None, False)]
        if extra:
            raise StartError(f"--demo writes its own config: --{extra[0].replace('_', '-')} does not apply to it")
        return
    if args.config and not args.node:
        parser.error("--node is required with --config")
    if args.config:
        given = [flag for key, flag in (("root", "--root"), *SINGLE_NODE_FLAGS.items())
                 if getattr(args, key) is not None]
        if given:
            raise StartError(f"{given[0]} applies only without --config (put it in the config file instead)")


def listen_address(listen: str, default_port: int) -> str:
    """HOST:PORT for waitress from --listen (or a node's url), the port defaulting to `default_port`."""
    parts = urlsplit(f"http://{listen}")
    try:
        port = parts.port
    except ValueError:
        port = -1
    if not parts.hostname or port == -1 or parts.path or parts.query or parts.fragment or parts.username:
        raise StartError(f"--listen {listen!r} is not like HOST:PORT (IPv6: [::1]:8080)")
    port = default_port if port is None else port
    try:
        socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise StartError(f"cannot listen on {listen}: unknown host ({exc.strerror})") from None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{port}"


def cluster_flags(args) -> dict:
    """The [cluster] keys the single-node flags give."""
    return {key: getattr(args, key) for key in SINGLE_NODE_FLAGS if getattr(args, key) is not None}


def flag_wording(message: str, source: str, node: str) -> str:
    """A config check's message about the command line, naming the flags the user typed."""
    for key, flag in [*SINGLE_NODE_FLAGS.items(), ("root", "--root")]:
        for where in (f"[cluster] {key} ", f"[nodes.{node}] {key} "):
            message = message.replace(f"{source}: {where}", f"{flag} ")
    return message


def command_line_config(args, listen: str) -> Config:
    """The one-node Config of the flags, checked exactly as the same keys in a TOML file are."""
    one = single_node_config(args.root or ".", listen, args.node)
    node = next(iter(one.nodes.values()))
    data = {"cluster": cluster_flags(args), "nodes": {node.name: {"url": node.url, "root": str(node.root)}}}
    try:
        config = config_from_dict(data, source=one.source)
        check_node(config, node.name)
    except ConfigError as exc:
        raise ConfigError(flag_wording(str(exc), one.source, node.name)) from None
    return config


def resolve_config(args) -> tuple[Config, str, str]:
    """The Config, this node's name and its HOST:PORT to listen on; ConfigError/StartError on a problem."""
    if args.config:
        config = load_config(args.config)
        node = check_node(config, args.node)
        listen = listen_address(args.listen or urlsplit(node.url).netloc, node.port)
        return config, node.name, listen
    listen = listen_address(args.listen or f"127.0.0.1:{DEFAULT_PORT}", DEFAULT_PORT)
    config = command_line_config(args, listen)
    return config, next(iter(config.nodes)), listen


def resolve_check_config(args) -> tuple[Config, str]:
    """The Config and node name --check is about (where it would listen does not matter)."""
    if args.config:
        config = load_config(args.config)
        return config, check_node(config, args.node).name
    config = command_line_config(args, args.listen or f"127.0.0.1:{DEFAULT_PORT}")
    return config, next(iter(config.nodes))


def listen_problem(exc: OSError, listen: str) -> str:
    """One line for an address waitress could not listen on."""
    reason = {errno.EADDRINUSE: "address already in use",
              errno.EADDRNOTAVAIL: "no such address on this machine"}.get(exc.errno, (exc.strerror or str(exc)).lower())
    port = listen.rsplit(":", 1)[-1]
    if exc.errno in (errno.EACCES, errno.EPERM) and port.isdigit() and int(port) < 1024:
        reason += " (a port below 1024 needs root or CAP_NET_BIND_SERVICE)"
    return f"cannot listen on {listen}: {reason}"


def exit_with_parent(parent: int) -> None:
    """Stop this node gracefully (SIGTERM to itself) once process `parent` is gone, however it ended."""
    if os.getppid() != parent:
        raise StartError(f"the process that started this node ({parent}) is gone")

    def watch():
        while os.getppid() == parent:  # an orphan is adopted by init or a subreaper
            time.sleep(0.5)
        logging.getLogger("wsgi_stream").warning("the demo (pid %d) is gone: stopping", parent)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def run_node(args) -> int:
    """Serve one node until it is stopped; 0 after a graceful stop."""
    config, node, listen = resolve_config(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = make_app(config, node)
    if args.exit_with_parent:
        exit_with_parent(args.exit_with_parent)
    try:
        serve(app, config, listen, args.threads, args.grace, args.client_timeout,
              head_timeout=args.head_timeout, connection_limit=args.connection_limit)
    except OSError as exc:  # waitress binds in create_server(), before it serves anything
        raise StartError(listen_problem(exc, listen)) from None
    logging.getLogger("wsgi_stream").info("node %s stopped", node)
    return 0


def run_check(args) -> int:
    """Check the config and every peer; one line per node; 0 when all is well, 1 otherwise."""
    config, node = resolve_check_config(args)
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
            message = exc.message
            if exc.code == "peer_unauthorized" and not config.token:
                message = f"Node {name} needs a token; this config sets none ([cluster] token)."
            print(f"  {name:<12} {peer.url:<32} PROBLEM: {message}")
    return 1 if problems else 0


# -- demo ------------------------------------------------------------------------------------

DEMO_NODES = ("a", "b", "c")


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _say(text: str) -> None:
    """Print to a terminal that may be gone (SIGHUP)."""
    try:
        print(text, flush=True)
    except OSError:
        pass


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


def write_demo_config(base: Path) -> Path:
    """Sample files for every demo node and a cluster.toml (uploads on, free loopback ports)."""
    lines = ["[cluster]", "uploads = true", ""]
    for name in DEMO_NODES:
        root = base / name
        _write_demo_files(root, name)
        lines += [f"[nodes.{name}]", f'url = "http://127.0.0.1:{_free_port("127.0.0.1")}"',
                  f"root = {json.dumps(str(root))}", ""]  # a JSON string is a TOML basic string
    path = base / "cluster.toml"
    path.write_text("\n".join(lines))
    return path


def start_demo_nodes(args, config_path: Path) -> dict[str, subprocess.Popen]:
    """One process per demo node, each in a session of its own, ending itself if this process dies."""
    # The nodes import this very package, wherever it was started from (source tree or install).
    package_parent = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_parent, os.environ.get("PYTHONPATH")])))
    procs = {}
    for name in DEMO_NODES:
        # Own session: a terminal's Ctrl-C (SIGINT to its foreground process group) reaches only
        # the demo, which then stops each node once, with SIGTERM.
        procs[name] = subprocess.Popen(
            [sys.executable, "-m", "wsgi_stream.cli", "--config", str(config_path), "--node", name,
             "--threads", str(args.threads), "--grace", str(args.grace), "--client-timeout", str(args.client_timeout),
             "--head-timeout", str(args.head_timeout), "--connection-limit", str(args.connection_limit),
             "--exit-with-parent", str(os.getpid())],
            env=env, stdin=subprocess.DEVNULL, start_new_session=True)
    return procs


class DemoStop:
    """The demo's stop signals: the first SIGINT/SIGTERM/SIGHUP stops the nodes gracefully, a second kills them."""

    def __init__(self, procs: dict[str, subprocess.Popen]):
        self.procs, self.signals = procs, []
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, self.on_signal)

    def on_signal(self, signum, frame) -> None:
        self.signals.append(signum)
        if len(self.signals) > 1:  # at once, not at the next turn of the loop
            self.kill()

    def kill(self) -> None:
        """SIGKILL every node still running (no wait: this runs in a signal handler, the loop reaps them)."""
        for proc in self.procs.values():
            if proc.returncode is None:
                try:
                    os.kill(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def wait_until_up(config: Config, procs: dict[str, subprocess.Popen], stop: DemoStop,
                  timeout: float = 20) -> str | None:
    """None once every node answers /healthz, else what went wrong."""
    client = PeerClient(config, "")
    waiting = list(procs)
    deadline = time.monotonic() + timeout
    while waiting and time.monotonic() < deadline and not stop.signals:
        for name in list(waiting):
            if procs[name].poll() is not None:
                return f"node {name} exited with status {procs[name].returncode}"
            if client.health(name)[0] == "ok":
                waiting.remove(name)
        time.sleep(0.1)
    if stop.signals:
        return f"stopped by {signal.Signals(stop.signals[0]).name}"
    return f"node {waiting[0]} did not answer within {timeout:g}s" if waiting else None


def print_demo_help(config: Config, procs: dict[str, subprocess.Popen], base: Path, config_path: Path) -> None:
    """Where the nodes are and what to try."""
    lines = [f"\nwsgi_stream demo: three nodes, files under {base}, config {config_path}\n"]
    lines += [f"  node {name}: open {config.nodes[name].url}/   (pid {proc.pid})" for name, proc in procs.items()]
    url = config.nodes["a"].url
    lines += ["", f"  try: curl -OJ {url}/nodes/b/files/logs/app.log        # node b's file, through a",
              f"       curl -OJ {url}/cluster/files/logs                # logs/ of every node, one ZIP",
              f"       echo hi | curl -T - {url}/nodes/c/files/up/hi.txt  # upload to node c, through a",
              f"       curl {url}/cluster/list/up",
              "", "Ctrl-C stops all three (running downloads may finish; Ctrl-C again stops at once).\n"]
    _say("\n".join(lines))


def supervise(procs: dict[str, subprocess.Popen], stop: DemoStop, grace: float) -> int:
    """Wait for the nodes; stop them all, gracefully, on a signal or when one of them ends."""
    stopping = False
    while any(proc.poll() is None for proc in procs.values()):
        ended = [name for name, proc in procs.items() if proc.returncode is not None]
        if not stopping and (stop.signals or ended):
            stopping = True
            if stop.signals:
                _say(f"\n{signal.Signals(stop.signals[0]).name}: stopping the demo's nodes "
                     f"(running downloads may take up to {grace:g}s; Ctrl-C again stops at once)")
            else:
                _say(f"node {ended[0]} exited with status {procs[ended[0]].returncode}: stopping the demo")
            for proc in procs.values():
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
        time.sleep(0.1)
    if len(stop.signals) > 1:
        _say("demo stopped at once")
        return 1
    _say("demo stopped")
    return 0 if stop.signals and all(proc.returncode == 0 for proc in procs.values()) else 1


def run_demo(args) -> int:
    """Start three nodes on loopback and keep them until a signal; 0 after a graceful stop."""
    base = Path(args.demo_dir)
    config_path = write_demo_config(base)
    config = load_config(config_path)
    procs: dict[str, subprocess.Popen] = {}
    stop = DemoStop(procs)  # before the nodes start: a signal during the start must stop them too
    procs.update(start_demo_nodes(args, config_path))
    problem = wait_until_up(config, procs, stop)
    if problem:
        stop.kill()
        for proc in procs.values():
            proc.wait()
        raise StartError(f"the demo could not start: {problem}")
    print_demo_help(config, procs, base, config_path)
    return supervise(procs, stop, args.grace)


def main(argv=None) -> int:
    """`wsgi-stream`: the exit status (2: a usage or start problem, told in one line on stderr)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_combinations(args, parser)
        if args.check:
            return run_check(args)
        return run_demo(args) if args.demo else run_node(args)
    except (ConfigError, StartError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C before a node or the demo took over SIGINT
        return 130


if __name__ == "__main__":
    sys.exit(main())
