"""Cluster configuration: one TOML file, loaded into one frozen object, checked at start."""

from __future__ import annotations

import os
import re
import socket
import ssl
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Mapping
from urllib.parse import urlsplit


class ConfigError(ValueError):
    """A configuration problem, worded as one line for a sysadmin."""


@dataclass(frozen=True)
class Node:
    """One node of the cluster: its name, the URL peers and clients use, and its root."""

    name: str
    url: str
    root: Path

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (443 if parts.scheme == "https" else 80)


@dataclass(frozen=True)
class Config:
    """The whole cluster as every node sees it; `nodes` keeps the file's order."""

    nodes: Mapping[str, Node]
    token: str | None = None
    chunk_size: int = 1 << 20
    connect_timeout: float = 3.0
    read_timeout: float = 30.0
    plan_timeout: float = 10.0
    keep_crcs: bool = False
    uploads: bool = False
    # 64 GiB: room for disk images, a bound on what one request may write (0 in the file: no limit).
    max_upload_size: int = 64 << 30
    stage_expiry: float = 600.0
    source: str = field(default="<memory>", compare=False)
    # TLS to peers with https:// urls: the CA their certificates must be signed by (None: the
    # system's), and the certificate and key this node shows them when they ask (mutual TLS).
    ca_file: str | None = None
    client_cert: str | None = None
    client_key: str | None = None

    def node(self, name: str) -> Node:
        """The node called `name`, or ConfigError."""
        try:
            return self.nodes[name]
        except KeyError:
            known = ", ".join(self.nodes) or "none"
            raise ConfigError(f"{self.source}: unknown node {name!r} (nodes: {known})") from None


@dataclass(frozen=True)
class LocalNode:
    """What the capabilities need to know of the node they run on: its name, root and chunk size."""

    name: str
    root: Path
    chunk_size: int = 1 << 20


# key -> (accepted types, check, description of a good value)
_CLUSTER_KEYS = {
    "token": ((str,), lambda v: len(v) > 0, "a non-empty string"),
    "chunk_size": ((int,), lambda v: 4096 <= v <= 64 << 20, "an integer from 4096 to 67108864"),
    "connect_timeout": ((int, float), lambda v: v > 0, "a positive number of seconds"),
    "read_timeout": ((int, float), lambda v: v > 0, "a positive number of seconds"),
    "plan_timeout": ((int, float), lambda v: v > 0, "a positive number of seconds"),
    "keep_crcs": ((bool,), lambda v: True, "true or false"),
    "uploads": ((bool,), lambda v: True, "true or false"),
    "max_upload_size": ((int,), lambda v: v >= 0, "a number of bytes >= 0"),
    "stage_expiry": ((int, float), lambda v: v > 0, "a positive number of seconds"),
}
_NODE_KEYS = ("url", "root")
# [cluster] keys naming PEM files for TLS to peers, checked when the config is loaded.
_TLS_KEYS = ("ca_file", "client_cert", "client_key")


def _check_value(where: str, key: str, value):
    types, ok, wanted = _CLUSTER_KEYS[key]
    # bool is an int in Python; a TOML `true` must not pass as a chunk size.
    if isinstance(value, bool) and bool not in types or not isinstance(value, types) or not ok(value):
        raise ConfigError(f"{where}: [cluster] {key} must be {wanted}, not {value!r}")
    return float(value) if float in types else value


def _check_url(where: str, name: str, url) -> str:
    if not isinstance(url, str):
        raise ConfigError(f"{where}: [nodes.{name}] url must be a string, not {url!r}")
    parts = urlsplit(url)
    try:
        parts.port
    except ValueError:
        raise ConfigError(f"{where}: [nodes.{name}] url {url!r} has a bad port") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/") \
            or parts.query or parts.fragment or parts.username:
        raise ConfigError(f"{where}: [nodes.{name}] url {url!r} is not like http://host:port")
    return url.rstrip("/")


