"""The web page at GET /: static checks, its JS helpers, and end to end in headless Chromium
against a real three-node cluster on loopback."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from datetime import datetime, timedelta
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

import pytest

from web_support import (CHROMIUM, LAUNCH_ARGS, SCREENSHOT, WEB_DIR, requires_browser, seed,
                         wait_for, zip_members)

# Markup as file names ("/" can't be in one; the cluster listing leaves out "\\" names, unfit for ZIPs).
XSS_NAMES = ["<img src=x onerror=alert(1)>.txt", "<script>alert(2)<script> & \"q\" 'x' %41.txt"]
UTF8_NAME = "grüße – 日本.txt"
FILES = {
    "a": {"hello.txt": b"hello from a\n", "logs/app.log": b"a log line\n" * 50, "logs/old/x.log": b"old a\n",
          UTF8_NAME: "ünïcödé on a\n".encode(), XSS_NAMES[0]: b"xss a\n"},
    "b": {"hello.txt": b"hello from b, longer\n", "logs/app.log": b"b log\n", XSS_NAMES[1]: b"xss b\n"},
    "c": {"hello.txt": b"hello from c\n", UTF8_NAME: "ünïcödé on c\n".encode()},
}
SECRET = "s3cret"
HOUR = 3600
# Fan-out (PUT /cluster/files, issue 15) is on branch `fanout` until merged: its page test waits for it.
FANOUT = (WEB_DIR.parent / "fanout.py").is_file()
requires_fanout = pytest.mark.skipif(not FANOUT, reason="no fan-out backend here (wsgi_stream/fanout.py, branch fanout)")


# ---- static checks: fast, no browser ----

SCRIPTS = ["app.js", "pick.js", "upload.js"]  # in this order: app.js first, the others hook into it


def test_web_files_are_shipped():
    html = (WEB_DIR / "index.html").read_text(encoding="utf-8")
    assert '<meta charset="utf-8">' in html
    assert 'name="viewport"' in html  # usable at phone width
    assert 'href="/static/app.css"' in html
    assert re.findall(r'<script src="/static/([^"]+)" defer>', html) == SCRIPTS
    assert (WEB_DIR / "app.css").stat().st_size > 0


@pytest.mark.parametrize("name", ["index.html", "app.css"] + SCRIPTS)
def test_nothing_loaded_from_outside(name):
    # Appliances are offline: no CDN fonts, scripts or styles.
    text = (WEB_DIR / name).read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text, re.I)
    assert not re.search(r"""url\(\s*["']?(https?:)?//|@import""", text, re.I)


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_never_writes_html(name):
    js = (WEB_DIR / name).read_text(encoding="utf-8")
    # Names go in with textContent / append(string) only; these would parse data as HTML or code.
    assert not re.search(r"\.(inner|outer)HTML|insertAdjacentHTML|document\.write|\beval\(|new Function", js)
    assert not re.search(r"setTimeout\(\s*['\"`]", js)  # a string is code too
    assert len(js.splitlines()) <= 320


# ---- browser fixtures ----

@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=shutil.which(CHROMIUM) or CHROMIUM, args=LAUNCH_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def open_page(browser):
    """open_page(url, **context_options) -> a page; alert dialogs fail the test (injected HTML)."""
    contexts = []

    def opener(url, **options):
        context = browser.new_context(accept_downloads=True, **options)
        contexts.append(context)
        page = context.new_page()
        page.dialogs = []
        page.on("dialog", lambda d: (page.dialogs.append(d.message), d.dismiss()))
        page.errors = []
        page.on("pageerror", lambda e: page.errors.append(str(e)))
        page.goto(url)
        return page

    yield opener
    for context in contexts:
        context.close()


def make_cluster(cluster_factory, **kwargs):
    cluster = cluster_factory(names=("a", "b", "c"), **kwargs)
    for name, files in FILES.items():
        seed(cluster.nodes[name].root, files, mtime=1700000000.0)
    return cluster


def node_item(page, name, status):
    return page.locator(f'#nodes li[data-node="{name}"][data-status="{status}"]')


def entry(page, path):
    return page.locator(f"#entries > li[data-path={json.dumps(path, ensure_ascii=False)}]")


def upload_result(page, node, name) -> tuple[str, str]:
    """Wait until the upload row of `name` to `node` has finished; its (state, message)."""
    row = page.locator(f'#uploads li[data-node="{node}"][data-name={json.dumps(name, ensure_ascii=False)}]')
    row.and_(page.locator('[data-state="done"], [data-state="error"]')).wait_for()
    return row.get_attribute("data-state"), row.locator(".msg").inner_text()


def download(page, link) -> tuple[str, bytes]:
    with page.expect_download() as info:
        link.click()
    d = info.value
    assert d.failure() is None
    with open(d.path(), "rb") as f:
        return d.suggested_filename, f.read()


# ---- the JS helpers, in the browser without a server ----

@requires_browser
def test_js_helpers(browser):
    page = browser.new_page()
    try:
        page.set_content("<!doctype html><title>t</title>")
        for name in SCRIPTS:
            page.add_script_tag(content=(WEB_DIR / name).read_text(encoding="utf-8"))
        ev = lambda expr: page.evaluate(f"(() => {{ const w = window.wsgiStream; return {expr}; }})()")
        assert ev("w.encodePath('a b/#?%/ü&x')") == "a%20b/%23%3F%25/%C3%BC%26x"
        assert ev("w.fileUrl('n 1', '/logs//grüße.txt')") == "/nodes/n%201/files/logs/gr%C3%BC%C3%9Fe.txt"
        assert ev("w.pathFromHash(w.hashFromPath('dir #1/ü?'))") == "dir #1/ü?"
        assert ev("w.pathFromHash('#/%E0%A4%A')") == "%E0%A4%A"  # broken escapes shown, not thrown
        assert ev("w.zipUrl('logs', ['a','b','c'], ['a','b','c'])") == "/cluster/files/logs"
        assert ev("w.zipUrl('a b', ['c','a'], ['a','b','c'])") == "/cluster/files/a%20b?nodes=a,c"
        assert ev("[0, 1023, 1024, 1536, 10 * 1048576, 3 * 2 ** 40].map(w.humanSize)") == [
            "0 B", "1023 B", "1.0 KiB", "1.5 KiB", "10 MiB", "3.0 TiB"]
        assert ev("w.errorMessage(413, JSON.stringify({error: 'too_large', message: 'Too big.'}))") == "Too big."
        assert ev("w.errorMessage(502, '<html>bad gateway</html>')") == "HTTP 502"
        assert ev("w.el('b', {}, '<script>x</script>').outerHTML") == "<b>&lt;script&gt;x&lt;/script&gt;</b>"
        # What goes in ZIPs (pick.js).
        assert ev("w.parsePatterns(' *.log, *.txt  app/*.log,,')") == ["*.log", "*.txt", "app/*.log"]
        assert ev("w.parsePatterns('')") == []
        assert ev("w.selectionParams('1h', ['*.log', 'a b&c'], 0)") == ["glob=*.log", "glob=a%20b%26c", "since=1h"]
        assert ev("w.selectionParams('', [], 0)") == []
        assert ev("w.zipUrl('logs', ['a','b'], ['a','b','c'], ['glob=*.log', 'since=1h'])") == (
            "/cluster/files/logs?nodes=a,b&glob=*.log&since=1h")
        assert ev("w.zipUrl('', ['a'], ['a'], ['glob=*.log'])") == "/cluster/files/?glob=*.log"
        assert ev("w.describe('today', ['*.log', '*.txt'])") == "is named *.log or *.txt and was changed today"
        assert ev("w.describe('1h', [])") == "was changed in the last hour"
        # Uploads (upload.js).
        assert re.fullmatch(r"web-[0-9a-f]{24}", ev("w.uploadId()"))
        assert ev("w.fanoutUrl('a b/ü.txt', 'best-effort', 'web-1')") == (
            "/cluster/files/a%20b/%C3%BC.txt?mode=best-effort&id=web-1")
        assert ev("w.lineText({status: 'committed', created: true})") == "committed (new file)"
        assert ev("w.lineText({status: 'failed', message: 'Node c is unreachable.'})") == (
            "failed — Node c is unreachable.")
        assert ev("w.lineText({state: 'staging', bytes: 2048})") == "staging · 2.0 KiB"
        assert ev("w.lineText({state: 'staging', bytes: 2048}, 4096)") == "staging · 2.0 KiB of 4.0 KiB"
    finally:
        page.close()


# (zone, an instant in UTC, the start of that instant's local day as ?since= gets it)
MIDNIGHTS = [
    ("UTC", "2026-11-26T10:00:00", "2026-11-26T00:00:00+00:00"),
    ("Asia/Kolkata", "2026-11-25T20:00:00", "2026-11-26T00:00:00+05:30"),     # already the 26th there
    ("Asia/Kolkata", "2026-11-25T18:00:00", "2026-11-25T00:00:00+05:30"),
    ("America/St_Johns", "2026-11-26T02:00:00", "2026-11-25T00:00:00-03:30"),  # still the 25th there
    ("America/Santiago", "2026-09-06T12:00:00", "2026-09-06T01:00:00-03:00"),  # DST skips 00:00 that day
]


@requires_browser
@pytest.mark.parametrize("zone, instant, expected", MIDNIGHTS)
def test_today_is_local_midnight_in_rfc3339(browser, zone, instant, expected):
    context = browser.new_context(timezone_id=zone)
    try:
        page = context.new_page()
        page.set_content("<!doctype html><title>t</title>")
        for name in SCRIPTS:
            page.add_script_tag(content=(WEB_DIR / name).read_text(encoding="utf-8"))
        got = page.evaluate(f"window.wsgiStream.midnight(Date.parse('{instant}Z'))")
        assert got == expected
        # The server reads it as the same instant (fromisoformat, as selection.parse_time does).
        start = datetime.fromisoformat(expected)
        assert start <= datetime.fromisoformat(instant + "+00:00") < start + timedelta(days=1)
    finally:
        context.close()


# ---- end to end ----

@requires_browser
def test_page_browse_download_upload_and_down(cluster_factory, open_page, tmp_path):
    cluster = make_cluster(cluster_factory, uploads=True)
    a = cluster.nodes["a"]
    page = open_page(a.url + "/", viewport={"width": 1100, "height": 900})

    # Nodes with their health, from the server's /api/nodes.
    for name in "abc":
        node_item(page, name, "ok").wait_for()
    assert "this node" in node_item(page, "a", "ok").inner_text()
    assert page.locator("#fanout-box").is_visible() == FANOUT  # "Upload to all nodes" where the node has it

    # Root listing: names shown literally (never parsed as HTML), UTF-8 intact.
    page.locator("#entries > li").first.wait_for()
    names = page.locator("#entries .name").all_inner_texts()
    for name in XSS_NAMES + [UTF8_NAME, "hello.txt", "logs/"]:
        assert name in names
    assert page.locator("#entries img").count() == 0 and page.dialogs == []
    hello = entry(page, "hello.txt")
    assert hello.locator(".differs").inner_text() == "sizes differ"  # 13, 21 and 13 bytes
    assert entry(page, UTF8_NAME).locator(".differs").count() == 0  # same size on a and c
    assert "13 B" in hello.locator('.chip[data-node="a"]').inner_text()
    assert "2023-11-1" in hello.locator('.chip[data-node="a"]').inner_text()  # local time of 1700000000
    assert entry(page, UTF8_NAME).locator(".chip.absent").inner_text() == "b"

    page.screenshot(path=str(tmp_path / "screenshot.png"), full_page=True)
    if os.environ.get("WSGI_STREAM_SCREENSHOT"):  # refresh the README's picture on demand only
        SCREENSHOT.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)

    # One file from one node: the plain link, the browser saves what the node sends.
    fname, body = download(page, entry(page, UTF8_NAME).locator('.chip[data-node="c"] a'))
    assert body == FILES["c"][UTF8_NAME] and fname == UTF8_NAME
    _, body = download(page, entry(page, XSS_NAMES[1]).locator('.chip[data-node="b"] a'))
    assert body == FILES["b"][XSS_NAMES[1]]

    # Folders navigate, the path lives in the hash, the back button works.
    entry(page, "logs").locator(".name a").click()
    page.wait_for_url(re.compile(r"#/logs$"))
    entry(page, "logs/app.log").wait_for()
    assert page.locator("#crumbs").inner_text().endswith("logs")
    _, body = download(page, entry(page, "logs/app.log").locator('.chip[data-node="b"] a'))
    assert body == FILES["b"]["logs/app.log"]

    # The folder from every node as one ZIP.
    _, body = download(page, page.locator("#folder-actions a.zip-all"))
    members = zip_members(body)
    assert members["a/logs/app.log"] == FILES["a"]["logs/app.log"]
    assert members["a/logs/old/x.log"] == FILES["a"]["logs/old/x.log"]
    assert members["b/logs/app.log"] == FILES["b"]["logs/app.log"]
    report = json.loads(members["_cluster.json"])
    assert "c" in json.dumps(report)  # c lacks logs/: reported, not fatal

    page.go_back()
    assert "#/logs" not in page.url
    entry(page, "hello.txt").wait_for()
    page.go_forward()
    entry(page, "logs/app.log").wait_for()
    page.go_back()
    entry(page, "hello.txt").wait_for()

    # The node picker narrows "all nodes" ZIPs: without b.
    page.locator('#pick input[value="b"]').uncheck()
    link = entry(page, "hello.txt").locator("a.zip-all")
    assert link.get_attribute("href") == "/cluster/files/hello.txt?nodes=a,c"
    _, body = download(page, link)
    members = zip_members(body)
    assert members["a/hello.txt"] == FILES["a"]["hello.txt"]
    assert members["c/hello.txt"] == FILES["c"]["hello.txt"]
    assert not any(m.startswith("b/") for m in members)

    # Upload into logs/ on node b (not this node): progress row done, file on b's disk.
    page.goto(a.url + "/#/logs")
    entry(page, "logs/app.log").wait_for()
    page.locator("#upload").wait_for()
    payload = "neu hochgeladen ✓\n".encode() * 1000
    page.set_input_files("#upload-files", files=[{"name": "über.txt", "mimeType": "text/plain", "buffer": payload}])
    page.locator('#targets input[value="a"]').uncheck()
    page.locator('#targets input[value="b"]').check()
    page.locator("#upload-go").click()
    assert upload_result(page, "b", "über.txt") == ("done", "stored (new file)")
    assert page.locator('#uploads li[data-node="b"] progress').evaluate("p => p.value") == 1
    assert (cluster.nodes["b"].root / "logs" / "über.txt").read_bytes() == payload
    assert not (a.root / "logs" / "über.txt").exists()
    entry(page, "logs/über.txt").locator('.chip[data-node="b"] a').wait_for()  # listing refreshed

    # A node goes down: shown as down within a few polls, and in the listing after a refresh.
    cluster.nodes["c"].stop()
    node_item(page, "c", "down").wait_for(timeout=20000)
    node_item(page, "a", "ok").wait_for()
    page.locator("#refresh").click()
    page.locator('#list-status .st-error[data-node="c"], #list-status .st-missing[data-node="c"]').wait_for()
    page.screenshot(path=str(tmp_path / "screenshot-node-down.png"), full_page=True)
    assert page.errors == [] and page.dialogs == []


