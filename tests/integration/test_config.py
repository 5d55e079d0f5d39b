"""Config loading and `wsgi-stream` (serve.py) refusing bad configs with one clear line and exit status 2."""

import subprocess
import sys

import pytest

from support import REPO, free_port, write_config
from wsgi_stream.config import ConfigError, check_node, config_from_dict, load_config


def run_serve(*args, timeout=20):
    return subprocess.run([sys.executable, str(REPO / "serve.py"), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def test_full_config_loads_with_defaults(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[cluster]\ntoken = "s"\nuploads = true\nread_timeout = 5\n'
                    f'[nodes.a]\nurl = "http://127.0.0.2:8001/"\nroot = "{tmp_path}"\n'
                    '[nodes.b]\nurl = "http://127.0.0.3:8002"\nroot = "/srv/b"\n')
    config = load_config(path)
    assert list(config.nodes) == ["a", "b"]
    assert config.token == "s" and config.uploads is True and config.read_timeout == 5.0
    assert config.chunk_size == 1 << 20 and config.connect_timeout == 3.0 and config.max_upload_size == 64 << 30
    assert config.nodes["a"].url == "http://127.0.0.2:8001" and config.nodes["a"].port == 8001
    assert check_node(config, "a").root == tmp_path
    with pytest.raises(AttributeError):
        config.token = "x"  # frozen


@pytest.mark.parametrize("cluster, nodes, message", [
    ({"chunk": 1}, None, "unknown key 'chunk' in [cluster]"),
    ({"chunk_size": "big"}, None, "chunk_size must be"),
    ({"chunk_size": True}, None, "chunk_size must be"),
    ({"uploads": "yes"}, None, "uploads must be true or false"),
    ({"read_timeout": -1}, None, "read_timeout must be a positive number"),
    ({"max_upload_size": -5}, None, "max_upload_size must be"),
    ({}, {"a": {"url": "ftp://x", "root": "/"}}, "is not like http://host:port"),
    ({}, {"a": {"url": "http://127.0.0.1:99999", "root": "/"}}, "has a bad port"),
    ({}, {"a": {"url": "http://h:1", "root": "/", "port": 1}}, "unknown key 'port' in [nodes.a]"),
    ({}, {"a": {"url": "http://h:1"}}, "[nodes.a] is missing 'root'"),
    ({}, {}, "no nodes"),
])
def test_bad_values_name_the_key(cluster, nodes, message):
    nodes = {"a": {"url": "http://127.0.0.1:1", "root": "/"}} if nodes is None else nodes
    with pytest.raises(ConfigError) as err:
        config_from_dict({"cluster": cluster, "nodes": nodes}, source="c.toml")
    assert message in str(err.value) and str(err.value).startswith("c.toml: ")


def node_config(tmp_path, root, extra=""):
    path = tmp_path / "c.toml"
    path.write_text(f'{extra}\n[nodes.a]\nurl = "http://127.0.0.1:{free_port()}"\nroot = "{root}"\n')
    return path


@pytest.mark.parametrize("case, expected", [
    ("unknown node", "unknown node 'zz'"),
    ("missing root", "is not a directory"),
    ("bad toml", "not valid TOML"),
    ("unknown key", "unknown key 'colour'"),
    ("no file", "config file not found"),
    ("wrong type", "chunk_size must be"),
])
def test_serve_refuses_bad_config_with_one_line_and_status_2(tmp_path, case, expected):
    path = node_config(tmp_path, tmp_path)
    node = "a"
    if case == "unknown node":
        node = "zz"
    elif case == "missing root":
        path = node_config(tmp_path, tmp_path / "nowhere")
    elif case == "bad toml":
        path.write_text("[nodes.a\n")
    elif case == "unknown key":
        path = node_config(tmp_path, tmp_path, "[cluster]\ncolour = 'blue'")
    elif case == "no file":
        path = tmp_path / "absent.toml"
    elif case == "wrong type":
        path = node_config(tmp_path, tmp_path, "[cluster]\nchunk_size = 'x'")
    result = run_serve("--config", str(path), "--node", node)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and "Traceback" not in result.stderr
    assert lines[0].startswith("wsgi-stream: error: ")


def test_serve_usage_errors(tmp_path):
    result = run_serve("--config", str(node_config(tmp_path, tmp_path)))
    assert result.returncode == 2 and result.stderr.startswith("usage: wsgi-stream ")  # the whole usage
    assert "wsgi-stream --config FILE --node NAME" in result.stderr
    assert result.stderr.strip().splitlines()[-1] == "wsgi-stream: error: --node is required with --config"
    result = run_serve("--root", str(tmp_path / "nowhere"), "--listen", "127.0.0.1:1")
    assert result.returncode == 2 and "is not a directory" in result.stderr


def test_write_config_roundtrip(tmp_path):
    path = write_config(tmp_path / "c.toml", {"a": ("http://127.0.0.2:1", tmp_path)}, token="t", uploads=True)
    assert load_config(path).token == "t"