def _readable_file(where: str, key: str, value) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: [cluster] {key} must be the path of a PEM file, not {value!r}")
    path = str(Path(value).expanduser())
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO must not hang the start
    except OSError as exc:
        raise ConfigError(f"{where}: [cluster] {key} {path!r} cannot be read: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigError(f"{where}: [cluster] {key} {path!r} is not a regular file")
    finally:
        os.close(fd)
    return path


def _no_passphrase() -> bytes:
    # Never prompt on a terminal: a node starts unattended, so its client key is stored unencrypted.
    raise ValueError("the key is encrypted")


def _ssl_reason(exc: Exception) -> str:
    """OpenSSL's words without its codes: '[X509: KEY_VALUES_MISMATCH] key values mismatch (_ssl.c:1)'."""
    text = str(exc.args[1] if isinstance(exc, ssl.SSLError) and len(exc.args) > 1 else exc)
    return re.sub(r"^\[[^]]*\] | \(_ssl\.c:\d+\)$", "", text)


def _check_tls_files(where: str, cluster: Mapping) -> dict:
    """ca_file, client_cert and client_key of [cluster]: readable PEM files that OpenSSL accepts."""
    files = {key: _readable_file(where, key, cluster[key]) for key in _TLS_KEYS if key in cluster}
    if "client_key" in files and "client_cert" not in files:
        raise ConfigError(f"{where}: [cluster] client_key needs client_cert (the certificate it goes with)")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if "ca_file" in files:
        try:
            context.load_verify_locations(cafile=files["ca_file"])
        except ssl.SSLError as exc:
            raise ConfigError(f"{where}: [cluster] ca_file {files['ca_file']!r} holds no CA certificate "
                              f"in PEM: {_ssl_reason(exc)}") from None
    if "client_cert" in files:
        try:
            context.load_cert_chain(files["client_cert"], files.get("client_key"), password=_no_passphrase)
        except (ssl.SSLError, ValueError) as exc:
            raise ConfigError(f"{where}: [cluster] client_cert {files['client_cert']!r} and its key are not a "
                              f"PEM certificate with its unencrypted key: {_ssl_reason(exc)}") from None
    return files


def config_from_dict(data: Mapping, source: str = "<memory>") -> Config:
    """Build and check a Config from the parsed TOML structure."""
    unknown = set(data) - {"cluster", "nodes"}
    if unknown:
        raise ConfigError(f"{source}: unknown section [{sorted(unknown)[0]}]")
    cluster = data.get("cluster", {})
    if not isinstance(cluster, Mapping):
        raise ConfigError(f"{source}: [cluster] must be a table")
    for key in cluster:
        if key not in _CLUSTER_KEYS and key not in _TLS_KEYS:
            raise ConfigError(f"{source}: unknown key {key!r} in [cluster]")
    values = {key: _check_value(source, key, value) for key, value in cluster.items() if key in _CLUSTER_KEYS}
    values.update(_check_tls_files(source, cluster))

    tables = data.get("nodes")
    if not isinstance(tables, Mapping) or not tables:
        raise ConfigError(f"{source}: no nodes: add at least one [nodes.NAME] table")
    nodes = {}
    for name, table in tables.items():
        if not name or "/" in name or name in (".", "..") or not name.isprintable():
            raise ConfigError(f"{source}: node name {name!r} is not usable in a URL path")
        if not isinstance(table, Mapping):
            raise ConfigError(f"{source}: [nodes.{name}] must be a table")
        for key in table:
            if key not in _NODE_KEYS:
                raise ConfigError(f"{source}: unknown key {key!r} in [nodes.{name}]")
        for key in _NODE_KEYS:
            if key not in table:
                raise ConfigError(f"{source}: [nodes.{name}] is missing {key!r}")
        if not isinstance(table["root"], str) or not table["root"]:
            raise ConfigError(f"{source}: [nodes.{name}] root must be a directory path")
        url = _check_url(source, name, table["url"])
        nodes[name] = Node(name=name, url=url, root=Path(table["root"]).expanduser())
    return Config(nodes=MappingProxyType(nodes), source=source, **values)


def load_config(path: str | os.PathLike) -> Config:
    """Read and check the cluster TOML file at `path`."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return config_from_dict(data, source=str(path))


def check_node(config: Config, name: str) -> Node:
    """The node this process runs as, with its root checked to be a readable directory."""
    node = config.node(name)
    if not node.root.is_dir():
        raise ConfigError(f"{config.source}: [nodes.{name}] root {str(node.root)!r} is not a directory")
    if not os.access(node.root, os.R_OK | os.X_OK):
        raise ConfigError(f"{config.source}: [nodes.{name}] root {str(node.root)!r} is not readable")
    return node


def local_node(config: Config, name: str) -> LocalNode:
    """This process's node `name`, its root checked (ConfigError otherwise)."""
    node = check_node(config, name)
    return LocalNode(node.name, node.root, config.chunk_size)


def single_node_config(root: str | os.PathLike = ".", listen: str = "127.0.0.1:8080",
                       name: str | None = None) -> Config:
    """The no-config default: one node named after the host, serving `root`."""
    name = name or socket.gethostname().split(".")[0] or "local"
    data = {"nodes": {name: {"url": f"http://{listen}", "root": str(Path(root).resolve())}}}
    return config_from_dict(data, source="<command line>")