# Below recent/ on a and b, each (age in seconds); c has only an old log there.
RECENT = {"app.log": 60, "web/access.log": 120, "notes.txt": 30, "old/app.log": 3 * HOUR, "core.dump": 10}


def seed_recent(cluster, now: float, zone: ZoneInfo) -> tuple[dict[str, float], float]:
    """Seed recent/ (RECENT, plus yesterday.log from just before midnight in `zone`).

    Returns ({ZIP member name: mtime}, that midnight)."""
    midnight = datetime.fromtimestamp(now, zone).replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
    seeded = {}
    for node, rel, mtime in ([(n, rel, now - age) for n in "ab" for rel, age in RECENT.items()]
                             + [(n, "yesterday.log", midnight - 60) for n in "ab"]
                             + [("c", "old/app.log", now - 3 * HOUR)]):
        seed(cluster.nodes[node].root / "recent", {rel: f"{rel} on {node}\n".encode()}, mtime=mtime)
        seeded[f"{node}/recent/{rel}"] = mtime
    return seeded, midnight


def zip_query(link) -> dict[str, list[str]]:
    url = urlsplit(link.get_attribute("href"))
    return {"path": [url.path], **parse_qs(url.query)}


def downloaded_names(page, link) -> tuple[set[str], dict]:
    _, body = download(page, link)
    members = zip_members(body)
    return set(members) - {"_cluster.json"}, json.loads(members["_cluster.json"])


