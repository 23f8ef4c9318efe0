"""The worker's part of a job's trace.

Powertools Tracer (and the X-Ray SDK under it) only runs inside Lambda, and the X-Ray SDK and
daemon are in maintenance; on Fargate the worker uses OpenTelemetry with the X-Ray ID
generator and propagator, exporting OTLP to the ADOT collector sidecar declared in
template.yaml, which sends the spans to X-Ray. The trace continues the one the master
stored in the job (its X-Ray header) and is handed on in every compute invocation.

Without ``OTEL_EXPORTER_OTLP_ENDPOINT`` (locally, in tests) nothing is exported and the
header is still carried, with a fresh parent id per hop.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Protocol

from offload.observability import child_header

log = logging.getLogger(__name__)

_HEADER = "X-Amzn-Trace-Id"


class SpanFactory(Protocol):
    def span(self, name: str, parent: str, attributes: dict[str, str | int]) -> AbstractContextManager[str]:
        """A span under the trace of ``parent`` (an X-Ray header); yields the header to hand on."""
        ...


class HeaderOnly:
    """No exporter: pass the trace on with a new parent id, record nothing."""

    @contextmanager
    def span(self, name: str, parent: str, attributes: dict[str, str | int]) -> Iterator[str]:
        yield child_header(parent)


class OpenTelemetrySpans:
    """Spans exported through OpenTelemetry, in X-Ray's id format."""

    def __init__(self, tracer_provider: Any) -> None:
        from opentelemetry.propagators.aws import AwsXRayPropagator

        self._tracer = tracer_provider.get_tracer("offload.worker")
        self._propagator = AwsXRayPropagator()

    @contextmanager
    def span(self, name: str, parent: str, attributes: dict[str, str | int]) -> Iterator[str]:
        from opentelemetry.trace import SpanKind

        context = self._propagator.extract({_HEADER: parent}) if parent else None
        with self._tracer.start_as_current_span(name, context=context, kind=SpanKind.PRODUCER) as span:
            for key, value in attributes.items():
                span.set_attribute(key, value)
            carrier: dict[str, str] = {}
            self._propagator.inject(carrier)
            yield carrier.get(_HEADER, child_header(parent))


def span_factory(service: str = "offload-worker") -> SpanFactory:
    """OpenTelemetry when an OTLP endpoint is configured (the ADOT sidecar), else header-only."""
    if not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return HeaderOnly()
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.extension.aws.trace import AwsXRayIdGenerator
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning("OTEL_EXPORTER_OTLP_ENDPOINT is set but OpenTelemetry is not installed; not tracing")
        return HeaderOnly()
    provider = TracerProvider(id_generator=AwsXRayIdGenerator(), resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return OpenTelemetrySpans(provider)
