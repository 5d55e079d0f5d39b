"""wsgi_stream: a small pure-WSGI streaming file server for clusters of machines."""

from .app import App, make_app
from .cluster import ClusterArchive
from .config import Config, ConfigError, Node, load_config

__all__ = ["App", "ClusterArchive", "Config", "ConfigError", "Node", "load_config", "make_app"]
__version__ = "0.1.0"
