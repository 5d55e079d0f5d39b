"""The cluster's pure deciders as tables: node selection, what a node's listing contributes to a ZIP
plan (and why an entry is left out), when "nobody has it" is a 404 or a 502, and merged listings.

No peer is asked: each function gets the answers a node would have given.
"""

from __future__ import annotations

import pytest

from wsgi_stream.cluster import merge_listings
from wsgi_stream.plan import NodeResult, check_found, collect, select_nodes
from wsgi_stream.errors import BadGateway, NotFound
from wsgi_stream.portable import portable_segment

KNOWN = ["a", "b", "c"]


# -- select_nodes --------------------------------------------------------------------------------

@pytest.mark.parametrize("wanted, expected", [
    pytest.param(None, ["a", "b", "c"], id="absent-every-node"),
    pytest.param(["c", "a"], ["a", "c"], id="config-order-not-request-order"),
    pytest.param(["b", "b"], ["b"], id="duplicates-once"),
    pytest.param([], [], id="empty-selection-none"),
])
def test_select_nodes(wanted, expected):
    assert select_nodes(KNOWN, wanted) == expected


@pytest.mark.parametrize("wanted, named", [
    pytest.param(["a", "zz"], "'zz'", id="unknown-node-404"),
    pytest.param(["zz", "yy"], "'yy'", id="several-unknown-first-in-sorted-order-404"),
    pytest.param(["A"], "'A'", id="names-are-case-sensitive-404"),
])
def test_select_nodes_unknown_is_404(wanted, named):
    with pytest.raises(NotFound) as err:
        select_nodes(KNOWN, wanted)
    assert err.value.code == "unknown_node" and named in err.value.message


# -- _collect: which listed entries become members of the archive --------------------------------

def entry(path, size=3, etag='"e1"', **more):
    return {"path": path, "size": size, "etag": etag, **more}


COLLECT = [
    # (id, prefix, entries, kept paths in order, left out as [(name, reason)])
    ("usable-file-kept", "", [entry("x.txt")], ["x.txt"], []),
    ("members-sorted-by-path", "", [entry("b"), entry("a/z"), entry("a")], ["a", "a/z", "b"], []),
    ("type-defaults-to-file", "", [{"path": "x", "size": 0, "etag": '"e"'}], ["x"], []),
    ("empty-file-kept", "", [entry("x", size=0)], ["x"], []),
    ("folders-skipped-silently", "", [entry("d", type="dir"), entry("d/x")], ["d/x"], []),
    ("non-objects-skipped-silently", "", [None, "x", 3, ["y"], entry("ok")], ["ok"], []),
    ("prefix-itself-a-file", "logs/app.log", [entry("logs/app.log")], ["logs/app.log"], []),
    ("under-the-prefix", "logs", [entry("logs/a"), entry("logs/old/b")], ["logs/a", "logs/old/b"], []),
    ("sibling-sharing-the-prefix-left-out", "logs", [entry("logsX/a")], [],
     [("logsX/a", "not under the requested path")]),
    ("elsewhere-left-out", "logs", [entry("other/a")], [], [("other/a", "not under the requested path")]),
    ("path-not-a-string-left-out", "", [entry(5)], [], [("5", "not under the requested path")]),
    ("path-missing-left-out", "", [{"size": 1, "etag": '"e"'}], [], [("None", "not under the requested path")]),
    ("dot-dot-left-out", "", [entry("../escape")], [], [("../escape", "empty, '.' or '..' path segment")]),
    ("dot-dot-inside-the-prefix-left-out", "logs", [entry("logs/../../x")], [],
     [("logs/../../x", "empty, '.' or '..' path segment")]),
    ("absolute-left-out", "", [entry("/etc/passwd")], [], [("/etc/passwd", "empty, '.' or '..' path segment")]),
    ("backslash-kept-its-member-made-portable", "", [entry("a\\b")], ["a\\b"], []),
    ("portable-name-taken-second-left-out", "", [entry("a%3Ab"), entry("a:b")], ["a%3Ab"],
     [("a:b", "its portable name 'a/a%3Ab' is that of 'a%3Ab'")]),
    ("nul-left-out", "", [entry("a\x00b")], [], [("a\x00b", "NUL in name")]),
    ("lone-surrogate-left-out-printably", "", [entry("\udcff.txt")], [],
     [("\\udcff.txt", "name is not valid UTF-8")]),
    ("size-as-string-left-out", "", [entry("x", size="3")], [], [("x", "no valid size")]),
    ("size-true-left-out", "", [entry("x", size=True)], [], [("x", "no valid size")]),
    ("size-negative-left-out", "", [entry("x", size=-1)], [], [("x", "no valid size")]),
    ("size-float-left-out", "", [entry("x", size=3.0)], [], [("x", "no valid size")]),
    ("size-missing-left-out", "", [{"path": "x", "etag": '"e"'}], [], [("x", "no valid size")]),
    ("rfc9110-8.8.3-weak-etag-left-out", "", [entry("x", etag='W/"e"')], [], [("x", "no strong ETag")]),
    ("rfc9110-8.8.3-unquoted-etag-left-out", "", [entry("x", etag="e")], [], [("x", "no strong ETag")]),
    ("etag-missing-left-out", "", [entry("x", etag=None)], [], [("x", "no strong ETag")]),
    ("etag-lone-quote-left-out", "", [entry("x", etag='"')], [], [("x", "no strong ETag")]),
    ("listed-twice-second-left-out", "", [entry("x"), entry("x", size=9)], ["x"], [("x", "listed twice")]),
    ("one-bad-entry-spares-the-others", "", [entry("a"), entry("b", size=-1), entry("c")], ["a", "c"],
     [("b", "no valid size")]),
]


