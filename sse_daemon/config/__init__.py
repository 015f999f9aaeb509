"""Connector definitions: option tables, the YAML and statement front ends, validation, the generated reference."""
