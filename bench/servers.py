"""The systems under test, each started as it ships.

  * wsgi_stream nodes: through tests/support.py's `server_command`, the launcher the tests use:
    waitress via serve.py, uwsgi with deploy/uwsgi.ini, gunicorn with deploy/gunicorn.conf.py;
    only the listening address and the thread count are given on the command line.
  * the bare file_wrapper app (bench/bare_app.py): the same command line with the app swapped,
    so that it runs with deploy/'s settings too (under waitress: plain waitress, same threads);
  * the naive recipes (bench/naive_app.py) under waitress;
  * nginx (sendfile / proxy_pass / WebDAV PUT) and HAProxy (splice-response) from generated configs.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from processes import BENCH_DIR, PYTHON, REPO_ROOT, Proc, Workspace, child_env, free_port, wait_http

sys.path.insert(0, os.path.join(REPO_ROOT, "tests"))
from support import server_command, write_config  # noqa: E402  (tests/support.py: the shared launcher)

WSGI_SERVERS = ("waitress", "uwsgi", "gunicorn")


def cluster_config(path: str, nodes: dict[str, tuple[str, str]], **cluster) -> str:
    """Write a cluster TOML (nodes: name -> (url, root)) with tests/support.py's writer."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return str(write_config(Path(path), {n: (u, Path(r)) for n, (u, r) in nodes.items()}, **cluster))


def parse_variants(text: str) -> list[tuple[str, str, list[str]]]:
    """'uwsgi:no offload=--offload-threads 0; gunicorn:8 threads=--threads 8' ->
    [(server, label, extra arguments)]: the node as deploy/ ships it, plus those arguments
    (after deploy/'s file on the command line, so they override it)."""
    variants = []
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        head, _, args = part.partition("=")
        server, _, label = head.partition(":")
        if server.strip() not in WSGI_SERVERS or not label.strip():
            raise ValueError(f"a variant is SERVER:LABEL=ARGS with SERVER one of {WSGI_SERVERS}: {part!r}")
        variants.append((server.strip(), label.strip(), args.split()))
    return variants


def node(ws: Workspace, config: str, name: str, host: str, port: int, server: str, threads: int,
         env: dict | None = None, extra: list[str] | None = None) -> Proc:
    """Start wsgi_stream node `name` of `config` as deploy/ does (+ `extra` arguments); wait for its first answer."""
    if server not in WSGI_SERVERS:
        raise ValueError(server)
    argv, penv = server_command(server, Path(config), name, host, port, threads)
    argv = argv + list(extra or [])
    proc = ws.start(f"node-{name}-{server}-{port}", argv, env=child_env(env, base=penv), cwd=REPO_ROOT,
                    host=host, port=port)
    wait_http(proc)
    return proc


def cluster(ws: Workspace, tag: str, roots: dict[str, str], server: str, threads: int, *,
            env: dict | None = None, urls: dict[str, str] | None = None, start: str | None = None,
            extra: list[str] | None = None, **keys) -> dict[str, Proc]:
    """Write a config for the nodes of `roots` (name -> root) and start them (or only those named in
    `start`), the last named first; `urls` gives some nodes another URL (e.g. nginx standing in);
    `extra`: arguments added to every node's command line."""
    specs, nodes = {}, {}
    for name in roots:
        host = ws.host()
        specs[name] = (host, free_port(host))
    urls = {n: (urls or {}).get(n, f"http://{h}:{p}") for n, (h, p) in specs.items()}
    config = cluster_config(ws.path("configs", f"{tag}-{specs[next(iter(specs))][1]}.toml"),
                            {n: (urls[n], roots[n]) for n in roots}, **keys)
    for name in reversed(list(roots)):
        if start is None or name in start:
            host, port = specs[name]
            nodes[name] = node(ws, config, name, host, port, server, threads, env, extra)
    return nodes


def _swap_app(argv: list[str], server: str, module: str) -> list[str]:
    """The node's command line with another app: same server, same deploy/ settings."""
    argv = list(argv)
    i = argv.index("--chdir")
    argv[i + 1] = BENCH_DIR
    if server == "uwsgi":
        return argv + ["--module", module]  # after --ini: overrides the ini's module
    return argv + [module]  # gunicorn: the positional app overrides wsgi_app


