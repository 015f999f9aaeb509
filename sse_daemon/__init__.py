"""sse-daemon: a Twisted daemon that receives and publishes events over Server-Sent Events."""

__version__ = "0.1.0"
