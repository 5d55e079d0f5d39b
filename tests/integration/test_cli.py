"""`wsgi-stream` as a user meets it: the console command, start problems in one line, single-node flags."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from support import REPO, NodeProcess, free_port, http, loopback_host, write_config

# The venv's console script; PYTHONPATH makes it run this checkout, whatever the venv installed.
WSGI_STREAM = Path(sys.executable).parent / "wsgi-stream"
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
NOBODY = 65534


def run(*args, prefix=(), timeout=20, cwd=REPO):
    return subprocess.run([*prefix, sys.executable, str(REPO / "serve.py"), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=ENV)


def one_line_error(result) -> str:
    """The single stderr line of a refused start (exit status 2), without its prefix."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, (result.returncode, result.stderr)
    assert lines[0].startswith("wsgi-stream: error: ")
    return lines[0].removeprefix("wsgi-stream: error: ")


def unprivileged():
    """A command prefix running as an ordinary user (root ignores file modes and may bind low ports)."""
    if os.geteuid() != 0:
        return []
    if not shutil.which("setpriv"):
        pytest.skip("running as root and setpriv (util-linux) is missing: cannot run as an ordinary user")
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


@pytest.fixture
def shared_tmp():
    """A directory an ordinary user can reach (pytest's tmp_path is root's own, mode 0700)."""
    path = Path(tempfile.mkdtemp(prefix="wsgi_stream-cli-"))
    path.chmod(0o755)
    yield path
    for sub in [path, *path.rglob("*")]:
        if sub.is_dir():
            sub.chmod(0o755)
    shutil.rmtree(path)


def start(tmp_path, *args, name="cli") -> NodeProcess:
    """A node started with `args` (they must include --listen); stopped by the caller with .stop()."""
    listen = args[args.index("--listen") + 1]
    host, port = listen.rsplit(":", 1)
    node = NodeProcess(name, f"http://{listen}", tmp_path, host, int(port), tmp_path / f"{name}.log")
    with open(node.log_path, "wb") as log:
        node.proc = subprocess.Popen([sys.executable, str(REPO / "serve.py"), "--threads", "4", *args],
                                     stdout=log, stderr=log, cwd=tmp_path, env=ENV)
    node.wait_ready()
    return node


def test_the_console_command_is_wsgi_stream():
    if not WSGI_STREAM.exists():
        pytest.skip(f"{WSGI_STREAM} is missing: install the project in this venv (pip install -e .)")
    result = subprocess.run([str(WSGI_STREAM), "--help"], capture_output=True, text=True, env=ENV, timeout=20)
    assert result.returncode == 0 and result.stdout.startswith("usage: wsgi-stream ")
    assert "--max-upload-size" in result.stdout and "--exit-with-parent" not in result.stdout
    result = subprocess.run([str(WSGI_STREAM), "--config", "c.toml"], capture_output=True, text=True, env=ENV,
                            timeout=20)
    assert result.returncode == 2 and result.stderr.startswith("usage: wsgi-stream ")


