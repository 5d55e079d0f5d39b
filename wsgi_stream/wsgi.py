"""`application` for any WSGI server, configured by WSGI_STREAM_CONFIG and WSGI_STREAM_NODE."""

import logging
import os
import sys

from .app import make_app
from .config import ConfigError


def _from_environment():
    config = os.environ.get("WSGI_STREAM_CONFIG")
    node = os.environ.get("WSGI_STREAM_NODE")
    if not config or not node:
        message = "set WSGI_STREAM_CONFIG (path of the TOML file) and WSGI_STREAM_NODE (node name)"
        print(f"wsgi_stream: {message}", file=sys.stderr, flush=True)
        raise ConfigError(message)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return make_app(config, node)
    except ConfigError as exc:
        # One clear line, then an exception (not SystemExit): gunicorn and uwsgi treat a failed
        # import as a boot error and stop, where they would respawn an exiting worker for ever.
        print(f"wsgi_stream: {exc}", file=sys.stderr, flush=True)
        raise


application = _from_environment()
