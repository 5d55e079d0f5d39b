"""TLS between nodes: https peers checked against the cluster's CA, mutual TLS, deploy/*-tls files.

Each test makes a throwaway CA with trustme and runs two nodes on loopback serving https under
gunicorn and uwsgi (deploy/gunicorn-tls.conf.py, deploy/uwsgi-tls.ini); waitress serves plain
HTTP only, behind a TLS terminator (docs/servers.md, "TLS").
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import trustme
import urllib3

import support
from support import REPO, ServerTLS, write_config

MiB = 1 << 20
TOKEN = "tls-s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _uwsgi_has_ssl() -> bool:
    if shutil.which("uwsgi") is None:
        return False
    help_text = subprocess.run(["uwsgi", "--help"], capture_output=True, text=True, timeout=30).stdout
    return "--https-socket" in help_text


@pytest.fixture(params=["gunicorn", "uwsgi"], scope="module")
def server(request):
    if request.param == "gunicorn" and importlib.util.find_spec("gunicorn") is None:
        pytest.skip("gunicorn is not installed")
    if request.param == "uwsgi" and not _uwsgi_has_ssl():
        pytest.skip("uwsgi is missing or built without OpenSSL (`uwsgi --help | grep https-socket` is empty; "
                    "install libssl-dev, then `pip install --force-reinstall --no-binary uwsgi uwsgi`)")
    return request.param


class CA:
    """A throwaway certificate authority whose files live in `folder`."""

    def __init__(self, folder: Path):
        self.ca, self.folder = trustme.CA(), folder
        folder.mkdir(parents=True, exist_ok=True)
        self.pem = folder / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.pem))

    def server_files(self, name: str, identity: str) -> tuple[Path, Path]:
        """Node `name`'s certificate (issued for `identity`, an IP address or host name) and key."""
        leaf = self.ca.issue_cert(identity)
        cert, key = self.folder / f"{name}.pem", self.folder / f"{name}.key"
        leaf.cert_chain_pems[0].write_to_path(str(cert))
        leaf.private_key_pem.write_to_path(str(key))
        return cert, key

    def client_files(self, name: str) -> tuple[Path, Path]:
        """A client certificate and its key, as two files."""
        return self.server_files(f"client-{name}", f"{name}.clients.wsgi-stream.test")

    def client_pem(self, name: str) -> Path:
        """A client certificate and its key in one PEM file."""
        path = self.folder / f"client-{name}-both.pem"
        self.ca.issue_cert(f"{name}.clients.wsgi-stream.test").private_key_and_cert_chain_pem.write_to_path(str(path))
        return path


def tls_for(ca: CA, *, issuer_of: dict[str, CA] | None = None, identity_of: dict[str, str] | None = None,
            client_ca: CA | None = None):
    """The `tls` argument of start_cluster: node certificates from `ca` for the node's own address,
    unless issuer_of or identity_of say otherwise; with client_ca, client certificates required."""
    tests_client = client_ca.client_pem("tests") if client_ca else None

    def tls(name: str, host: str) -> ServerTLS:
        issuer = (issuer_of or {}).get(name, ca)
        cert, key = issuer.server_files(name, (identity_of or {}).get(name, host))
        return ServerTLS(cert, key, issuer.pem, client_ca=client_ca.pem if client_ca else None,
                         client_cert=tests_client)
    return tls


def get(node, path: str, **kwargs):
    return support.http("GET", node.url + path, headers=AUTH, tls=node.tls, timeout=60, **kwargs)


def error_of(response) -> dict:
    assert response.headers["Content-Type"].startswith("application/json"), response.data[:200]
    return json.loads(response.data)


def health(node) -> dict:
    response = get(node, "/api/nodes")
    assert response.status == 200, response.data
    return {entry["name"]: entry for entry in json.loads(response.data)["nodes"]}