def zip_message(page, link) -> str:
    """Click a ZIP link that must not download; the message shown beside it."""
    downloads = []
    listener = lambda d: downloads.append(d)  # noqa: E731 (playwright wants a Python function)
    page.on("download", listener)
    link.click()
    note = link.locator("xpath=following-sibling::span[contains(@class, 'zip-msg')][contains(@class, 'error')]")
    note.wait_for()
    page.wait_for_timeout(300)
    assert downloads == [] and "#/recent" in page.url  # no download, and still the page
    page.remove_listener("download", listener)
    return note.inner_text()


@requires_browser
def test_zip_selection_last_hour_today_and_patterns(cluster_factory, open_page):
    cluster = make_cluster(cluster_factory)
    zone = "Asia/Kolkata"  # +05:30: the offset in ?since= must keep its minutes
    seeded, midnight = seed_recent(cluster, time.time(), ZoneInfo(zone))
    page = open_page(cluster.nodes["a"].url + "/#/recent", timezone_id=zone, viewport={"width": 1100, "height": 900})
    entry(page, "recent/app.log").wait_for()
    folder_zip = page.locator("#folder-actions a.zip-all")
    assert page.locator("#pick-preview").is_hidden()  # nothing picked out: no preview to compute
    assert zip_query(folder_zip) == {"path": ["/cluster/files/recent"]}

    # "*.log" from the last hour: exactly the new logs of a and b, counted before the download.
    page.locator('#since input[value="1h"]').check()
    page.locator("#pattern").fill("*.log")
    preview = page.locator("#pick-preview")
    preview.locator('.total[data-count="4"]').wait_for()
    assert preview.locator('[data-node="a"]').inner_text() == "a: 2"
    assert preview.locator('[data-node="c"]').inner_text() == "c: none"
    assert zip_query(folder_zip) == {"path": ["/cluster/files/recent"], "glob": ["*.log"], "since": ["1h"]}
    names, report = downloaded_names(page, folder_zip)
    assert names == {f"{n}/recent/{p}" for n in "ab" for p in ("app.log", "web/access.log")}
    assert report["selection"]["glob"] == ["*.log"] and report["selection"]["since"] == "1h"

    # Several patterns, separated by commas and spaces: each one a ?glob=.
    page.locator("#pattern").fill("*.log,  notes.txt")
    preview.locator('.total[data-count="6"]').wait_for()
    assert zip_query(folder_zip)["glob"] == ["*.log", "notes.txt"]
    names, _ = downloaded_names(page, folder_zip)
    assert names == {f"{n}/recent/{p}" for n in "ab" for p in ("app.log", "web/access.log", "notes.txt")}

    # Today, in the browser's time zone: since its midnight, with its offset; yesterday's log stays out
    # (and so does anything else from before that midnight: the logs of 3 hours ago, early in the day).
    page.locator('#since input[value="today"]').check()
    page.locator("#pattern").fill("*.log")
    today = {name for name, mtime in seeded.items() if mtime >= midnight and name.endswith(".log")}
    assert today and not any(name.endswith("yesterday.log") for name in today)
    preview.locator(f'.total[data-count="{len(today)}"]').wait_for()
    since = zip_query(folder_zip)["since"][0]
    assert since.endswith("+05:30") and datetime.fromisoformat(since).timestamp() == midnight
    names, report = downloaded_names(page, folder_zip)
    assert names == today and report["selection"]["since"] == since

    # Any time: yesterday's log too; the node picker still narrows.
    page.locator('#since input[value=""]').check()
    page.locator('#pick input[value="a"]').uncheck()
    preview.locator('.total[data-count="5"]').wait_for()  # b's four logs, c's old one
    names, _ = downloaded_names(page, folder_zip)
    assert names == {"b/recent/app.log", "b/recent/web/access.log", "b/recent/old/app.log",
                     "b/recent/yesterday.log", "c/recent/old/app.log"}
    page.locator('#pick input[value="a"]').check()

    # Nothing picked: said in the preview and beside the link, and no download starts.
    page.locator("#pattern").fill("*.nothing")
    preview.locator('.total[data-count="0"]').wait_for()
    assert "nothing to download" in preview.inner_text()
    message = zip_message(page, folder_zip)
    assert message.startswith("Nothing to download: no file in /recent is named *.nothing")
    # The same on a node's folder chip: c's recent/old has no log of the last hour.
    page.locator('#since input[value="1h"]').check()
    page.locator("#pattern").fill("*.log")
    chip = entry(page, "recent/old").locator('.chip[data-node="c"] a')
    assert zip_query(chip)["nodes"] == ["c"]
    assert zip_message(page, chip).startswith("Nothing to download")

    # A selection the server refuses (more than 32 patterns): its reason, in the preview and on click.
    page.locator("#pattern").fill(" ".join(f"*.{i}" for i in range(33)))
    preview.locator(".error").wait_for()
    assert "At most 32" in preview.inner_text()
    assert zip_message(page, folder_zip).startswith("Cannot download: At most 32")
    assert page.errors == [] and page.dialogs == []


