"""TLS to peers as tables: the [cluster] files checked at load, and what a TLS failure tells the client."""

import os
import shutil
import ssl
import subprocess

import pytest
import trustme
from urllib3.exceptions import MaxRetryError, ProtocolError, SSLError
from urllib3.util.ssl_match_hostname import CertificateError

from wsgi_stream.config import ConfigError, config_from_dict
from wsgi_stream.peers import PeerClient, failure_of

NODES = {"a": {"url": "https://127.0.0.2:8443", "root": "/"}}


@pytest.fixture(scope="module")
def pems(tmp_path_factory):
    """A CA, a client certificate with its key (apart and together), a key of another certificate."""
    folder = tmp_path_factory.mktemp("pems")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    leaf = ca.issue_cert("a.clients.test")
    leaf.cert_chain_pems[0].write_to_path(str(folder / "client.pem"))
    leaf.private_key_pem.write_to_path(str(folder / "client.key"))
    leaf.private_key_and_cert_chain_pem.write_to_path(str(folder / "both.pem"))
    ca.issue_cert("other").private_key_pem.write_to_path(str(folder / "other.key"))
    (folder / "junk.pem").write_text("not a certificate\n")
    os.mkfifo(folder / "fifo.pem")
    return folder


def load(cluster: dict):
    return config_from_dict({"cluster": cluster, "nodes": NODES}, source="c.toml")


@pytest.mark.parametrize("cluster, message", [
    ({"ca_file": "missing.pem"}, "[cluster] ca_file '{d}/missing.pem' cannot be read: No such file or directory"),
    ({"ca_file": "."}, "[cluster] ca_file '{d}' is not a regular file"),
    ({"ca_file": "fifo.pem"}, "[cluster] ca_file '{d}/fifo.pem' is not a regular file"),
    ({"ca_file": 5}, "[cluster] ca_file must be the path of a PEM file, not 5"),
    ({"ca_file": ""}, "[cluster] ca_file must be the path of a PEM file, not ''"),
    ({"ca_file": "junk.pem"}, "holds no CA certificate in PEM: no certificate or crl found"),
    ({"client_key": "client.key"}, "[cluster] client_key needs client_cert"),
    ({"client_cert": "client.pem", "client_key": "missing.key"}, "client_key '{d}/missing.key' cannot be read"),
    ({"client_cert": "client.pem", "client_key": "other.key"}, "its unencrypted key: key values mismatch"),
    ({"client_cert": "client.pem"}, "[cluster] client_cert '{d}/client.pem' and its key are not a PEM certificate"),
    ({"client_cert": "junk.pem", "client_key": "client.key"}, "are not a PEM certificate with its unencrypted key"),
])
def test_unusable_tls_files_are_one_line_naming_the_key(pems, cluster, message):
    cluster = {k: str(pems / v) if isinstance(v, str) and v else v for k, v in cluster.items()}
    with pytest.raises(ConfigError) as err:
        load(cluster)
    text = str(err.value)
    assert text.startswith("c.toml: ") and "\n" not in text
    assert message.format(d=pems) in text


def test_encrypted_client_key_is_refused_without_prompting(pems):
    """A node starts unattended: a key with a passphrase is an error at load, never a prompt."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    encrypted = pems / "encrypted.key"
    subprocess.run(["openssl", "pkey", "-in", str(pems / "client.key"), "-aes256", "-passout", "pass:x",
                    "-out", str(encrypted)], check=True, capture_output=True, stdin=subprocess.DEVNULL)
    with pytest.raises(ConfigError) as err:
        load({"client_cert": str(pems / "client.pem"), "client_key": str(encrypted)})
    assert "the key is encrypted" in str(err.value)


@pytest.mark.parametrize("cluster", [
    {"ca_file": "ca.pem", "client_cert": "client.pem", "client_key": "client.key"},
    {"ca_file": "ca.pem", "client_cert": "both.pem"},  # certificate and key in one file
    {"ca_file": "ca.pem"},
    {},
])
def test_good_tls_files_reach_the_peer_pool(pems, cluster):
    """The peers' pool always verifies, with the cluster's files (the system's CAs without ca_file)."""
    config = load({k: str(pems / v) for k, v in cluster.items()})
    assert (config.ca_file, config.client_cert, config.client_key) == tuple(
        str(pems / cluster[k]) if k in cluster else None for k in ("ca_file", "client_cert", "client_key"))
    pool = PeerClient(config, "a").pool.connection_from_url(NODES["a"]["url"])
    assert pool.cert_reqs == "CERT_REQUIRED" and pool.ca_certs == config.ca_file
    assert (pool.cert_file, pool.key_file) == (config.client_cert, config.client_key)


def verify_error(message: str) -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(1, f"[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: {message} "
                                            "(_ssl.c:1006)")
    error.verify_message = message
    return error


def alert(words: str) -> ssl.SSLError:
    return ssl.SSLError(1, f"[SSL: {words.upper().replace(' ', '_')}] {words} (_ssl.c:2580)")


TLS_FAILURES = [
    # (id, urllib3 exception as PeerClient.open sees it, the reason the message gives)
    ("peer-signed-by-another-ca", SSLError(verify_error("unable to get local issuer certificate")),
     "certificate verify failed: unable to get local issuer certificate"),
    ("peer-certificate-for-another-address", SSLError(verify_error("IP address mismatch, certificate is not valid "
                                                                   "for '10.0.0.2'.")),
     "certificate verify failed: IP address mismatch, certificate is not valid for '10.0.0.2'."),
    ("urllib3-host-name-check", SSLError(CertificateError("hostname 'b' doesn't match 'c'")),
     "certificate verify failed: hostname 'b' doesn't match 'c'"),
    ("peer-requires-a-client-certificate", SSLError(alert("tlsv13 alert certificate required")),
     "tlsv13 alert certificate required"),
    ("peer-refuses-our-client-certificate", SSLError(alert("tlsv1 alert unknown ca")), "tlsv1 alert unknown ca"),
    ("peer-hangs-up-mid-handshake",
     SSLError(ssl.SSLEOFError(8, "EOF occurred in violation of protocol (_ssl.c:2406)")),
     "EOF occurred in violation of protocol"),
    ("inside-max-retry", MaxRetryError(None, "/healthz", SSLError(alert("tlsv1 alert unknown ca"))),
     "tlsv1 alert unknown ca"),
    ("inside-protocol-error", ProtocolError("Connection aborted.", alert("tlsv1 alert unknown ca")),
     "tlsv1 alert unknown ca"),
    ("bare-words", SSLError(ssl.SSLError("certificate verify failed")), "certificate verify failed"),
]


@pytest.mark.parametrize("exc, reason", [c[1:] for c in TLS_FAILURES], ids=[c[0] for c in TLS_FAILURES])
def test_tls_failure_is_502_peer_unreachable_saying_why(exc, reason, caplog):
    error = failure_of(exc, "b")
    assert (error.status, error.code) == (502, "peer_unreachable")
    assert error.message == f"Node b is unreachable: TLS failed ({reason})."
    assert f"TLS with node b failed: {reason}" in caplog.text
    # Once the answer has started, a TLS error is a broken stream like any other.
    assert failure_of(exc, "b", reading=True).message == "Node b broke off its answer."
