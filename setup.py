from setuptools import find_packages, setup

setup(
    name="wsgi_stream",
    version="0.1.0",
    description="A small pure-WSGI streaming file server for clusters of machines",
    packages=find_packages(include=["wsgi_stream", "wsgi_stream.*"]),
    package_data={"wsgi_stream": ["web/*"]},
    python_requires=">=3.11",
    install_requires=[
        "werkzeug>=3.0,<4",
        "urllib3>=2.0,<3",
        "zipstream-new>=1.1.8,<2",
        "waitress>=3.0,<4",
    ],
    extras_require={
        "test": ["pytest>=8", "webtest>=3.0"],
        # ISA-L's CRC-32, about 9x zlib's: faster cluster ZIPs, used when installed.
        "fast": ["isal>=1.0"],
    },
)
