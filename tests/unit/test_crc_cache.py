"""The CRC-32 cache: bounded, keyed by what identifies a file's content, kept beside (not in) the root."""

import os

from wsgi_stream.crc import CrcCache, cache_path_for, file_key


def test_least_recently_used_goes_first():
    cache = CrcCache(limit=2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a is now the most recent
    cache.put("c", 3)
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (1, None, 3)


def test_a_rewritten_file_has_another_key(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"one")
    before = file_key(os.stat(path))
    path.write_bytes(b"two!")
    assert file_key(os.stat(path)) != before


def test_saved_and_loaded_file_keys_only(tmp_path):
    cache = CrcCache()
    cache.put((1, 2, 3, 4), 0xDEADBEEF)
    cache.put(("node", "path", '"etag"'), 7)  # a gateway's key: not kept on disk
    saved = tmp_path / "crcs"
    cache.save(saved)
    again = CrcCache()
    again.load(saved)
    assert again.get((1, 2, 3, 4)) == 0xDEADBEEF and len(again) == 1 and not again.changed


def test_a_damaged_file_loads_what_it_can(tmp_path):
    saved = tmp_path / "crcs"
    CrcCache().save(saved)
    saved.write_bytes(saved.read_bytes() + b"garbage")
    CrcCache().load(saved)
    CrcCache().load(tmp_path / "missing")


def test_the_file_is_beside_the_root_never_inside(tmp_path):
    root = tmp_path / "srv" / "files"
    root.mkdir(parents=True)
    path = cache_path_for(root)
    assert path.parent == root.parent and path.name.startswith(".")