@pytest.mark.parametrize("prefix, entries, kept, left_out", [c[1:] for c in COLLECT], ids=[c[0] for c in COLLECT])
def testcollect(prefix, entries, kept, left_out):
    result = collect(NodeResult("a", "ok"), entries, prefix)
    assert [item.path for item in result.files] == kept
    assert result.errors == [{"name": name, "message": f"left out: {why}"} for name, why in left_out]
    assert result.failed == bool(left_out)
    for item in result.files:
        assert item.node == "a" and item.original == f"a/{item.path}"
        assert item.member == "/".join(portable_segment(part) for part in item.original.split("/"))


@pytest.mark.parametrize("mtime, expected", [
    pytest.param(1700000000.5, 1700000000.5, id="float-kept"),
    pytest.param(1700000000, 1700000000.0, id="int-as-float"),
    pytest.param(None, None, id="missing-none"),
    pytest.param("1700000000", None, id="string-none"),
    pytest.param(True, None, id="bool-none"),
])
def test_collect_mtime_is_a_number_or_none(mtime, expected):
    item, = collect(NodeResult("a", "ok"), [entry("x", mtime=mtime)], "").files
    assert item.mtime == expected and (expected is None or isinstance(item.mtime, float))


# -- _check_found: 404 when nobody has it, 502 when nobody that answered has it ------------------

def results(*statuses):
    return [NodeResult(name, status, None if status == "ok" else f"{status} on {name}")
            for name, status in zip("abc", statuses)]


@pytest.mark.parametrize("statuses", [
    pytest.param(("ok",), id="one-node-has-it"),
    pytest.param(("missing", "ok"), id="one-of-several-has-it"),
    pytest.param(("error", "ok", "missing"), id="found-despite-a-failed-node"),
])
def test_check_found_passes(statuses):
    check_found(results(*statuses), "'x'")


@pytest.mark.parametrize("statuses, error, words", [
    pytest.param(("missing", "missing"), NotFound, "No node has 'x'.", id="all-missing-404"),
    pytest.param((), NotFound, "No node has 'x'.", id="no-node-asked-404"),
    pytest.param(("missing", "error"), BadGateway, "(b: error on b)", id="missing-and-failed-502"),
    pytest.param(("error", "error"), BadGateway, "(a: error on a; b: error on b)", id="all-failed-502-each-named"),
])
def test_check_found_refuses(statuses, error, words):
    with pytest.raises(error) as err:
        check_found(results(*statuses), "'x'")
    assert words in err.value.message
    if error is BadGateway:
        assert err.value.code == "nodes_failed" and err.value.status == 502


# -- merge_listings ------------------------------------------------------------------------------

def f(name, rel="", size=3, **more):
    return {"name": name, "path": f"{rel}/{name}" if rel else name, "type": "file", "size": size,
            "mtime": 1.5, "etag": f'"{name}{size}"', **more}


def d(name, rel=""):
    return {"name": name, "path": f"{rel}/{name}" if rel else name, "type": "dir"}


