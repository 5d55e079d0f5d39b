"""Cluster ZIPs over HTTP: byte-identical every time, resumable from any byte, read by every reader."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import zipfile

import pytest

import support
from test_zip_readers import JAVA_READERS, READERS, Archive, java_classes  # noqa: F401 (a fixture)

MiB = 1 << 20
NAMES = ["rapport d'été.txt", "日本語/ログ.log", "empty.txt", "big.bin", "small.log", "sub/deep/x.txt"]


def seed(root, node: str) -> None:
    for i, name in enumerate(NAMES):
        path = root / "bundle" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name == "empty.txt":
            data = b""
        elif name == "big.bin":  # over 1 MiB: the stored-deflate-blocks form with a descriptor
            data = hashlib.sha256(node.encode()).digest() * (3 * MiB // 32 + 7)
        else:
            data = f"{node}: {name}\n".encode() * (i + 1)
        path.write_bytes(data)
        os.utime(path, (1_700_000_000 + i, 1_700_000_000 + i))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """Nodes a and b have bundle/ (UTF-8 names, a 0-byte file, a 3 MiB file), c lacks it."""
    cl = support.start_cluster(tmp_path_factory.mktemp("resume"), ("a", "b", "c"))
    for name in "ab":
        seed(cl[name].root, name)
    yield cl
    cl.stop()


def get(cl, path="/cluster/files/bundle", headers=None, method="GET"):
    return support.http(method, cl.url("a") + path, headers=headers, timeout=120)


def offsets_of_interest(data: bytes) -> dict[str, int]:
    """Where a cut hurts most: inside a local header, member data, a descriptor, the central directory."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        infos = zf.infolist()
        big = next(i for i in infos if i.filename == "b/bundle/big.bin")
        data_start = big.header_offset + 30 + len(big.filename.encode()) + len(big.extra)
        return {"local header": infos[3].header_offset + 7,
                "member data": data_start + big.compress_size // 2,
                "descriptor": data_start + big.compress_size + 5,
                "central directory": zf.start_dir + 20,
                "last byte": len(data) - 1}


def test_two_downloads_are_byte_identical_and_head_agrees(bundle):
    first, second = get(bundle), get(bundle)
    assert first.status == second.status == 200
    assert first.data == second.data
    assert first.headers["ETag"] == second.headers["ETag"] and first.headers["ETag"].startswith('"')
    assert first.headers["Accept-Ranges"] == "bytes" and first.headers["Last-Modified"]
    head = get(bundle, method="HEAD")
    assert head.headers["ETag"] == first.headers["ETag"]
    assert int(head.headers["Content-Length"]) == len(first.data)


def test_range_with_if_range_resumes_byte_identically_at_every_kind_of_offset(bundle):
    whole = get(bundle)
    etag = whole.headers["ETag"]
    for where, k in offsets_of_interest(whole.data).items():
        part = get(bundle, headers={"Range": f"bytes={k}-", "If-Range": etag})
        assert part.status == 206, where
        assert part.headers["Content-Range"] == f"bytes {k}-{len(whole.data) - 1}/{len(whole.data)}", where
        assert whole.data[:k] + part.data == whole.data, where


def test_a_middle_range_and_an_unsatisfiable_one(bundle):
    whole = get(bundle)
    part = get(bundle, headers={"Range": "bytes=100-199"})
    assert part.status == 206 and part.data == whole.data[100:200]
    past = get(bundle, headers={"Range": f"bytes={len(whole.data)}-"})
    assert past.status == 416 and past.headers["Content-Range"] == f"bytes */{len(whole.data)}"


def test_curl_resumes_a_cut_download(bundle, tmp_path):
    whole = get(bundle)
    for where, k in offsets_of_interest(whole.data).items():
        out = tmp_path / "bundle.zip"
        out.write_bytes(whole.data[:k])  # what a cut download left behind
        subprocess.run(["curl", "-sS", "-f", "-C", "-", "-o", str(out), bundle.url("a") + "/cluster/files/bundle"],
                       check=True, timeout=60)
        assert out.read_bytes() == whole.data, where


