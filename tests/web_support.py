"""Helpers for the web page tests: where Chromium is, how to start it, files to seed."""

from __future__ import annotations

import io
import os
import shutil
import zipfile
from pathlib import Path

import pytest

from support import wait_for  # noqa: F401 (the web tests take it from here)

REPO = Path(__file__).resolve().parent.parent
WEB_DIR = REPO / "wsgi_stream" / "web"
SCREENSHOT = REPO / "docs" / "screenshot.png"

# Debian's Chromium, driven by the playwright package: `playwright install` would download
# its own browser build, which this offline setup cannot do.
CHROMIUM = os.environ.get("WSGI_STREAM_CHROMIUM", "/usr/bin/chromium")
LAUNCH_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        return f"{CHROMIUM} is missing (apt-get install chromium; see .ci/web-deps.txt)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright Python package is missing (pip install playwright; see .ci/web-deps.txt)"
    return None


requires_browser = pytest.mark.skipif(browser_missing() is not None, reason=str(browser_missing()))


def seed(root: Path, files: dict[str, bytes], mtime: float | None = None) -> None:
    """Write `files` ({relative path: bytes}) under `root`, optionally all with one mtime."""
    for rel, data in files.items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        if mtime is not None:
            os.utime(target, (mtime, mtime))


def zip_members(data: bytes) -> dict[str, bytes]:
    """Every member of a ZIP archive by name; also runs zipfile's CRC check over all of them."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.testzip() is None
        return {name: archive.read(name) for name in archive.namelist()}
