from setuptools import find_packages, setup

setup(
    name="wsgi_stream",
    version="0.1.0",
    description="A small pure-WSGI streaming file server for clusters of machines",
    packages=find_packages(include=["wsgi_stream", "wsgi_stream.*"]),
    package_data={"wsgi_stream": ["web/*"]},
    python_requires=">=3.11",
    entry_points={"console_scripts": ["wsgi-stream = wsgi_stream.cli:main"]},
    install_requires=[
        "werkzeug>=3.0,<4",
        "urllib3>=2.0,<3",
        "waitress>=3.0,<4",
    ],
    extras_require={
        # Everything the tests import or start as a program (uwsgi, gunicorn); Chromium and the
        # other Debian tools come from .ci/run.
        "test": [
            "pytest>=8",
            "webtest>=3.0",
            "playwright>=1.40",
            "gunicorn>=21",
            "uwsgi>=2.0.22",
            "trustme>=1.1",
            "stream-unzip>=0.0.90",  # stream_unzip: a streaming reader in the ZIP reader matrix
            "redbot>=1.0",  # checks the caching headers (tests/integration/test_caching.py)
        ],
        # The benchmarks' naive reference app builds its ZIP with zipstream-new (bench/naive_app.py).
        "bench": ["zipstream-new>=1.1.8,<2"],
        # ISA-L's CRC-32, about 9x zlib's: faster cluster ZIPs, used when installed.
        "fast": ["isal>=1.0"],
    },
)
