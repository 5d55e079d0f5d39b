"""`application` for any WSGI server, configured by WSGI_STREAM_CONFIG and WSGI_STREAM_NODE."""

import logging
import os
import sys

from .app import make_app
from .config import ConfigError
from .memory import limit_malloc_arenas


def _from_environment():
    config = os.environ.get("WSGI_STREAM_CONFIG")
    node = os.environ.get("WSGI_STREAM_NODE")
    if not config or not node:
        sys.exit("wsgi_stream: set WSGI_STREAM_CONFIG (path of the TOML file) and WSGI_STREAM_NODE (node name)")
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return make_app(config, node)
    except ConfigError as exc:
        # One clear line. uwsgi (need-app, app loaded before fork) and gunicorn (preload_app) then
        # stop; with lazy apps / no preload they would respawn the worker for ever: see deploy/.
        sys.exit(f"wsgi_stream: {exc}")


limit_malloc_arenas()  # uwsgi and gunicorn load the app before their threads allocate (deploy/)
application = _from_environment()
