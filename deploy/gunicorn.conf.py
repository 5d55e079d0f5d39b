"""wsgi_stream under gunicorn — settings for long streaming downloads and uploads.

See README.md, section Servers, for why each one is here. Start one node with:

    WSGI_STREAM_CONFIG=/etc/wsgi_stream/cluster.toml WSGI_STREAM_NODE=a \
        gunicorn -c deploy/gunicorn.conf.py -b 0.0.0.0:8001

Command-line options override this file (e.g. --threads 32).
"""

wsgi_app = "wsgi_stream.wsgi:application"
# Load the app (and check the cluster config) in the master: a bad config stops gunicorn with its
# one-line message instead of a worker that exits and is respawned forever.
preload_app = True

# One process, many threads: every download that is not a whole local file (a forwarded file, a
# cluster ZIP, a range, an upload) holds one thread for as long as it runs. Whole local files go
# out with sendfile() but still from the request's thread.
worker_class = "gthread"
workers = 1
threads = 64
worker_connections = 1000        # open connections per worker, including idle keep-alive ones

# `timeout` is the worker heartbeat, not a request deadline: a gthread worker's main loop keeps
# beating while its threads stream for hours. graceful_timeout is how long a SIGTERM waits for
# running downloads before cutting them.
timeout = 30
graceful_timeout = 30
keepalive = 15                   # idle seconds on a keep-alive connection (peers reuse theirs)

# Long percent-encoded UTF-8 paths: 0 lifts the 4094-byte request-line limit (gunicorn still caps
# it at 1 MiB); a header line may be up to 8190 bytes.
limit_request_line = 0
limit_request_field_size = 8190
limit_request_fields = 50       # browsers and peers send about 15 (gunicorn's default: 100)

# Hostile clients (README.md, "Exposure"): the app decides on a request's head before it reads a
# body byte (token, route, uploads on, declared size) and gunicorn hands it the body unread, then
# reads and discards what the app left unread to keep the connection (no spool, no disk). gunicorn
# refuses ambiguous framing itself (Content-Length with Transfer-Encoding, duplicates, obs-fold).
# A connection that sends nothing waits in the poller, not a thread, and is closed after `keepalive`
# seconds. What gunicorn cannot do: a deadline for the request head. Once a head's first byte is
# in, a thread reads it on a blocking socket until it is complete, so as many trickling clients as
# threads lock the node out. Put a proxy with a header timeout in front of nodes untrusted clients reach.

# sendfile is on by default (used for wsgi.file_wrapper responses); do not pass --no-sendfile.
# No max_requests: a worker recycle would cut or delay long downloads.
max_requests = 0

# Nodes need no runtime control socket; several gunicorn processes on one host would otherwise
# share $HOME/.gunicorn/gunicorn.ctl (gunicorn >= 25).
control_socket_disable = True
