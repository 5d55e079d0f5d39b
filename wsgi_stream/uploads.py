"""Uploads: streamed, atomic PUT (stub until issue 5 lands)."""

from .errors import MethodNotAllowed


def put_file(app, request, path):
    raise MethodNotAllowed("Uploads are turned off on this cluster.", headers=[("Allow", "GET, HEAD")])