def bare_app(ws: Workspace, server: str, root: str, threads: int, extra: list[str] | None = None) -> Proc:
    """bench/bare_app.py (only wsgi.file_wrapper) serving root under `server` (+ `extra` arguments)."""
    host = ws.host()
    port = free_port(host)
    env = {"BARE_ROOT": root}
    if server == "waitress":
        argv = [PYTHON, os.path.join(BENCH_DIR, "bare_app.py"), "--root", root, "--listen", f"{host}:{port}",
                "--threads", str(threads)]
        penv = child_env(env)
    else:
        node_argv, node_env = server_command(server, Path(os.devnull), "bare", host, port, threads)
        argv = _swap_app(node_argv, server, "bare_app:application") + list(extra or [])
        penv = child_env(env, base=node_env)
    proc = ws.start(f"bare-{server}-{port}", argv, env=penv, cwd=BENCH_DIR, host=host, port=port)
    wait_http(proc, "/")
    return proc


def naive_app(ws: Workspace, tag: str, env: dict, threads: int) -> Proc:
    """bench/naive_app.py under plain waitress, configured by env (NAIVE_MODE, NAIVE_UPSTREAMS, ...)."""
    host = ws.host()
    port = free_port(host)
    argv = [PYTHON, "-m", "waitress", f"--listen={host}:{port}", f"--threads={threads}", "naive_app:application"]
    return ws.start(f"naive-{tag}-{port}", argv, env=child_env(env), cwd=BENCH_DIR, host=host, port=port)


# ---------------------------------------------------------------- nginx and HAProxy

def _user_line() -> str:
    return "user root;\n" if os.geteuid() == 0 else ""


def _nginx_location(mode: str, root: str, upstream: str) -> str:
    if mode == "static":  # root at / and at /files/, so nginx can stand in for a wsgi_stream peer
        return f"""
        location /files/ {{ alias {root}/; }}
        location / {{ root {root}; }}"""
    if mode == "proxy":
        return f"""
        location / {{
            proxy_pass {upstream};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering on;
            proxy_max_temp_file_size 0;
            proxy_request_buffering off;
            client_max_body_size 0;
        }}"""
    if mode == "dav":
        os.makedirs(os.path.join(root, ".nginx_tmp"), exist_ok=True)
        return f"""
        location / {{
            root {root};
            dav_methods PUT;
            create_full_put_path on;
            dav_access user:rw group:r all:r;
            client_max_body_size 0;
            client_body_temp_path {root}/.nginx_tmp;
        }}"""
    raise ValueError(mode)


def nginx(ws: Workspace, name: str, mode: str, *, root: str = "", upstream: str = "") -> Proc:
    """nginx, one worker: 'static' (sendfile), 'proxy' (proxy_pass upstream) or 'dav' (PUT into root)."""
    host = ws.host()
    port = free_port(host)
    prefix = ws.path("nginx", f"{name}-{port}")
    for d in ("logs", "client_body", "proxy_temp", "conf"):
        os.makedirs(os.path.join(prefix, d), exist_ok=True)
    conf = f"""{_user_line()}worker_processes 1;
daemon off;
master_process on;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 30;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy_temp;
    server {{
        listen {host}:{port};
        server_name localhost;{_nginx_location(mode, root, upstream)}
    }}
}}
"""
    conf_path = os.path.join(prefix, "conf", "nginx.conf")
    with open(conf_path, "w") as f:
        f.write(conf)
    exe = "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else "nginx"
    return ws.start(f"nginx-{name}-{port}", [exe, "-p", prefix, "-c", conf_path, "-e", f"{prefix}/logs/error.log"],
                    host=host, port=port, stop_signal=signal.SIGQUIT)


def haproxy(ws: Workspace, name: str, upstream: str) -> Proc:
    """HAProxy in HTTP mode forwarding to upstream with `option splice-response` (kernel splice, no copy)."""
    host = ws.host()
    port = free_port(host)
    up = upstream.removeprefix("http://").rstrip("/")
    conf = f"""global
    maxconn 256
defaults
    mode http
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    option splice-response
frontend front
    bind {host}:{port}
    default_backend peer
backend peer
    server peer {up}
"""
    conf_path = ws.path("haproxy", f"{name}-{port}.cfg")
    os.makedirs(os.path.dirname(conf_path), exist_ok=True)
    with open(conf_path, "w") as f:
        f.write(conf)
    exe = "/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy") else "haproxy"
    return ws.start(f"haproxy-{name}-{port}", [exe, "-f", conf_path, "-db"], host=host, port=port)
