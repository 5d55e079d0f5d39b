"""deploy/wsgi_stream@.service: systemd accepts it, its ExecStart (the venv's wsgi-stream) runs a node that stops
cleanly on its KillSignal, and a start problem exits with the status that stops restarts."""

import configparser
import os
import shlex
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from support import REPO, NodeProcess, free_port, loopback_host, write_config

UNIT = REPO / "deploy" / "wsgi_stream@.service"
# The unit runs the venv's console script; here, this venv's, running this checkout (PYTHONPATH).
WSGI_STREAM = Path(sys.executable).parent / "wsgi-stream"
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))


def read_unit():
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str
    parser.read_string(UNIT.read_text())
    return parser


def test_unit_parses_and_says_what_matters():
    unit = read_unit()
    service = unit["Service"]
    assert service["KillSignal"] == "SIGTERM" and service["RestartPreventExitStatus"] == "2"
    grace = float(shlex.split(service["ExecStart"])[shlex.split(service["ExecStart"]).index("--grace") + 1])
    assert float(service["TimeoutStopSec"]) > grace
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    assert service["User"] == "wsgi-stream" and service["ProtectSystem"] == "full"  # roots under /srv stay writable


def exec_start(config: Path) -> list[str]:
    """The unit's ExecStart for node a, with this venv's wsgi-stream and `config` in place of /opt and /etc."""
    if not WSGI_STREAM.exists():
        pytest.skip(f"{WSGI_STREAM} is missing: install the project in this venv (pip install -e .)")
    argv = shlex.split(read_unit()["Service"]["ExecStart"].replace("%i", "a"))
    assert argv[0] == "/opt/wsgi_stream/bin/wsgi-stream"  # the venv the README's install creates
    assert argv[argv.index("--config") + 1] == "/etc/wsgi_stream/cluster.toml"
    argv[0], argv[argv.index("--config") + 1] = str(WSGI_STREAM), str(config)
    return argv


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed (Debian: systemd)")
def test_systemd_analyze_verify_accepts_it(tmp_path):
    exe = WSGI_STREAM if WSGI_STREAM.exists() else Path(shutil.which("true"))
    target = tmp_path / "wsgi_stream@a.service"  # ExecStart must name a program that exists here
    target.write_text(UNIT.read_text().replace("/opt/wsgi_stream/bin/wsgi-stream", str(exe)))
    result = subprocess.run(["systemd-analyze", "verify", str(target)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "wsgi_stream@a.service" not in result.stderr, result.stderr


def test_exec_start_runs_a_node_that_stops_cleanly(tmp_path):
    host = loopback_host()
    port = free_port(host)
    root = tmp_path / "root"
    root.mkdir()
    (root / "f.txt").write_text("from systemd")
    config = write_config(tmp_path / "cluster.toml", {"a": (f"http://{host}:{port}", root)})
    node = NodeProcess("a", f"http://{host}:{port}", root, host, port, tmp_path / "log")
    with open(node.log_path, "wb") as log:
        node.proc = subprocess.Popen(exec_start(config), stdout=log, stderr=log, cwd="/", env=ENV)
    try:
        node.wait_ready()
        with urllib.request.urlopen(f"{node.url}/files/f.txt") as r:
            assert r.read() == b"from systemd"
        node.proc.send_signal(signal.SIGTERM)
        assert node.proc.wait(10) == 0
    finally:
        node.stop()


def test_exec_start_with_a_start_problem_exits_2_which_stops_restarts(tmp_path):
    config = write_config(tmp_path / "cluster.toml", {"b": (f"http://127.0.0.1:{free_port()}", tmp_path)})
    result = subprocess.run(exec_start(config), capture_output=True, text=True, timeout=30, env=ENV)
    assert result.returncode == 2 == int(read_unit()["Service"]["RestartPreventExitStatus"])
    assert result.stderr == f"wsgi-stream: error: {config}: unknown node 'a' (nodes: b)\n"
