"""Running it: logging, metrics, tracing, model download."""
