"""wsgi_stream: a small pure-WSGI streaming file server for clusters of machines."""

from .app import App, make_app
from .cluster import ClusterArchive
from .config import Config, ConfigError, LocalNode, Node, load_config, local_node
from .peers import PeerClient
from .replies import wsgi_error

__all__ = ["App", "ClusterArchive", "Config", "ConfigError", "LocalNode", "Node", "PeerClient", "load_config",
           "local_node", "make_app", "wsgi_error"]
__version__ = "0.1.0"
