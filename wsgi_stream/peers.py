"""Peers: forwarding a peer's files and listings through this node (stub until issue 3 lands)."""

from __future__ import annotations

import urllib3

from .errors import ApiError


class PeerClient:
    """The pooled HTTP client this node uses to reach its configured peers."""

    def __init__(self, config, self_name: str):
        self.config = config
        self.self_name = self_name
        self.pool = urllib3.PoolManager(num_pools=max(len(config.nodes), 1), maxsize=16)


def _todo(*args, **kwargs):
    raise ApiError("Not implemented yet.", status=501, code="not_implemented")


api_nodes = peer_file = peer_list = _todo
