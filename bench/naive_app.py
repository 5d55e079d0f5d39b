"""The "naive" references: what a quick blog recipe does, under plain waitress.

forward mode: GET /<name> -> urllib3 request(UPSTREAM/<name>, preload_content=False) and return
    r.stream(NAIVE_FORWARD_CHUNK): with 1 (the default) this is exactly what requests'
    `r.iter_content()` does (its default chunk_size is 1 byte; it calls raw.stream(1));
    NAIVE_FORWARD_CHUNK=8192 is the other common recipe, iter_content(8192).
zip mode:     GET /<name> -> zipstream.ZipFile(mode="w", compression=ZIP_DEFLATED), one member per
    upstream, fed by r.stream(NAIVE_ZIP_CHUNK) (requests' iter_content(chunk_size=8192)).

Configured by environment: NAIVE_MODE=forward|zip, NAIVE_UPSTREAMS=url1,url2,... (forward uses the
first), NAIVE_FORWARD_CHUNK (default 1), NAIVE_ZIP_CHUNK (default 8192). urllib3 rather than
requests, which is no dependency of the project.
"""

import os

import urllib3
import zipstream

MODE = os.environ.get("NAIVE_MODE", "forward")
UPSTREAMS = [u.rstrip("/") for u in os.environ.get("NAIVE_UPSTREAMS", "").split(",") if u]
FORWARD_CHUNK = int(os.environ.get("NAIVE_FORWARD_CHUNK", "1"))
ZIP_CHUNK = int(os.environ.get("NAIVE_ZIP_CHUNK", "8192"))
HTTP = urllib3.PoolManager()


def forward(environ, start_response):
    name = environ.get("PATH_INFO", "/").lstrip("/")
    r = HTTP.request("GET", f"{UPSTREAMS[0]}/{name}", preload_content=False)
    headers = [("Content-Type", r.headers.get("Content-Type", "application/octet-stream"))]
    if "Content-Length" in r.headers:
        headers.append(("Content-Length", r.headers["Content-Length"]))
    start_response(f"{r.status} {r.reason}", headers)
    return r.stream(FORWARD_CHUNK, decode_content=True)


def zip_app(environ, start_response):
    name = environ.get("PATH_INFO", "/").lstrip("/")
    z = zipstream.ZipFile(mode="w", compression=zipstream.ZIP_DEFLATED, allowZip64=True)
    for i, up in enumerate(UPSTREAMS):
        r = HTTP.request("GET", f"{up}/{name}", preload_content=False)
        if r.status != 200:
            raise RuntimeError(f"{up}/{name}: HTTP {r.status}")
        z.write_iter(f"node{i}/{name}", r.stream(ZIP_CHUNK, decode_content=True))
    start_response("200 OK", [("Content-Type", "application/zip"),
                              ("Content-Disposition", 'attachment; filename="cluster.zip"')])
    return z


application = zip_app if MODE == "zip" else forward
