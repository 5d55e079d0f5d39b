"""Path cleaning as tables: what a URL path may name under a node's root (paths.clean_relpath, resolve).

resolve() is tried on a small tree in a temporary directory, symlinks included; no socket.
"""

from __future__ import annotations

import os

import pytest

from wsgi_stream.errors import NotFound
from wsgi_stream.paths import TEMP_PREFIX, clean_relpath, is_temp_name, resolve

CLEAN = [
    # (id, as given, cleaned)
    ("root-empty", "", ""),
    ("plain", "a/b.txt", "a/b.txt"),
    ("doubled-slashes-collapsed", "a//b///c", "a/b/c"),
    ("dot-segments-dropped", "./a/./b/.", "a/b"),
    ("trailing-slash-dropped", "logs/", "logs"),
    ("only-dots-and-slashes-is-root", "./", ""),
    ("dotfile-allowed", ".hidden", ".hidden"),
    ("three-dots-is-a-name", "...", "..."),
    ("dot-dot-prefix-is-a-name", "..a/b..", "..a/b.."),
    ("backslash-is-an-ordinary-character-on-posix", "a\\..\\b", "a\\..\\b"),
    ("temp-prefix-inside-a-name-allowed", "x" + TEMP_PREFIX, "x" + TEMP_PREFIX),
    ("unicode-kept", "été/日本.txt", "été/日本.txt"),
]


@pytest.mark.parametrize("rel, expected", [c[1:] for c in CLEAN], ids=[c[0] for c in CLEAN])
def test_clean_relpath(rel, expected):
    assert clean_relpath(rel) == expected


REFUSED = [
    # (id, as given): every one a plain 404, as if the file did not exist
    ("absolute-404", "/etc/passwd"),
    ("absolute-root-404", "/"),
    ("dot-dot-404", ".."),
    ("dot-dot-leading-404", "../secret"),
    ("dot-dot-inside-404", "a/../b"),
    ("dot-dot-that-stays-inside-still-404", "a/b/../c"),
    ("dot-dot-trailing-404", "a/.."),
    ("nul-404", "a\x00b"),
    ("nul-alone-404", "\x00"),
    ("upload-temp-file-404", TEMP_PREFIX + "0123abcd"),
    ("upload-temp-file-in-a-folder-404", "logs/" + TEMP_PREFIX + "x"),
    ("upload-temp-as-folder-404", TEMP_PREFIX + "x/y"),
]


@pytest.mark.parametrize("rel", [c[1] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_clean_relpath_refuses_with_404(rel):
    with pytest.raises(NotFound) as err:
        clean_relpath(rel)
    assert (err.value.status, err.value.message) == (404, "No such file.")


@pytest.mark.parametrize("name, temp", [
    (TEMP_PREFIX + "abc", True), (TEMP_PREFIX, True), ("x" + TEMP_PREFIX, False), (".wsgi_stream", False),
])
def test_is_temp_name(name, temp):
    assert is_temp_name(name) is temp


@pytest.fixture
def tree(tmp_path):
    """root/ with a file, a folder, links inside and out, and a sibling folder sharing root's prefix."""
    root = tmp_path / "root"
    (root / "logs").mkdir(parents=True)
    (root / "logs" / "app.log").write_text("x")
    (tmp_path / "root2").mkdir()
    (tmp_path / "root2" / "secret").write_text("s")
    (tmp_path / "secret").write_text("s")
    os.symlink(root / "logs" / "app.log", root / "inside-abs")
    os.symlink("logs/app.log", root / "inside-rel")
    os.symlink(tmp_path / "secret", root / "outside-abs")
    os.symlink("../secret", root / "outside-rel")
    os.symlink("../root2/secret", root / "sibling-prefix")
    os.symlink(".", root / "self")
    os.symlink("..", root / "parent")
    os.symlink(tmp_path / "root2", root / "logs" / "to-sibling-dir")
    os.symlink("nowhere", root / "dangling")
    return root


RESOLVED = [
    # (id, rel, expected path relative to root's real path)
    ("root-itself", "", ""),
    ("a-file", "logs/app.log", "logs/app.log"),
    ("a-folder", "logs/", "logs"),
    ("symlink-inside-absolute", "inside-abs", "logs/app.log"),
    ("symlink-inside-relative", "inside-rel", "logs/app.log"),
    ("symlink-to-the-root-itself", "self", ""),
    ("through-a-symlink-to-the-root", "self/logs/app.log", "logs/app.log"),
    ("missing-file-still-resolved", "logs/missing.txt", "logs/missing.txt"),
    ("dangling-symlink-inside", "dangling", "nowhere"),
]


@pytest.mark.parametrize("rel, expected", [c[1:] for c in RESOLVED], ids=[c[0] for c in RESOLVED])
def test_resolve_inside_the_root(tree, rel, expected):
    real_root = os.path.realpath(tree)
    assert str(resolve(tree, rel)) == (os.path.join(real_root, expected) if expected else real_root)


@pytest.mark.parametrize("rel", [
    pytest.param("outside-abs", id="symlink-out-absolute-404"),
    pytest.param("outside-rel", id="symlink-out-relative-404"),
    pytest.param("sibling-prefix", id="symlink-to-a-sibling-sharing-the-roots-prefix-404"),
    pytest.param("parent", id="symlink-to-the-parent-404"),
    pytest.param("parent/secret", id="through-a-symlink-to-the-parent-404"),
    pytest.param("logs/to-sibling-dir/secret", id="through-a-folder-symlink-out-404"),
    pytest.param("../secret", id="dot-dot-404"),
    pytest.param("/etc/passwd", id="absolute-404"),
])
def test_resolve_refuses_what_leaves_the_root(tree, rel):
    with pytest.raises(NotFound):
        resolve(tree, rel)


def test_resolve_a_root_given_through_a_symlink(tree, tmp_path):
    link = tmp_path / "root-link"
    os.symlink(tree, link)
    assert str(resolve(link, "logs/app.log")) == os.path.join(os.path.realpath(tree), "logs/app.log")
    with pytest.raises(NotFound):
        resolve(link, "outside-rel")
