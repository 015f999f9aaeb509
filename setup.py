"""sse-daemon packaging.

The twistd plugin lives in ``twisted/plugins/`` with no ``__init__.py``;
``twisted.plugins`` is listed by hand so a normal install puts the plugin
file next to Twisted's own (see Twisted's plugin howto).
"""

from setuptools import find_packages, setup

setup(
    name="sse-daemon",
    version="0.1.0",
    description="A Twisted daemon that receives and publishes events over Server-Sent Events",
    python_requires=">=3.11",
    packages=find_packages(exclude=["tests", "tests.*", "bench", "bench.*"]) + ["twisted.plugins"],
    install_requires=[
        "twisted>=24.7",  # reactor, twisted.web sinks, twistd, twisted.logger
        "treq>=23.11",  # streaming HTTP client for SSE sources
        "pyyaml>=6.0",  # connector definitions
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-twisted>=1.14",  # runs the real reactor under pytest
            "pytest-timeout>=2.3",  # no test may hang CI
            "hypothesis>=6.100",  # property tests of the parser
            "httpx>=0.27",
            "httpx-sse>=0.4",  # an SSE client nobody here wrote
            "sse-starlette>=2.1",  # an SSE server nobody here wrote
            "uvicorn>=0.30",
        ],
    },
    include_package_data=True,
)
