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

# sendfile is on by default (used for wsgi.file_wrapper responses); do not pass --no-sendfile.
# No max_requests: a worker recycle would cut or delay long downloads.
max_requests = 0

# Nodes need no runtime control socket; several gunicorn processes on one host would otherwise
# share $HOME/.gunicorn/gunicorn.ctl (gunicorn >= 25).
control_socket_disable = True
