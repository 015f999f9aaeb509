"""Mappers between events and payloads (json, text, passThrough, map.payload templates)."""
