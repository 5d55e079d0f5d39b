"""The reference for local downloads: a hand-written WSGI app that does nothing
but hand an open file to the server's ``wsgi.file_wrapper`` (1 MiB blocks).

    BARE_ROOT=/dir waitress-serve --threads 8 bare_app:application
    python bench/bare_app.py --root DIR --listen 127.0.0.5:8000 --threads 8   (waitress)

GET /<name> serves <root>/<name>. No checks beyond refusing '..'.
"""

import os

ROOT = os.environ.get("BARE_ROOT", ".")
BLOCK = 1 << 20


def application(environ, start_response):
    name = environ.get("PATH_INFO", "/").lstrip("/")
    if name.startswith("files/"):
        name = name[len("files/"):]
    path = os.path.join(ROOT, name)
    if ".." in name.split("/") or not os.path.isfile(path):
        start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "9")])
        return [b"not found"]
    f = open(path, "rb")
    size = os.fstat(f.fileno()).st_size
    start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(size))])
    return environ["wsgi.file_wrapper"](f, BLOCK)


if __name__ == "__main__":
    import argparse

    import waitress

    p = argparse.ArgumentParser()
    p.add_argument("--root", required=True)
    p.add_argument("--listen", default="127.0.0.1:8080")
    p.add_argument("--threads", type=int, default=8)
    a = p.parse_args()
    ROOT = a.root
    waitress.serve(application, listen=a.listen, threads=a.threads)
