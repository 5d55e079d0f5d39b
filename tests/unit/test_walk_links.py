"""The recursive walk resolves only symlinks: a link leaving the root is skipped, one inside is listed."""

import os

from wsgi_stream.listing import walk


def test_links_in_a_recursive_walk(tmp_path):
    root = tmp_path / "root"
    (root / "logs" / "sub").mkdir(parents=True)
    (root / "logs" / "sub" / "a.log").write_text("a")
    (root / "logs" / "target.log").write_text("inside")
    (tmp_path / "secret.txt").write_text("outside")
    os.symlink(tmp_path / "secret.txt", root / "logs" / "sub" / "escape.log")
    os.symlink(root / "logs" / "target.log", root / "logs" / "sub" / "inside.log")
    os.symlink(root / "logs" / "missing", root / "logs" / "dangling.log")
    os.mkfifo(root / "logs" / "pipe")
    files, skipped = walk(root, "logs")
    assert [f["path"] for f in files] == ["logs/sub/a.log", "logs/sub/inside.log", "logs/target.log"]
    assert next(f for f in files if f["path"] == "logs/sub/inside.log")["size"] == len("inside")
    reasons = {s["path"]: s["reason"] for s in skipped}
    assert reasons["logs/sub/escape.log"] == "a symbolic link leading outside the root"
    assert reasons["logs/dangling.log"] == "a symbolic link to nothing"
    assert "only regular files are served" in reasons["logs/pipe"]
