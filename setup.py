"""sse-daemon packaging.

The twistd plugin lives in ``twisted/plugins/`` with no ``__init__.py``;
``twisted.plugins`` is listed by hand so a normal install puts the plugin
file next to Twisted's own (see Twisted's plugin howto).
"""

from setuptools import find_namespace_packages, setup

setup(
    name="sse-daemon",
    version="0.1.0",
    description="A Twisted daemon that receives and publishes events over Server-Sent Events",
    python_requires=">=3.11",
    packages=find_namespace_packages(include=["sse_daemon", "sse_daemon.*"], exclude=["*.__pycache__"]) + ["twisted.plugins"],
    install_requires=[
        "twisted[http2]>=24.7",  # reactor, twisted.web sinks, twistd, twisted.logger; [http2]: h2 and priority, HTTP/2 on TLS ports (docs/http2.md)
        "treq>=23.11",  # streaming HTTP client for SSE sources
        "pyyaml>=6.0",  # connector definitions
        "lark>=1.2",  # the statement language (CREATE SOURCE/SINK/STREAM, INSERT INTO, WHERE): sse_daemon/config/statements.lark
        "prometheus-client>=0.20",  # /metrics on the admin listener: the official exposition format and parser
        "pyjwt>=2.8",  # auth.type bearer: JWTs verified against a key (exp, aud, stream claim)
        "bcrypt>=4.0",  # auth.type basic: bcrypt hashes in auth.users.file
        "argon2-cffi>=23.1",  # auth.type basic: Argon2 hashes in auth.users.file
        "pyopenssl>=24.0",  # TLS listeners (server.tls.cert/key) and https sources via Twisted
        "service-identity>=24.1",  # Twisted's hostname verification of https sources' certificates
        "txredisapi>=1.6",  # bus type redis (sse_daemon/bus/redis.py): a Twisted-native Redis client; imported only then
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-twisted>=1.14",  # runs the real reactor under pytest
            "pytest-timeout>=2.3",  # no test may hang CI
            "hypothesis>=6.100",  # property tests of the parser
            "httpx[http2]>=0.27",  # [http2]: a real HTTP/2 client for the TLS ports' ALPN (tests/test_http2.py)
            "httpx-sse>=0.4",  # an SSE client nobody here wrote
            "sse-starlette>=2.1",  # an SSE server nobody here wrote
            "uvicorn>=0.30",
            "selenium>=4.20",  # drives Debian's chromium (via /usr/bin/chromedriver) to test the status page
            # `make lint` (pyproject.toml holds their configuration)
            "ruff>=0.6",  # pyflakes, pycodestyle errors, bugbear
            "mypy>=1.11",  # the annotations, checked
            "mypy-zope>=1.0",  # implementer() and zope Interfaces as mypy types
            "import-linter>=2.0",  # the layers and the pure modules, as contracts
            "types-PyYAML",
        ],
    },
    entry_points={"console_scripts": ["sse-daemon=sse_daemon.cli:main"]},  # `sse-daemon probe URL`
    package_data={
        "sse_daemon.ops.static": ["*"],  # the admin status page (plain HTML and JS, no build step)
        "sse_daemon.config": ["statements.lark", "siddhi.lark"],  # the grammars of the statement language and of Siddhi apps, read at run time
    },
    include_package_data=True,
)