def test_resume_after_the_gateway_forgot_every_crc(bundle):
    """A restarted gateway knows no CRC: it reads again what it must, the bytes are the same."""
    whole = get(bundle)
    a = bundle["a"]
    a.stop()
    support.launch(a, bundle.config_path)
    a.wait_ready()
    k = offsets_of_interest(whole.data)["central directory"]
    part = get(bundle, headers={"Range": f"bytes={k}-", "If-Range": whole.headers["ETag"]})
    assert part.status == 206 and whole.data[:k] + part.data == whole.data


def test_a_changed_input_gives_the_whole_new_archive_never_a_spliced_one(bundle):
    whole = get(bundle)
    small = bundle["b"].root / "bundle" / "small.log"
    before = small.read_bytes()
    try:
        small.write_bytes(b"changed since the first download\n")
        k = offsets_of_interest(whole.data)["member data"]
        again = get(bundle, headers={"Range": f"bytes={k}-", "If-Range": whole.headers["ETag"]})
        assert again.status == 200 and again.headers["ETag"] != whole.headers["ETag"]
        with zipfile.ZipFile(io.BytesIO(again.data)) as zf:
            assert zf.testzip() is None
            assert zf.read("b/bundle/small.log") == b"changed since the first download\n"
    finally:
        small.write_bytes(before)
        os.utime(small, (1_700_000_004, 1_700_000_004))


def _archive(tmp_path, data: bytes, name: str) -> Archive:
    path = tmp_path / name
    path.write_bytes(data)
    with zipfile.ZipFile(path) as zf:
        expected = [(i.filename, i.file_size, i.CRC) for i in zf.infolist()]
        digest = hashlib.sha256(b"".join(zf.read(i) for i in zf.infolist())).hexdigest()
    return Archive(path, expected, digest)


@pytest.mark.parametrize("query", ["", "?compress=deflate"])
@pytest.mark.parametrize("reader", READERS)
def test_every_reader_reads_the_cluster_zip(bundle, tmp_path, request, reader, query):
    r = get(bundle, "/cluster/files/bundle" + query)
    assert r.status == 200
    archive = _archive(tmp_path, r.data, "cluster.zip")
    classes = request.getfixturevalue("java_classes") if reader in JAVA_READERS else None
    assert READERS[reader](archive, classes) == archive.expected


def test_a_node_lists_the_crcs_it_learned_and_keeps_them_across_a_restart(cluster_factory):
    cl = cluster_factory(names=("a", "b"), keep_crcs=True)
    seed(cl["b"].root, "b")
    listed = support.http("GET", cl.url("b") + "/list/bundle?recursive=1").json()["entries"]
    assert not any("crc32" in e for e in listed)
    r = support.http("GET", cl.url("a") + "/cluster/files/bundle?nodes=b", timeout=60)
    with zipfile.ZipFile(io.BytesIO(r.data)) as zf:
        crcs = {i.filename.split("/", 1)[1]: f"{i.CRC:08x}" for i in zf.infolist() if i.filename != "_cluster.json"}
    b = cl["b"]
    b.stop()  # saves what it learned beside its root
    assert any(p.name.endswith("wsgi_stream-crc32") for p in b.root.parent.iterdir())
    support.launch(b, cl.config_path).wait_ready()
    listed = support.http("GET", cl.url("b") + "/list/bundle?recursive=1").json()["entries"]
    # Files up to 1 MiB came in a batch, through the node's hands; a bigger one went by sendfile().
    small = {path: crc for path, crc in crcs.items() if path != "bundle/big.bin"}
    assert {e["path"]: e.get("crc32") for e in listed} == {**small, "bundle/big.bin": None}


def test_the_gateway_lists_the_crcs_of_its_own_files_after_a_cluster_download(cluster_factory):
    """The gateway remembers its own files' CRCs by their content's key (what its listings look up),
    big ones included: it read them through Python for the archive."""
    cl = cluster_factory(names=("a", "b"))
    seed(cl["a"].root, "a")
    r = support.http("GET", cl.url("a") + "/cluster/files/bundle?nodes=a", timeout=60)
    with zipfile.ZipFile(io.BytesIO(r.data)) as zf:
        crcs = {i.filename.split("/", 1)[1]: f"{i.CRC:08x}" for i in zf.infolist() if i.filename != "_cluster.json"}
    listed = support.http("GET", cl.url("a") + "/list/bundle?recursive=1").json()["entries"]
    assert {e["path"]: e.get("crc32") for e in listed} == {**crcs, "bundle/empty.txt": None}  # nothing to learn