def test_cluster_works_over_https(server, cluster_factory, tmp_path):
    """Forwarding, a ranged forward, a cluster ZIP, an upload through a peer and health, all over https."""
    ca = CA(tmp_path / "ca")
    cluster = cluster_factory(("a", "b"), server=server, tls=tls_for(ca), ca_file=ca.pem, token=TOKEN,
                              uploads=True)
    a, b = cluster["a"], cluster["b"]
    assert a.url.startswith("https://") and b.url.startswith("https://")
    data = os.urandom(3 * MiB + 17)
    (b.root / "data").mkdir()
    (b.root / "data" / "big.bin").write_bytes(data)
    for node in (a, b):
        (node.root / "logs").mkdir()
        (node.root / "logs" / "app.log").write_bytes(f"log of {node.name}\n".encode() * 1000)

    assert health(a) == {n: {"name": n, "url": cluster.url(n), "status": "ok", "message": ""} for n in "ab"}
    check = run_serve("--check", "--config", str(cluster.config_path), "--node", "a")
    assert check.returncode == 0 and "ok (" in check.stdout, check

    whole = get(a, "/nodes/b/files/data/big.bin")
    assert whole.status == 200 and hashlib.sha256(whole.data).digest() == hashlib.sha256(data).digest()
    ranged = support.http("GET", a.url + "/nodes/b/files/data/big.bin", tls=a.tls,
                          headers={**AUTH, "Range": "bytes=1000000-1999999"})
    assert ranged.status == 206 and ranged.data == data[1000000:2000000]
    local = get(b, "/files/data/big.bin")  # a whole local file over https (no sendfile/offload under TLS)
    assert local.status == 200 and local.data == data

    archive = get(a, "/cluster/files/logs")
    assert archive.status == 200, archive.data[:300]
    with zipfile.ZipFile(io.BytesIO(archive.data)) as z:
        assert z.read("a/logs/app.log") == (a.root / "logs" / "app.log").read_bytes()
        assert z.read("b/logs/app.log") == (b.root / "logs" / "app.log").read_bytes()
        report = json.loads(z.read("_cluster.json"))
    assert {n: v["status"] for n, v in report["nodes"].items()} == {"a": "ok", "b": "ok"}, report

    body = os.urandom(2 * MiB + 5)
    stored = support.http("PUT", a.url + "/nodes/b/files/up/new.bin", headers=AUTH, body=body, tls=a.tls,
                          timeout=60)
    assert stored.status == 201, stored.data
    assert (b.root / "up" / "new.bin").read_bytes() == body


@pytest.mark.parametrize("fault, expected", [
    ("other_ca", "certificate verify failed: unable to get local issuer certificate"),
    ("other_host", "certificate verify failed: IP address mismatch"),
])
def test_peer_certificate_not_accepted_is_502_naming_tls(server, cluster_factory, tmp_path, fault, expected):
    """A peer whose certificate is signed by another CA, or issued for another address, is never
    talked to: 502 peer_unreachable saying why, the same in /api/nodes and in the gateway's log."""
    ca = CA(tmp_path / "ca")
    tls = tls_for(ca, issuer_of={"b": CA(tmp_path / "other")} if fault == "other_ca" else None,
                  identity_of={"b": "127.0.0.254"} if fault == "other_host" else None)
    cluster = cluster_factory(("a", "b"), server=server, tls=tls, ca_file=ca.pem, token=TOKEN)
    a, b = cluster["a"], cluster["b"]
    (b.root / "f.txt").write_bytes(b"secret\n")
    assert get(b, "/files/f.txt").data == b"secret\n"  # b itself is fine

    response = get(a, "/nodes/b/files/f.txt")
    assert response.status == 502
    doc = error_of(response)
    assert doc["error"] == "peer_unreachable"
    assert doc["message"].startswith("Node b is unreachable: TLS failed (") and expected in doc["message"]

    entry = health(a)["b"]
    assert entry["status"] == "down" and expected in entry["message"]
    listing = get(a, "/cluster/list/")
    assert listing.status == 200, listing.data
    assert f"TLS with node b failed: {expected}" in a.log()
    assert get(a, "/healthz").status == 200
    check = run_serve("--check", "--config", str(cluster.config_path), "--node", "a")
    assert check.returncode == 1 and "PROBLEM: Node b is unreachable: TLS failed (" in check.stdout, check


@pytest.mark.parametrize("gateway_shows", ["cluster_cert", "nothing", "other_ca_cert"])
def test_mutual_tls(server, cluster_factory, tmp_path, gateway_shows):
    """Nodes that require client certificates: a gateway showing one from the cluster's CA (config
    client_cert/client_key) is served; without one, or with one from another CA, it gets 502."""
    ca = CA(tmp_path / "ca")
    keys = {"ca_file": ca.pem}
    if gateway_shows != "nothing":
        issuer = ca if gateway_shows == "cluster_cert" else CA(tmp_path / "other")
        keys["client_cert"], keys["client_key"] = issuer.client_files("gateway")
    cluster = cluster_factory(("a", "b"), server=server, tls=tls_for(ca, client_ca=ca), token=TOKEN,
                              uploads=True, **keys)
    a, b = cluster["a"], cluster["b"]
    (b.root / "f.txt").write_bytes(b"only with a certificate\n")

    response = get(a, "/nodes/b/files/f.txt")
    try:
        upload = support.http("PUT", a.url + "/nodes/b/files/up.txt", headers=AUTH, body=b"x" * 100000,
                              tls=a.tls)
    except urllib3.exceptions.ProtocolError:
        # uwsgi's https-socket resets a connection closed with its body unread, and the reset
        # overtakes the answer (docs/servers.md, "TLS"); gunicorn always delivers it.
        assert server == "uwsgi" and gateway_shows != "cluster_cert"
        upload = None
    if gateway_shows == "cluster_cert":
        assert response.status == 200 and response.data == b"only with a certificate\n"
        assert upload.status == 201 and (b.root / "up.txt").stat().st_size == 100000
        assert health(a)["b"]["status"] == "ok"
    else:
        doc = error_of(response)
        assert response.status == 502 and doc["error"] == "peer_unreachable"
        assert doc["message"].startswith("Node b is unreachable: TLS failed ("), doc
        if upload is not None:
            assert upload.status == 502 and error_of(upload)["error"] in ("peer_unreachable", "peer_broken")
        assert not (b.root / "up.txt").exists()
        entry = health(a)["b"]
        assert entry["status"] == "down" and "TLS failed" in entry["message"]
        assert "TLS with node b failed: " in a.log()


