"""The command line: run one node under waitress, check a cluster, or start a demo cluster."""

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

from .app import make_app
from .config import ConfigError, check_node, load_config, single_node_config
from .errors import ApiError
from .peers import PeerClient
from .server import serve

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


def run_node(args, parser_error) -> None:
    config, node = resolve_config(args, parser_error)
    listen = args.listen or f"{config.nodes[node].host}:{config.nodes[node].port}"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = make_app(config, node)
    serve(app, config, listen, args.threads, args.grace, args.client_timeout)
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
    # The nodes import this very package, wherever it was started from (source tree or install).
    package_parent = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_parent, os.environ.get("PYTHONPATH")])))
    procs = [subprocess.Popen([sys.executable, "-m", "wsgi_stream.cli", "--config", str(config_path),
                               "--node", name, "--threads", str(args.threads)], env=env) for name in names]
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
