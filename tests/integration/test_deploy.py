"""deploy/wsgi_stream@.service: it parses, and its ExecStart runs a node that stops cleanly on its KillSignal."""

import configparser
import shlex
import shutil
import signal
import subprocess
import urllib.request

import pytest

from support import REPO, NodeProcess, free_port, loopback_host, write_config

UNIT = REPO / "deploy" / "wsgi_stream@.service"


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


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_systemd_analyze_accepts_it(tmp_path):
    target = tmp_path / "wsgi_stream@a.service"
    target.write_text(UNIT.read_text())
    result = subprocess.run(["systemd-analyze", "verify", str(target)], capture_output=True, text=True)
    assert "Unknown key" not in result.stderr and "Unknown section" not in result.stderr, result.stderr


def test_exec_start_runs_a_node_that_stops_cleanly(tmp_path):
    host = loopback_host()
    port = free_port(host)
    root = tmp_path / "root"
    root.mkdir()
    (root / "f.txt").write_text("from systemd")
    config = write_config(tmp_path / "cluster.toml", {"a": (f"http://{host}:{port}", root)})
    argv = shlex.split(read_unit()["Service"]["ExecStart"].replace("%i", "a"))
    argv = [str(REPO / "serve.py") if a.endswith("/serve.py") else str(config) if a.endswith("cluster.toml") else a
            for a in argv]
    argv[0] = shutil.which("python3")
    node = NodeProcess("a", f"http://{host}:{port}", root, host, port, tmp_path / "log")
    with open(node.log_path, "wb") as log:
        node.proc = subprocess.Popen(argv, stdout=log, stderr=log, cwd=REPO)
    try:
        node.wait_ready()
        with urllib.request.urlopen(f"{node.url}/files/f.txt") as r:
            assert r.read() == b"from systemd"
        node.proc.send_signal(signal.SIGTERM)
        assert node.proc.wait(10) == 0
    finally:
        node.stop()
