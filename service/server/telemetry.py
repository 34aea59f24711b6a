"""Prometheus metrics, one registry per app so tests can build several apps in one process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Telemetry:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("loss_service_requests", "HTTP requests", ["endpoint", "status"], registry=r)
        self.batch_size = Histogram("loss_service_batch_size", "items per device batch", ["backbone"], buckets=BATCH_BUCKETS, registry=r)
        self.queue_wait = Histogram(
            "loss_service_queue_wait_seconds", "time an item waited for its batch", buckets=SECONDS_BUCKETS, registry=r
        )
        self.compute = Histogram("loss_service_compute_seconds", "device time per batch", ["backbone"], buckets=SECONDS_BUCKETS, registry=r)
        self.queue_depth = Gauge("loss_service_queue_depth", "items waiting for a batch", registry=r)
        self.rejected = Counter("loss_service_rejected", "requests refused before scoring", ["reason"], registry=r)
        self.in_flight = Gauge("loss_service_requests_in_flight", "/v1 requests received and not yet answered", registry=r)