def facts(e):
    return {k: e[k] for k in ("size", "mtime", "etag")}


MERGES = [
    # (id, rel, answers [(node, status, entries or {"message"})], expected entries, expected nodes)
    ("same-file-on-two-nodes-one-row", "", [("a", "ok", [f("x")]), ("b", "ok", [f("x", size=9)])],
     [{"name": "x", "path": "x", "type": "file", "nodes": {"a": facts(f("x")), "b": facts(f("x", size=9))}}],
     {"a": {"status": "ok"}, "b": {"status": "ok"}}),
    ("folder-rows-have-no-facts", "", [("a", "ok", [d("logs")]), ("b", "ok", [d("logs")])],
     [{"name": "logs", "path": "logs", "type": "dir", "nodes": {"a": {}, "b": {}}}],
     {"a": {"status": "ok"}, "b": {"status": "ok"}}),
    ("file-and-folder-of-one-name-two-rows-folder-first", "", [("a", "ok", [f("x")]), ("b", "ok", [d("x")])],
     [{"name": "x", "path": "x", "type": "dir", "nodes": {"b": {}}},
      {"name": "x", "path": "x", "type": "file", "nodes": {"a": facts(f("x"))}}],
     {"a": {"status": "ok"}, "b": {"status": "ok"}}),
    ("rows-sorted-by-name", "", [("a", "ok", [f("c"), f("a")]), ("b", "ok", [f("b")])],
     [{"name": n, "path": n, "type": "file", "nodes": {node: facts(f(n))}} for n, node in
      (("a", "a"), ("b", "b"), ("c", "a"))],
     {"a": {"status": "ok"}, "b": {"status": "ok"}}),
    ("subfolder-paths", "logs", [("a", "ok", [f("app.log", "logs")])],
     [{"name": "app.log", "path": "logs/app.log", "type": "file", "nodes": {"a": facts(f("app.log", "logs"))}}],
     {"a": {"status": "ok"}}),
    ("missing-and-failed-nodes-reported-not-listed", "",
     [("a", "ok", [f("x")]), ("b", "missing", {"message": "No such directory."}),
      ("c", "error", {"message": "Node c is unreachable."})],
     [{"name": "x", "path": "x", "type": "file", "nodes": {"a": facts(f("x"))}}],
     {"a": {"status": "ok"}, "b": {"status": "missing", "message": "No such directory."},
      "c": {"status": "error", "message": "Node c is unreachable."}}),
    ("extra-fields-dropped-missing-facts-absent", "",
     [("a", "ok", [{"name": "x", "path": "x", "type": "file", "size": 1, "owner": "root"}])],
     [{"name": "x", "path": "x", "type": "file", "nodes": {"a": {"size": 1}}}], {"a": {"status": "ok"}}),
]


@pytest.mark.parametrize("rel, answers, entries, nodes", [c[1:] for c in MERGES], ids=[c[0] for c in MERGES])
def test_merge_listings(rel, answers, entries, nodes):
    assert merge_listings(rel, answers) == {"path": rel, "nodes": nodes, "entries": entries}


@pytest.mark.parametrize("rel, bad", [
    pytest.param("", {"name": "x", "path": "x", "type": "link"}, id="unknown-type"),
    pytest.param("", {"name": "x", "path": "x"}, id="no-type"),
    pytest.param("", {"name": "a/b", "path": "a/b", "type": "file"}, id="name-with-slash"),
    pytest.param("", {"name": "..", "path": "..", "type": "dir"}, id="dot-dot-name"),
    pytest.param("", {"name": "a\x00b", "path": "a\x00b", "type": "file"}, id="nul-name"),
    pytest.param("", {"name": "", "path": "", "type": "dir"}, id="empty-name"),
    pytest.param("", {"name": None, "path": None, "type": "file"}, id="name-not-a-string"),
    pytest.param("", {"name": "x", "path": "elsewhere/x", "type": "file"}, id="path-not-rel-slash-name"),
    pytest.param("logs", {"name": "x", "path": "x", "type": "file"}, id="path-outside-rel"),
    pytest.param("", "x", id="not-an-object"),
])
def test_merge_listings_leaves_out_unusable_entries(rel, bad):
    good = f("ok", rel)
    merged = merge_listings(rel, [("a", "ok", [bad, good])])
    assert [row["name"] for row in merged["entries"]] == ["ok"]
