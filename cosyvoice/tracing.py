"""OpenTelemetry traces: one span per request, a child span per stage, figures as attributes.

Spans go to an OTLP collector only when OTEL_EXPORTER_OTLP_ENDPOINT is set (the standard
variable; OTEL_SERVICE_NAME and the other OTEL_* settings apply as usual); otherwise the API's
no-op tracer makes them free. Tests install their own provider with an in-memory exporter.
"""
from __future__ import annotations

import os

from opentelemetry import trace

TRACER_NAME = "cosyvoice"


def setup_tracing(service_name: str = "cosyvoice-studio") -> bool:
    """Install an exporting tracer provider when an OTLP endpoint is configured; True if one was."""
    if not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return False
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service_name)})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return True


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER_NAME)
