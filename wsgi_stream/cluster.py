"""Cluster downloads: one ZIP of a path from every node (stub until issue 4 lands)."""

from .errors import ApiError


def _todo(*args, **kwargs):
    raise ApiError("Not implemented yet.", status=501, code="not_implemented")


cluster_files = cluster_list = _todo
