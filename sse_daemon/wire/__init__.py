"""The wire formats, sans-I/O: the text/event-stream parser and encoder, back-to-back JSON documents."""
