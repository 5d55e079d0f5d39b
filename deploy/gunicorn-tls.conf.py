"""wsgi_stream under gunicorn serving https itself — deploy/gunicorn.conf.py plus TLS.

For nodes whose traffic crosses networks (see docs/servers.md, section TLS). Start one node with:

    WSGI_STREAM_CONFIG=/etc/wsgi_stream/cluster.toml WSGI_STREAM_NODE=a \
        gunicorn -c deploy/gunicorn-tls.conf.py -b 0.0.0.0:8443

and `url = "https://<this host>:8443"` for it in the cluster config. Mutual TLS (clients, peers
included, must show a certificate signed by the cluster's CA): add
`--ca-certs /etc/wsgi_stream/ca.pem --cert-reqs 2`. Other paths: `--certfile F --keyfile F`.
"""

import os
import runpy

# Every setting of the plain file applies unchanged.
globals().update({key: value for key, value in
                  runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "gunicorn.conf.py")).items()
                  if not key.startswith("__")})

# This node's certificate (with any intermediate CAs after it) and its unencrypted key. Issue it
# for the host name or IP address of the node's url: peers check it against that. A file that is
# missing or unreadable stops gunicorn at start.
certfile = "/etc/wsgi_stream/node.pem"
keyfile = "/etc/wsgi_stream/node.key"

# Client certificates: not asked for by default (browsers and curl users have none). With
# ca_certs and cert_reqs = 2 (ssl.CERT_REQUIRED) a client without a certificate signed by that
# CA is refused during the handshake; peers show the one the cluster config's client_cert names.
ca_certs = None
cert_reqs = 0

# The handshake runs in the request's thread, on its first read; gunicorn's sendfile is off under
# TLS (whole files are encrypted and written by that thread).
