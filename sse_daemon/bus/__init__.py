"""The event bus: embedded in memory, Redis streams, and a Redis lease."""
