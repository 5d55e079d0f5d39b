"""Every endpoint of the HTTP API: its werkzeug Rule beside a thin handler.

A handler takes the node's `Services` and the request (plus the route's values), decides once
whether the request is for this node or a peer, and calls a capability module; capability
modules never call back up. Adding an endpoint means adding one `@route` function here.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable

from werkzeug.http import parse_etags
from werkzeug.routing import Map, PathConverter, Rule
from werkzeug.wrappers import Request

from . import batch, fanout, listing, local, stages, uploads
from .cluster import ClusterArchive, cluster_listing
from .config import Config, LocalNode
from .crc import CrcCache
from .errors import NotFound, PayloadTooLarge
from .forward import RELAY, forward, forward_upload
from .params import compress, flag, nodes
from .paths import clean_relpath, upload_relpath
from .peers import HEALTH_TIMEOUT, PeerClient, TooSlow, quote_path
from .replies import Reply, json_reply
from .selection import parse_selection, pick_entries
from .uploads import UploadLimits

_STATIC_TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
                 ".js": "text/javascript; charset=utf-8", ".png": "image/png", ".svg": "image/svg+xml"}


@dataclass(frozen=True)
class Services:
    """What the endpoints work with: this node, its peers, the cluster config and upload limits."""

    config: Config
    local: LocalNode
    peers: PeerClient
    limits: UploadLimits
    crcs: CrcCache
    stages: stages.StageArea
    fanouts: fanout.FanoutRegistry


Handler = Callable[..., Reply]
RULES: list[Rule] = []
HANDLERS: dict[str, Handler] = {}
# Endpoints answered without the cluster token.
PUBLIC: set[str] = set()
# Endpoints other than PUTs that read a request body -> its largest size; any other body is refused.
TAKES_BODY: dict[str, int] = {}


def route(*paths: str, methods: tuple[str, ...] = ("GET",), public: bool = False,
          defaults: dict | None = None, body: int = 0):
    """Register the decorated handler for `paths` (the first one gets `defaults`)."""
    def register(handler: Handler) -> Handler:
        name = handler.__name__
        for i, path in enumerate(paths):
            RULES.append(Rule(path, endpoint=name, methods=list(methods), defaults=defaults if i == 0 else None))
        HANDLERS[name] = handler
        if public:
            PUBLIC.add(name)
        if body:
            TAKES_BODY[name] = body
        return handler
    return register


# -- this node ------------------------------------------------------------------------------------

@route("/healthz", public=True)
def healthz(s: Services, request: Request) -> Reply:
    """GET /healthz: this node is up (no token needed)."""
    return json_reply({"node": s.local.name, "status": "ok"})


@route("/files/<path:path>", methods=("GET", "HEAD", "PUT"))
def file(s: Services, request: Request, path: str) -> Reply:
    """GET/HEAD/PUT /files/{path}: one of this node's files, or an upload to this node."""
    if request.method == "PUT":
        uploads.check_enabled(s.limits, request.environ)
        rel = upload_relpath(path)
        return uploads.put_file(s.local, s.limits, request, rel, "/files/" + quote_path(rel))
    return _file_here(s, request, path)


@route("/list/", "/list/<path:path>", defaults={"path": ""})
def list_(s: Services, request: Request, path: str) -> Reply:
    """GET /list/{path}: a folder of this node (`?recursive=1`: every file below it)."""
    document = listing.listing(s.local.name, s.local.root, path, flag(request.args, "recursive"), s.crcs)
    document["entries"] = pick_entries(document["entries"], document["path"], parse_selection(request.args))
    return json_reply(document)


@route("/")
def page(s: Services, request: Request) -> Reply:
    """GET /: the web page."""
    return static(s, request, "index.html")


@route("/static/<name>")
def static(s: Services, request: Request, name: str) -> Reply:
    """GET /static/{name}: the web page's assets."""
    asset = resources.files("wsgi_stream") / "web" / name
    suffix = Path(name).suffix
    if suffix not in _STATIC_TYPES or not asset.is_file():
        raise NotFound("No such page.")
    data = asset.read_bytes()
    validators = [("ETag", f'"{hashlib.sha256(data).hexdigest()[:32]}"'), ("Cache-Control", "no-cache")]
    if parse_etags(request.headers.get("If-None-Match")).contains_weak(validators[0][1][1:-1]):
        return Reply(304, validators)
    return Reply(200, [("Content-Type", _STATIC_TYPES[suffix]), ("Content-Length", str(len(data))),
                       *validators], [data])


@route("/batch", methods=("POST",), body=batch.MAX_REQUEST_BYTES)
def batch_files(s: Services, request: Request) -> Reply:
    """POST /batch: many of this node's files back to back, for a gateway building a cluster ZIP."""
    if (request.content_length or 0) > batch.MAX_REQUEST_BYTES:
        raise PayloadTooLarge(f"A batch request is at most {batch.MAX_REQUEST_BYTES} bytes.")
    wanted = batch.parse_request(request.get_data(cache=False))
    return Reply(200, [("Content-Type", "application/octet-stream"), ("Cache-Control", "no-store")],
                 batch.batch_body(s.local, s.crcs, wanted))


# -- one node, this one or a peer -------------------------------------------------------------------

@route("/nodes/<node>/files/<path:path>", methods=("GET", "HEAD", "PUT"))
def node_file(s: Services, request: Request, node: str, path: str) -> Reply:
    """GET/HEAD/PUT /nodes/{node}/files/{path}: a file of node `node`, streamed through this one."""
    s.peers.node(node)
    if node == s.local.name:
        return file(s, request, path)
    if request.method == "PUT":
        uploads.check_enabled(s.limits, request.environ)
        rel = upload_relpath(path)
        return forward_upload(s.peers, s.limits, request, node, "/files/" + quote_path(rel),
                              f"/nodes/{quote_path(node)}/files/{quote_path(rel)}")
    rel = clean_relpath(path)
    if not rel:
        raise NotFound("No such file.")
    return forward(s.peers, node, request.method, "/files/" + quote_path(rel), request.headers,
                   s.local.chunk_size, request.environ.get(RELAY))


