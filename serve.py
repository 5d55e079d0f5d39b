#!/usr/bin/env python3
"""Run a wsgi_stream node under waitress (the same as the `wsgi-stream` command)."""

import sys

from wsgi_stream.cli import main

if __name__ == "__main__":
    sys.exit(main())
