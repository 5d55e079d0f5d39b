"""Peers: the pooled client that reaches other nodes, and forwarding through this node."""

from __future__ import annotations

import json
from urllib.parse import quote

import urllib3
from urllib3.exceptions import ConnectTimeoutError, HTTPError, NewConnectionError, ReadTimeoutError

from .errors import ApiError, BadGateway, GatewayTimeout, NotFound


def quote_path(path: str) -> str:
    """A relative file path percent-encoded for a URL (slashes kept)."""
    return quote(path, safe="/")


class PeerClient:
    """The pooled HTTP client this node uses to reach its configured peers (and only them)."""

    def __init__(self, config, self_name: str):
        self.config = config
        self.self_name = self_name
        self.timeout = urllib3.Timeout(connect=config.connect_timeout, read=config.read_timeout)
        self.pool = urllib3.PoolManager(num_pools=max(len(config.nodes), 1), maxsize=16, block=False,
                                        retries=False, timeout=self.timeout)

    def node(self, name: str):
        """The configured peer `name`; 404 for a name the config does not know."""
        if name not in self.config.nodes:
            raise NotFound(f"No node called {name!r} in this cluster.", code="unknown_node")
        return self.config.nodes[name]

    def request(self, name: str, method: str, url_path: str, headers: dict | None = None, body=None,
                timeout=None) -> urllib3.BaseHTTPResponse:
        """Send a request to peer `name`; the response body is not read yet (preload_content=False).

        Connection failures become 502 and timeouts 504, naming the node.
        """
        node = self.node(name)
        headers = dict(headers or {})
        if self.config.token:
            headers["Authorization"] = f"Bearer {self.config.token}"
        try:
            return self.pool.request(method, node.url + url_path, headers=headers, body=body,
                                     preload_content=False, decode_content=False, redirect=False,
                                     retries=False, timeout=timeout or self.timeout)
        except (ConnectTimeoutError, ReadTimeoutError) as exc:
            raise GatewayTimeout(f"Node {name} did not answer in time.", code="peer_timeout") from exc
        except urllib3.exceptions.MaxRetryError as exc:
            if isinstance(exc.reason, (ConnectTimeoutError, ReadTimeoutError)):
                raise GatewayTimeout(f"Node {name} did not answer in time.", code="peer_timeout") from exc
            raise BadGateway(f"Node {name} is unreachable.", code="peer_unreachable") from exc
        except (NewConnectionError, HTTPError, OSError) as exc:
            raise BadGateway(f"Node {name} is unreachable.", code="peer_unreachable") from exc

    def get_json(self, name: str, url_path: str) -> dict:
        """GET a JSON document from peer `name`; a non-2xx answer becomes an ApiError with its status."""
        response = self.request(name, "GET", url_path)
        try:
            data = response.read()
        except (HTTPError, OSError) as exc:
            raise BadGateway(f"Node {name} broke off its answer.", code="peer_broken") from exc
        finally:
            response.release_conn()
        try:
            document = json.loads(data)
        except ValueError:
            raise BadGateway(f"Node {name} sent something that is not JSON.", code="peer_bad_answer") from None
        if response.status >= 400:
            raise ApiError(document.get("message", f"Node {name} answered {response.status}."),
                           status=response.status, code=document.get("error", "peer_error"))
        return document


def _todo(*args, **kwargs):
    raise ApiError("Not implemented yet.", status=501, code="not_implemented")


api_nodes = peer_file = peer_list = _todo
