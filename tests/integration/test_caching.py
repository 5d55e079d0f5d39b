"""How caches may keep what a node answers: files and the page are stored but always revalidated."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import support

REDBOT = shutil.which("redbot") or str(Path(sys.executable).with_name("redbot"))


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    cl = support.start_cluster(tmp_path_factory.mktemp("caching"), ("a", "b"))
    (cl["a"].root / "f.txt").write_text("a growing log\n")
    (cl["b"].root / "app.log").write_text("a log on b\n")
    yield cl
    cl.stop()


@pytest.mark.parametrize("path", ["/files/f.txt", "/nodes/b/files/app.log"])
def test_files_must_be_revalidated_and_304_says_so_too(two, path):
    r = support.http("GET", two.url("a") + path)
    assert r.status == 200 and r.headers["Cache-Control"] == "no-cache"
    again = support.http("GET", two.url("a") + path, headers={"If-None-Match": r.headers["ETag"]})
    assert again.status == 304 and again.headers["Cache-Control"] == "no-cache"


def test_the_page_has_a_validator(two):
    r = support.http("GET", two.url("a") + "/")
    assert r.status == 200 and r.headers["Cache-Control"] == "no-cache" and r.headers["ETag"]
    again = support.http("GET", two.url("a") + "/", headers={"If-None-Match": r.headers["ETag"]})
    assert again.status == 304 and again.data == b""


@pytest.mark.skipif(not Path(REDBOT).exists(), reason="REDbot is not installed (pip install redbot)")
@pytest.mark.parametrize("path", ["/files/f.txt", "/nodes/b/files/app.log", "/"])
def test_redbot_finds_revalidation_and_validators(two, path):
    out = subprocess.run([REDBOT, "-o", "text", two.url("a") + path], capture_output=True, text=True,
                         timeout=60).stdout
    assert "cannot be served from cache without validation" in out, out
    assert "If-None-Match conditional requests are supported" in out, out
    if path != "/":
        assert "A ranged request returned the correct partial content" in out, out