@route("/nodes/<node>/list/", "/nodes/<node>/list/<path:path>", defaults={"path": ""})
def node_list(s: Services, request: Request, node: str, path: str) -> Reply:
    """GET /nodes/{node}/list/{path}: a folder of node `node`."""
    s.peers.node(node)
    if node == s.local.name:
        return list_(s, request, path)
    query = ("&recursive=1" if flag(request.args, "recursive") else "") + parse_selection(request.args).query()
    url_path = "/list/" + quote_path(clean_relpath(path)) + (f"?{query[1:]}" if query else "")
    return forward(s.peers, node, "GET", url_path, request.headers, s.local.chunk_size)


# -- every node -------------------------------------------------------------------------------------

@route("/api/nodes")
def api_nodes(s: Services, request: Request) -> Reply:
    """GET /api/nodes: this node, whether uploads are on, and every node's health, in config order."""
    names = s.peers.names
    health = [("down", str(h)) if isinstance(h, TooSlow) else h
              for h in s.peers.each(s.peers.health, names, budget=2 * HEALTH_TIMEOUT)]
    nodes = [{"name": name, "url": s.config.nodes[name].url, "status": status, "message": message}
             for name, (status, message) in zip(names, health)]
    return json_reply({"self": s.local.name, "uploads": s.config.uploads, "fanout": s.config.uploads, "nodes": nodes})


@route("/cluster/files/", "/cluster/files/<path:path>", methods=("GET", "HEAD"), defaults={"path": ""})
def cluster_files(s: Services, request: Request, path: str) -> Reply:
    """GET/HEAD /cluster/files/{path}: one ZIP of `path` from every selected node."""
    archive = ClusterArchive(s.local, s.peers, path, nodes(request.args), deflate=compress(request.args),
                             strict=flag(request.args, "strict"), selection=parse_selection(request.args),
                             crcs=s.crcs)
    return Reply(*archive.answer(request.method, request.headers))


@route("/cluster/list/", "/cluster/list/<path:path>", defaults={"path": ""})
def cluster_list(s: Services, request: Request, path: str) -> Reply:
    """GET /cluster/list/{path}: the folder's listings of every selected node, merged by name."""
    return json_reply(cluster_listing(s.local, s.peers, path, nodes(request.args), parse_selection(request.args)))


# -- fan-out: one upload to every node, staged then committed (issue 15) ------------------------------

@route("/cluster/files/", "/cluster/files/<path:path>", methods=("PUT",), defaults={"path": ""})
def cluster_put(s: Services, request: Request, path: str) -> Reply:
    """PUT /cluster/files/{path}: the body once, to every selected node; one outcome line per node."""
    uploads.check_enabled(s.limits, request.environ)
    rel = upload_relpath(path) if path else ""
    return fanout.put_cluster_file(s.stages, s.peers, s.limits, s.fanouts, request, rel,
                                   nodes(request.args), fanout.mode_of(request.args), s.config.stage_expiry)


@route("/cluster/uploads/<upload_id>")
def cluster_upload(s: Services, request: Request, upload_id: str) -> Reply:
    """GET /cluster/uploads/{id}: the progress of a fan-out this node runs (for the web page)."""
    return json_reply(s.fanouts.get(upload_id).progress())


@route("/stages/<stage_id>", methods=("GET", "PUT", "DELETE"))
def stage(s: Services, request: Request, stage_id: str) -> Reply:
    """GET/PUT/DELETE /stages/{id}: node-to-node: a stage's state, receive it, abort it."""
    uploads.check_enabled(s.limits, request.environ)
    if request.method == "PUT":
        return json_reply(stages.put_stage(s.stages, s.limits, request, stage_id).public(s.local.name), 201)
    if request.method == "DELETE":
        s.stages.abort(stage_id)
        return Reply(204, [])
    return json_reply(s.stages.status(stage_id).public(s.local.name))


@route("/stages/<stage_id>/commit", methods=("POST",), body=stages.COMMIT_BODY_MAX)
def stage_commit(s: Services, request: Request, stage_id: str) -> Reply:
    """POST /stages/{id}/commit: node-to-node: put a stage in place if its size and sha-256 match."""
    uploads.check_enabled(s.limits, request.environ)
    size, sha256 = stages.commit_request(request.stream.read(stages.COMMIT_BODY_MAX))
    record = s.stages.commit(stage_id, size, sha256)
    return json_reply(record.public(s.local.name), headers=[("ETag", record.etag)])


# -- shared by the handlers above ---------------------------------------------------------------------

def _file_here(s: Services, request: Request, path: str) -> Reply:
    f, st, name = local.open_file(s.local.root, path)
    try:
        plan = local.plan_file_response(request.method, request.headers, name, st)
    except BaseException:
        f.close()
        raise
    body, wrapped = local.file_body(request.environ, f, plan, s.local.chunk_size)
    return Reply(plan.status, plan.headers, body, file=f if wrapped else None)


class AnyPathConverter(PathConverter):
    """werkzeug's `path`, but matching every character a name can hold, newlines included.

    (`%2F` and `%00` are refused by the app before any handler runs.)
    """

    regex = "(?s:[^/].*?)"


URL_MAP = Map(RULES, merge_slashes=False, strict_slashes=False, converters={"path": AnyPathConverter})