@requires_browser
def test_upload_refusals_show_the_server_message(cluster_factory, open_page):
    cluster = make_cluster(cluster_factory, uploads=True, max_upload_size=100)
    page = open_page(cluster.nodes["a"].url + "/")
    page.locator("#upload").wait_for()
    page.set_input_files("#upload-files", files=[
        {"name": "small.txt", "mimeType": "text/plain", "buffer": b"fits\n"},
        {"name": "big.bin", "mimeType": "application/octet-stream", "buffer": b"x" * 5000},
    ])
    page.locator("#upload-go").click()
    assert upload_result(page, "a", "small.txt")[0] == "done"
    state, message = upload_result(page, "a", "big.bin")
    assert state == "error" and message.startswith("refused (413): ") and len(message) > len("refused (413): ") + 5
    assert (cluster.nodes["a"].root / "small.txt").read_bytes() == b"fits\n"
    assert not (cluster.nodes["a"].root / "big.bin").exists()

    # "Keep existing files" sends If-None-Match: *, so an existing name is refused with 412.
    page.locator("#upload-keep").check()
    page.set_input_files("#upload-files", files=[{"name": "hello.txt", "mimeType": "text/plain", "buffer": b"new"}])
    page.locator("#upload-go").click()
    state, message = upload_result(page, "a", "hello.txt")
    assert state == "error" and message.startswith("refused (412): ")
    assert (cluster.nodes["a"].root / "hello.txt").read_bytes() == FILES["a"]["hello.txt"]


