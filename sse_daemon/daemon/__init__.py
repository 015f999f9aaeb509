"""The daemon service: building it, reloading it, draining it."""