def test_port_in_use_is_one_line(tmp_path):
    host = loopback_host()
    with socket.socket() as taken:
        taken.bind((host, 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run("--root", str(tmp_path), "--listen", f"{host}:{port}")
        assert one_line_error(result) == f"cannot listen on {host}:{port}: address already in use"
        config = write_config(tmp_path / "c.toml", {"a": (f"http://{host}:{port}", tmp_path)})
        result = run("--config", str(config), "--node", "a")
        assert one_line_error(result) == f"cannot listen on {host}:{port}: address already in use"


def test_address_of_another_machine_is_one_line(tmp_path):
    result = run("--root", str(tmp_path), "--listen", "192.0.2.1:8080")  # TEST-NET-1, never local
    assert one_line_error(result) == "cannot listen on 192.0.2.1:8080: no such address on this machine"


def test_low_port_as_an_ordinary_user_is_one_line(shared_tmp):
    low = Path("/proc/sys/net/ipv4/ip_unprivileged_port_start")
    if low.exists() and int(low.read_text()) <= 80:
        pytest.skip(f"{low} lets every user bind port 80 here")
    result = run("--root", str(shared_tmp), "--listen", "127.0.0.1:80", prefix=unprivileged(), cwd=shared_tmp)
    assert one_line_error(result) == ("cannot listen on 127.0.0.1:80: permission denied "
                                      "(a port below 1024 needs root or CAP_NET_BIND_SERVICE)")


@pytest.mark.parametrize("with_config", [False, True])
def test_unreadable_root_is_one_line(shared_tmp, with_config):
    root = shared_tmp / "root"
    root.mkdir(mode=0o700)
    root.chmod(0o300)  # writable, not readable: an ordinary user cannot list it
    if with_config:
        config = write_config(shared_tmp / "c.toml", {"a": (f"http://127.0.0.1:{free_port()}", root)})
        config.chmod(0o644)
        args = ("--config", str(config), "--node", "a")
        expected = f"{config}: [nodes.a] root '{root}' is not readable"
    else:
        args = ("--root", str(root), "--listen", f"127.0.0.1:{free_port()}")
        expected = f"--root '{root}' is not readable"
    result = run(*args, prefix=unprivileged(), cwd=shared_tmp)
    assert one_line_error(result) == expected


def test_unreadable_config_is_one_line(shared_tmp):
    config = write_config(shared_tmp / "c.toml", {"a": (f"http://127.0.0.1:{free_port()}", shared_tmp)})
    config.chmod(0o600)  # root's, as /etc/wsgi_stream/cluster.toml would be without its group
    result = run("--config", str(config), "--node", "a", prefix=unprivileged(), cwd=shared_tmp)
    assert one_line_error(result) == f"{config}: cannot read config: Permission denied"


def test_a_directory_as_config_is_one_line(tmp_path):
    assert one_line_error(run("--config", str(tmp_path), "--node", "a")) == \
        f"{tmp_path}: cannot read config: Is a directory"


@pytest.mark.parametrize("args, expected", [
    (("--token", ""), "--token must be a non-empty string, not ''"),
    (("--max-upload-size", "-5"), "--max-upload-size must be a number of bytes >= 0, not '-5'"),
    (("--max-upload-size", "10GB"), "--max-upload-size must be a number of bytes >= 0, not '10GB'"),
    (("--listen", "127.0.0.1:99999"), "--listen '127.0.0.1:99999' is not like HOST:PORT (IPv6: [::1]:8080)"),
    (("--root", "/nowhere/at/all"), "--root '/nowhere/at/all' is not a directory"),
    (("--config", "c.toml", "--node", "a", "--token", "t"),
     "--token applies only without --config (put it in the config file instead)"),
    (("--demo", "--root", "."), "--demo writes its own config: --root does not apply to it"),
])
def test_bad_flags_are_one_line(tmp_path, args, expected):
    assert one_line_error(run(*args)) == expected


def test_listen_without_port_logs_the_real_port(tmp_path):
    """--listen HOST keeps the port of the node's url (8080 without a config: tests/unit)."""
    host = loopback_host()
    port = free_port(host)
    config = write_config(tmp_path / "c.toml", {"a": (f"http://127.0.0.1:{port}", tmp_path)})
    log_path = tmp_path / "node.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, str(REPO / "serve.py"), "--config", str(config), "--node", "a",
                                 "--listen", host, "--threads", "2"], stdout=log, stderr=log, env=ENV)
    node = NodeProcess("a", f"http://{host}:{port}", tmp_path, host, port, log_path, proc)
    try:
        node.wait_ready()
        assert f"on http://{host}:{port} " in node.log()
    finally:
        node.stop()
    assert node.proc.returncode == 0


def test_single_node_flags_token_uploads_and_max_upload_size(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    host = loopback_host()
    node = start(tmp_path, "--root", str(root), "--listen", f"{host}:{free_port(host)}", "--node", "box",
                 "--token", "s3cret", "--uploads", "--max-upload-size", "1K")
    auth = {"Authorization": "Bearer s3cret"}
    try:
        assert http("GET", f"{node.url}/list/").status == 401
        r = http("PUT", f"{node.url}/files/up/small.txt", headers=auth, body=b"x" * 1024)
        assert r.status == 201 and (root / "up" / "small.txt").read_bytes() == b"x" * 1024
        r = http("PUT", f"{node.url}/files/up/big.txt", headers=auth, body=b"x" * 1025)
        assert r.status == 413 and not (root / "up" / "big.txt").exists()
        assert http("GET", f"{node.url}/healthz").json()["node"] == "box"
    finally:
        node.stop()
    assert node.proc.returncode == 0


def test_without_uploads_flag_put_is_405(tmp_path):
    host = loopback_host()
    node = start(tmp_path, "--root", str(tmp_path), "--listen", f"{host}:{free_port(host)}")
    try:
        assert http("PUT", f"{node.url}/files/x.txt", body=b"x").status == 405
    finally:
        node.stop()


def test_without_root_the_current_directory_is_served(tmp_path):
    (tmp_path / "here.txt").write_text("here")
    host = loopback_host()
    node = start(tmp_path, "--listen", f"{host}:{free_port(host)}")
    try:
        assert http("GET", f"{node.url}/files/here.txt").data == b"here"
        node.proc.send_signal(signal.SIGTERM)
        assert node.proc.wait(10) == 0
    finally:
        node.stop()