def fanout_result(page, name) -> tuple[str, str, dict[str, tuple[str, str]]]:
    """Wait until the fan-out row of `name` has finished: (state, message, {node: (status, line text)})."""
    row = page.locator(f'#uploads li[data-fanout][data-name={json.dumps(name, ensure_ascii=False)}]')
    row.and_(page.locator('[data-state="done"], [data-state="partial"], [data-state="error"]')).wait_for()
    lines = {li.get_attribute("data-node"): (li.get_attribute("data-status"), li.locator(".line").inner_text())
             for li in row.locator(".fan-nodes li").all()}
    return row.get_attribute("data-state"), row.locator(":scope > .msg").inner_text(), lines


@requires_browser
@requires_fanout
def test_upload_to_all_nodes(cluster_factory, open_page):
    cluster = make_cluster(cluster_factory, uploads=True)
    page = open_page(cluster.nodes["b"].url + "/#/logs")  # through b, to every node
    entry(page, "logs/app.log").wait_for()
    page.locator("#fanout-box").wait_for()
    name = "<img src=x onerror=alert(3)> ü.txt"  # a name is text, never markup
    payload = "one body, every node ✓\n".encode() * 20000
    page.set_input_files("#upload-files", files=[{"name": name, "mimeType": "text/plain", "buffer": payload}])
    page.locator("#upload-fanout").click()
    state, message, lines = fanout_result(page, name)
    assert state == "done" and message == "stored on every node (3)"
    assert lines == {n: ("committed", "committed (new file)") for n in "abc"}
    row = page.locator("#uploads li[data-fanout]")
    assert row.locator(".fan-nodes progress").evaluate_all("ps => ps.map(p => p.value)") == [1, 1, 1]
    assert row.locator("progress").first.evaluate("p => p.value") == 1  # the one body, sent once
    for node in cluster.nodes.values():
        assert (node.root / "logs" / name).read_bytes() == payload
    entry(page, f"logs/{name}").wait_for()  # the listing shows it, on every node
    assert entry(page, f"logs/{name}").locator(".chip.absent").count() == 0
    assert page.locator("#uploads img").count() == 0

    # "Keep existing files": If-None-Match: * on every node. logs/app.log is on a and b, not on c:
    # all or nothing, so c does not get it either.
    page.locator("#upload-keep").check()
    page.set_input_files("#upload-files", files=[{"name": "app.log", "mimeType": "text/plain", "buffer": b"v2"}])
    page.locator("#upload-fanout").click()
    state, message, lines = fanout_result(page, "app.log")
    assert state == "error" and message.startswith("refused (412): ")
    assert {status for status, _ in lines.values()} <= {"failed", "unchanged"}  # a or b failed first
    assert any(status == "failed" and text.startswith("failed — ") for status, text in lines.values())
    for node in "ab":
        assert (cluster.nodes[node].root / "logs" / "app.log").read_bytes() == FILES[node]["logs/app.log"]
    assert not (cluster.nodes["c"].root / "logs" / "app.log").exists()
    page.locator("#upload-keep").uncheck()

    # A node down: all or nothing changes no node; as many as possible stores on the others.
    cluster.nodes["c"].stop()
    node_item(page, "c", "down").wait_for(timeout=20000)
    page.set_input_files("#upload-files", files=[{"name": "atomic.txt", "mimeType": "text/plain", "buffer": b"A"}])
    page.locator("#upload-fanout").click()
    state, message, lines = fanout_result(page, "atomic.txt")
    assert state == "error" and "No node changed" in message
    assert lines["c"][0] == "failed" and lines["c"][1].startswith("failed — ")
    assert lines["a"][0] == lines["b"][0] == "unchanged"
    assert not any((cluster.nodes[n].root / "logs" / "atomic.txt").exists() for n in "abc")

    page.locator('input[name="fanout-mode"][value="best-effort"]').check()
    page.set_input_files("#upload-files", files=[{"name": "some.txt", "mimeType": "text/plain", "buffer": b"S"}])
    page.locator("#upload-fanout").click()
    state, message, lines = fanout_result(page, "some.txt")
    assert state == "partial" and message.startswith("only partly stored (207): ") and "a, b" in message
    assert lines["a"] == lines["b"] == ("committed", "committed (new file)") and lines["c"][0] == "failed"
    assert (cluster.nodes["a"].root / "logs" / "some.txt").read_bytes() == b"S"
    assert (cluster.nodes["b"].root / "logs" / "some.txt").read_bytes() == b"S"
    assert page.errors == [] and page.dialogs == []