def run_serve(*args):
    return subprocess.run([sys.executable, str(REPO / "serve.py"), *args], capture_output=True, text=True,
                          timeout=30, cwd=REPO)


@pytest.mark.parametrize("key, make, expected", [
    ("ca_file", None, "cannot be read: No such file or directory"),
    ("ca_file", "junk", "holds no CA certificate in PEM"),
    ("client_cert", None, "cannot be read: No such file or directory"),
])
def test_node_with_unusable_tls_file_exits_2_with_one_line(tmp_path, key, make, expected):
    path = tmp_path / "missing.pem"
    if make == "junk":
        path.write_text("not a certificate\n")
    config = write_config(tmp_path / "c.toml", {"a": (f"http://127.0.0.1:{support.free_port()}", tmp_path)},
                          **{key: path})
    result = run_serve("--config", str(config), "--node", "a")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"[cluster] {key} {str(path)!r}" in lines[0] and expected in lines[0], lines


def nginx_terminator(folder: Path, listen: str, cert: Path, key: Path, upstream: str) -> subprocess.Popen:
    """nginx terminating TLS on `listen` for a plain-HTTP node at `upstream`, as docs/servers.md shows."""
    for sub in ("logs", "body", "proxy"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    conf = folder / "nginx.conf"
    conf.write_text(f"""{"user root;" if os.geteuid() == 0 else ""}
daemon off;
pid {folder}/nginx.pid;
error_log {folder}/logs/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {folder}/body;
    proxy_temp_path {folder}/proxy;
    server {{
        listen {listen} ssl;
        ssl_certificate     {cert};
        ssl_certificate_key {key};
        client_max_body_size 0;
        proxy_request_buffering off;
        proxy_buffering off;
        proxy_read_timeout 1h;
        location / {{ proxy_pass http://{upstream}; proxy_http_version 1.1; proxy_set_header Connection ""; }}
    }}
}}
""")
    return subprocess.Popen([shutil.which("nginx"), "-p", str(folder), "-c", str(conf), "-e",
                             str(folder / "logs" / "error.log")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)


def test_waitress_node_behind_a_tls_terminator(cluster_factory, tmp_path):
    """waitress speaks plain HTTP on loopback; nginx holds its https url. Its https peer (gunicorn)
    and it reach each other verified both ways: forwarding, an upload, a cluster ZIP, health."""
    if shutil.which("nginx") is None or importlib.util.find_spec("gunicorn") is None:
        pytest.skip("needs nginx and gunicorn")
    ca = CA(tmp_path / "ca")
    front_host = support.loopback_host()
    front = f"{front_host}:{support.free_port(front_host)}"
    cluster = cluster_factory(("a", "b"), server="gunicorn", start=("b",), urls={"a": f"https://{front}"},
                              tls=tls_for(ca, identity_of={"a": front_host}), ca_file=ca.pem, token=TOKEN,
                              uploads=True)
    a, b = cluster["a"], cluster["b"]
    nginx = nginx_terminator(tmp_path / "nginx", front, a.tls.cert, a.tls.key, f"{a.host}:{a.port}")
    try:
        a_tls, a.tls = a.tls, None  # waitress itself serves plain HTTP on a.host:a.port
        support.launch(a, cluster.config_path, server="waitress")
        a.tls = a_tls
        a.wait_ready()
        data = os.urandom(3 * MiB)
        (b.root / "big.bin").write_bytes(data)
        (a.root / "logs").mkdir()
        (a.root / "logs" / "a.log").write_bytes(b"a\n" * 5000)

        assert health(a)["b"]["status"] == "ok" and health(b)["a"]["status"] == "ok"
        forwarded = get(a, "/nodes/b/files/big.bin")
        assert forwarded.status == 200 and forwarded.data == data
        body = os.urandom(2 * MiB)
        stored = support.http("PUT", a.url + "/files/up.bin", headers=AUTH, body=body, tls=a.tls, timeout=60)
        assert stored.status == 201 and (a.root / "up.bin").read_bytes() == body
        archive = get(b, "/cluster/files/logs")  # b asks a through its terminator
        with zipfile.ZipFile(io.BytesIO(archive.data)) as z:
            assert z.read("a/logs/a.log") == b"a\n" * 5000
    finally:
        nginx.terminate()
        nginx.wait(10)
