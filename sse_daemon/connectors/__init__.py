"""Sources and sinks: the SSE sink and its history, the SSE source, HTTP ingest, the log sink."""
