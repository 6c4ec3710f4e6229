"""OpenTelemetry traces: one span per request, a child span per stage, figures as attributes.

Spans go to an OTLP/HTTP collector only when an endpoint is configured (ServerConfig.otlp_endpoint:
--otlp-endpoint or the standard OTEL_EXPORTER_OTLP_ENDPOINT); otherwise the API's no-op tracer
makes them free. Tests install their own provider with an in-memory exporter.
"""
from __future__ import annotations

from opentelemetry import trace

TRACER_NAME = "cosyvoice"


def setup_tracing(endpoint: str | None, service_name: str = "cosyvoice-studio") -> bool:
    """Install an exporting tracer provider when an OTLP endpoint (the collector's base URL) is given;
    True if one was."""
    if not endpoint:
        return False
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": service_name})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{endpoint.rstrip('/')}/v1/traces")))
    trace.set_tracer_provider(provider)
    return True


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER_NAME)