@requires_browser
def test_no_upload_form_when_uploads_are_off(cluster_factory, open_page):
    cluster = make_cluster(cluster_factory)
    page = open_page(cluster.nodes["b"].url + "/")
    for name in "abc":
        node_item(page, name, "ok").wait_for()
    entry(page, "hello.txt").wait_for()
    assert page.locator("#upload").is_hidden()


@requires_browser
def test_token_browser_credentials(cluster_factory, browser, open_page, tmp_path):
    cluster = make_cluster(cluster_factory, token=SECRET, uploads=True)
    url = cluster.nodes["a"].url + "/"

    # Without credentials: the 401 that makes a browser ask for them (headless: it gives up).
    anonymous = browser.new_context()
    try:
        response = anonymous.request.get(url)
        assert response.status == 401 and response.headers["www-authenticate"] == 'Basic realm="wsgi_stream"'
        assert anonymous.request.get(cluster.nodes["a"].url + "/static/app.js").status == 401
    finally:
        anonymous.close()

    # With them (any user name, the token as password), same-origin requests carry them.
    page = open_page(url, http_credentials={"username": "appliance", "password": SECRET})
    for name in "abc":
        node_item(page, name, "ok").wait_for()
    entry(page, "logs").locator(".name a").click()
    _, body = download(page, entry(page, "logs/app.log").locator('.chip[data-node="a"] a'))
    assert body == FILES["a"]["logs/app.log"]
    page.set_input_files("#upload-files", files=[{"name": "t.txt", "mimeType": "text/plain", "buffer": b"tok\n"}])
    page.locator("#upload-go").click()
    assert upload_result(page, "a", "t.txt")[0] == "done"
    assert wait_for(lambda: (cluster.nodes["a"].root / "logs" / "t.txt").exists())
    page.screenshot(path=str(tmp_path / "screenshot-token.png"))


@requires_browser
def test_credentials_in_the_url(cluster_factory, open_page):
    cluster = make_cluster(cluster_factory, token=SECRET, uploads=True)
    a = cluster.nodes["a"]
    page = open_page(f"http://appliance:{SECRET}@{a.host}:{a.port}/")
    for name in "abc":
        node_item(page, name, "ok").wait_for()
    entry(page, "logs").wait_for()
    page.set_input_files("#upload-files", files=[{"name": "u.txt", "mimeType": "text/plain", "buffer": b"url\n"}])
    page.locator("#upload-go").click()
    assert upload_result(page, "a", "u.txt")[0] == "done"
    assert page.errors == []


@requires_browser
def test_phone_width(cluster_factory, open_page, tmp_path):
    cluster = make_cluster(cluster_factory)
    page = open_page(cluster.nodes["a"].url + "/", viewport={"width": 360, "height": 740},
                     is_mobile=True, has_touch=True)
    entry(page, UTF8_NAME).wait_for()
    # Nothing wider than the screen: no sideways scrolling on a phone.
    assert page.evaluate("document.documentElement.scrollWidth") <= 360
    page.screenshot(path=str(tmp_path / "screenshot-phone.png"), full_page=True)
