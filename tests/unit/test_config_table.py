"""Config validation as tables: every refusal is one line naming the file, the table and the key.

config_from_dict is fed the structure tomllib would give; local_node checks a root in a temporary
directory. Loading a real file and `serve.py` refusing it are in tests/integration/test_config.py.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from wsgi_stream.config import Config, ConfigError, LocalNode, Node, config_from_dict, local_node

NODE = {"url": "http://127.0.0.1:8001", "root": "/srv/a"}


ABSENT = object()


def build(cluster=ABSENT, nodes=None, **sections):
    """config_from_dict of a [cluster] table (default: none) and [nodes] (default: one node 'a')."""
    data = {"nodes": {"a": dict(NODE)} if nodes is None else nodes, **sections}
    if nodes is ABSENT:
        del data["nodes"]
    if cluster is not ABSENT:
        data["cluster"] = cluster
    return config_from_dict(data, source="c.toml")


REFUSED = [
    # (id, arguments of build(), the whole message)
    ("unknown-section", {"server": {}}, "c.toml: unknown section [server]"),
    ("cluster-not-a-table", {"cluster": "yes"}, "c.toml: [cluster] must be a table"),
    ("unknown-cluster-key", {"cluster": {"chunk": 1}}, "c.toml: unknown key 'chunk' in [cluster]"),
    ("token-empty", {"cluster": {"token": ""}}, "c.toml: [cluster] token must be a non-empty string, not ''"),
    ("token-not-a-string", {"cluster": {"token": 5}}, "c.toml: [cluster] token must be a non-empty string, not 5"),
    ("chunk-size-too-small", {"cluster": {"chunk_size": 4095}},
     "c.toml: [cluster] chunk_size must be an integer from 4096 to 67108864, not 4095"),
    ("chunk-size-too-big", {"cluster": {"chunk_size": (64 << 20) + 1}},
     "c.toml: [cluster] chunk_size must be an integer from 4096 to 67108864, not 67108865"),
    ("chunk-size-bool-is-not-an-int", {"cluster": {"chunk_size": True}},
     "c.toml: [cluster] chunk_size must be an integer from 4096 to 67108864, not True"),
    ("chunk-size-float", {"cluster": {"chunk_size": 65536.0}},
     "c.toml: [cluster] chunk_size must be an integer from 4096 to 67108864, not 65536.0"),
    ("connect-timeout-zero", {"cluster": {"connect_timeout": 0}},
     "c.toml: [cluster] connect_timeout must be a positive number of seconds, not 0"),
    ("read-timeout-string", {"cluster": {"read_timeout": "30"}},
     "c.toml: [cluster] read_timeout must be a positive number of seconds, not '30'"),
    ("read-timeout-bool", {"cluster": {"read_timeout": True}},
     "c.toml: [cluster] read_timeout must be a positive number of seconds, not True"),
    ("uploads-int", {"cluster": {"uploads": 1}}, "c.toml: [cluster] uploads must be true or false, not 1"),
    ("uploads-string", {"cluster": {"uploads": "yes"}}, "c.toml: [cluster] uploads must be true or false, not 'yes'"),
    ("max-upload-size-negative", {"cluster": {"max_upload_size": -1}},
     "c.toml: [cluster] max_upload_size must be a number of bytes >= 0, not -1"),
    ("max-upload-size-bool", {"cluster": {"max_upload_size": False}},
     "c.toml: [cluster] max_upload_size must be a number of bytes >= 0, not False"),
    ("no-nodes-section", {"nodes": ABSENT}, "c.toml: no nodes: add at least one [nodes.NAME] table"),
    ("empty-nodes", {"nodes": {}}, "c.toml: no nodes: add at least one [nodes.NAME] table"),
    ("nodes-not-a-table", {"nodes": ["a"]}, "c.toml: no nodes: add at least one [nodes.NAME] table"),
    ("node-name-empty", {"nodes": {"": NODE}}, "c.toml: node name '' is not usable in a URL path"),
    ("node-name-with-slash", {"nodes": {"a/b": NODE}}, "c.toml: node name 'a/b' is not usable in a URL path"),
    ("node-name-dot", {"nodes": {".": NODE}}, "c.toml: node name '.' is not usable in a URL path"),
    ("node-name-dot-dot", {"nodes": {"..": NODE}}, "c.toml: node name '..' is not usable in a URL path"),
    ("node-name-newline-stays-one-line", {"nodes": {"a\nb": NODE}},
     "c.toml: node name 'a\\nb' is not usable in a URL path"),
    ("node-not-a-table", {"nodes": {"a": "http://h:1"}}, "c.toml: [nodes.a] must be a table"),
    ("unknown-node-key", {"nodes": {"a": {**NODE, "port": 1}}}, "c.toml: unknown key 'port' in [nodes.a]"),
    ("node-missing-url", {"nodes": {"a": {"root": "/srv"}}}, "c.toml: [nodes.a] is missing 'url'"),
    ("node-missing-root", {"nodes": {"a": {"url": NODE["url"]}}}, "c.toml: [nodes.a] is missing 'root'"),
    ("root-empty", {"nodes": {"a": {**NODE, "root": ""}}}, "c.toml: [nodes.a] root must be a directory path"),
    ("root-not-a-string", {"nodes": {"a": {**NODE, "root": 1}}}, "c.toml: [nodes.a] root must be a directory path"),
    ("url-not-a-string", {"nodes": {"a": {**NODE, "url": 8001}}}, "c.toml: [nodes.a] url must be a string, not 8001"),
    ("url-bad-port", {"nodes": {"a": {**NODE, "url": "http://h:99999"}}},
     "c.toml: [nodes.a] url 'http://h:99999' has a bad port"),
    ("url-port-not-a-number", {"nodes": {"a": {**NODE, "url": "http://h:x"}}},
     "c.toml: [nodes.a] url 'http://h:x' has a bad port"),
    ("url-other-scheme", {"nodes": {"a": {**NODE, "url": "ftp://h:21"}}},
     "c.toml: [nodes.a] url 'ftp://h:21' is not like http://host:port"),
    ("url-no-scheme", {"nodes": {"a": {**NODE, "url": "h:8001"}}},
     "c.toml: [nodes.a] url 'h:8001' is not like http://host:port"),
    ("url-no-host", {"nodes": {"a": {**NODE, "url": "http://:8001"}}},
     "c.toml: [nodes.a] url 'http://:8001' is not like http://host:port"),
    ("url-with-path", {"nodes": {"a": {**NODE, "url": "http://h:1/files"}}},
     "c.toml: [nodes.a] url 'http://h:1/files' is not like http://host:port"),
    ("url-with-query", {"nodes": {"a": {**NODE, "url": "http://h:1?x=1"}}},
     "c.toml: [nodes.a] url 'http://h:1?x=1' is not like http://host:port"),
    ("url-with-fragment", {"nodes": {"a": {**NODE, "url": "http://h:1#x"}}},
     "c.toml: [nodes.a] url 'http://h:1#x' is not like http://host:port"),
    ("url-with-credentials", {"nodes": {"a": {**NODE, "url": "http://u:p@h:1"}}},
     "c.toml: [nodes.a] url 'http://u:p@h:1' is not like http://host:port"),
]


@pytest.mark.parametrize("kwargs, message", [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_config_refused_in_one_line(kwargs, message):
    with pytest.raises(ConfigError) as err:
        build(**kwargs)
    assert str(err.value) == message and "\n" not in str(err.value)


ACCEPTED = [
    # (id, arguments of build(), {attribute: value} of the Config)
    ("defaults", {}, {"token": None, "chunk_size": 1 << 20, "connect_timeout": 3.0, "read_timeout": 30.0,
                      "uploads": False, "max_upload_size": 64 << 30}),
    ("no-upload-limit", {"cluster": {"max_upload_size": 0}}, {"max_upload_size": 0}),
    ("empty-cluster-table", {"cluster": {}}, {"chunk_size": 1 << 20}),
    ("chunk-size-lowest", {"cluster": {"chunk_size": 4096}}, {"chunk_size": 4096}),
    ("chunk-size-highest", {"cluster": {"chunk_size": 64 << 20}}, {"chunk_size": 64 << 20}),
    ("timeouts-int-become-float", {"cluster": {"connect_timeout": 2, "read_timeout": 1}},
     {"connect_timeout": 2.0, "read_timeout": 1.0}),
    ("fractional-timeout", {"cluster": {"read_timeout": 0.25}}, {"read_timeout": 0.25}),
    ("uploads-on-with-a-limit", {"cluster": {"uploads": True, "max_upload_size": 1 << 30}},
     {"uploads": True, "max_upload_size": 1 << 30}),
    ("token", {"cluster": {"token": "s3cret"}}, {"token": "s3cret"}),
]


@pytest.mark.parametrize("kwargs, values", [c[1:] for c in ACCEPTED], ids=[c[0] for c in ACCEPTED])
def test_config_accepted(kwargs, values):
    config = build(**kwargs)
    for name, value in values.items():
        got = getattr(config, name)
        assert got == value and type(got) is type(value), name


@pytest.mark.parametrize("url, kept, host, port", [
    pytest.param("http://127.0.0.2:8001", "http://127.0.0.2:8001", "127.0.0.2", 8001, id="host-and-port"),
    pytest.param("http://127.0.0.2:8001/", "http://127.0.0.2:8001", "127.0.0.2", 8001, id="trailing-slash-dropped"),
    pytest.param("http://node-a", "http://node-a", "node-a", 80, id="http-default-port-80"),
    pytest.param("https://node-a", "https://node-a", "node-a", 443, id="https-default-port-443"),
    pytest.param("http://[::1]:8001", "http://[::1]:8001", "::1", 8001, id="ipv6-literal"),
])
def test_node_url_host_and_port(url, kept, host, port):
    node = build(nodes={"a": {"url": url, "root": "/srv"}}).nodes["a"]
    assert (node.url, node.host, node.port) == (kept, host, port)


def test_nodes_keep_the_files_order_and_roots_expand_home():
    config = build(nodes={"z": {"url": "http://h:1", "root": "~/z"}, "a": {"url": "http://h:2", "root": "/a"}})
    assert list(config.nodes) == ["z", "a"]
    assert config.nodes["z"] == Node("z", "http://h:1", Path("~/z").expanduser())
    with pytest.raises(TypeError):
        config.nodes["b"] = config.nodes["a"]  # read-only mapping


def test_config_node_unknown_names_the_known_ones():
    config = build(nodes={"a": NODE, "b": NODE})
    assert config.node("b").name == "b"
    with pytest.raises(ConfigError) as err:
        config.node("zz")
    assert str(err.value) == "c.toml: unknown node 'zz' (nodes: a, b)"


# -- LocalNode / local_node ----------------------------------------------------------------------

def test_local_node_is_name_root_and_chunk_size(tmp_path):
    config = build(cluster={"chunk_size": 65536}, nodes={"a": {**NODE, "root": str(tmp_path)}})
    here = local_node(config, "a")
    assert here == LocalNode("a", tmp_path, 65536)
    with pytest.raises(dataclasses.FrozenInstanceError):
        here.root = Path("/")


def test_local_node_default_chunk_size():
    assert LocalNode("a", Path("/srv")).chunk_size == 1 << 20


@pytest.mark.parametrize("case, message", [
    pytest.param("unknown", "c.toml: unknown node 'zz' (nodes: a)", id="unknown-node"),
    pytest.param("missing", "c.toml: [nodes.a] root '{root}' is not a directory", id="root-missing"),
    pytest.param("file", "c.toml: [nodes.a] root '{root}' is not a directory", id="root-is-a-file"),
    pytest.param("unreadable", "c.toml: [nodes.a] root '{root}' is not readable", id="root-unreadable",
                 marks=pytest.mark.skipif(os.geteuid() == 0, reason="root reads every directory")),
])
def test_local_node_refused_in_one_line(tmp_path, case, message):
    root = tmp_path / "root"
    if case == "file":
        root.write_text("x")
    elif case == "unreadable":
        root.mkdir(mode=0)
    config = build(nodes={"a": {**NODE, "root": str(root)}})
    with pytest.raises(ConfigError) as err:
        local_node(config, "zz" if case == "unknown" else "a")
    assert str(err.value) == message.format(root=root)
    assert isinstance(config, Config)
