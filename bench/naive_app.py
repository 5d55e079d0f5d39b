"""The "naive" references: what a quick blog recipe does, under waitress.

forward mode: GET /<name> -> requests.get(UPSTREAM/<name>, stream=True) and
    return r.iter_content()   (requests' default chunk_size, which is 1 byte;
    NAIVE_FORWARD_CHUNK=8192 gives the other common recipe, iter_content(8192))
zip mode:     GET /<name> -> zipstream.ZipFile(mode="w", compression=ZIP_DEFLATED),
    one member per upstream, fed by requests' iter_content(chunk_size=ZIP_CHUNK)

Configured by environment: NAIVE_MODE=forward|zip, NAIVE_UPSTREAMS=url1,url2,...
(forward uses the first), NAIVE_ZIP_CHUNK (default 8192).
"""

import os

import requests

MODE = os.environ.get("NAIVE_MODE", "forward")
UPSTREAMS = [u.rstrip("/") for u in os.environ.get("NAIVE_UPSTREAMS", "").split(",") if u]
ZIP_CHUNK = int(os.environ.get("NAIVE_ZIP_CHUNK", "8192"))
FORWARD_CHUNK = int(os.environ.get("NAIVE_FORWARD_CHUNK", "0"))  # 0: iter_content() default (1 byte)


def forward(environ, start_response):
    name = environ.get("PATH_INFO", "/").lstrip("/")
    r = requests.get(f"{UPSTREAMS[0]}/{name}", stream=True)
    headers = [("Content-Type", r.headers.get("Content-Type", "application/octet-stream"))]
    if "Content-Length" in r.headers:
        headers.append(("Content-Length", r.headers["Content-Length"]))
    start_response(f"{r.status_code} {r.reason}", headers)
    if FORWARD_CHUNK:
        return r.iter_content(chunk_size=FORWARD_CHUNK)
    return r.iter_content()


def zip_app(environ, start_response):
    import zipstream

    name = environ.get("PATH_INFO", "/").lstrip("/")
    z = zipstream.ZipFile(mode="w", compression=zipstream.ZIP_DEFLATED, allowZip64=True)
    for i, up in enumerate(UPSTREAMS):
        r = requests.get(f"{up}/{name}", stream=True)
        r.raise_for_status()
        z.write_iter(f"node{i}/{name}", r.iter_content(chunk_size=ZIP_CHUNK))
    start_response("200 OK", [("Content-Type", "application/zip"),
                              ("Content-Disposition", 'attachment; filename="cluster.zip"')])
    return z


application = zip_app if MODE == "zip" else forward
