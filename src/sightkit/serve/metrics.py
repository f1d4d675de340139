"""The server's Prometheus metrics: requests, latency, batch sizes, queue depth.

prometheus_client (the Prometheus project's own Python client) does the counting and the
text exposition format. Each app gets its own :class:`~prometheus_client.CollectorRegistry`,
so that two apps in one process (tests, a restart) never share counts.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

#: Latency buckets in seconds: a few ms (a cached answer) to 10 s (a large batch on a CPU).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Batch-size buckets: powers of two up to the largest sensible max_batch.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServeMetrics:
    """The metrics of one app, all prefixed ``sightkit_``.

    - ``sightkit_requests_total{endpoint, status}``: answered requests by HTTP status;
    - ``sightkit_request_seconds{endpoint}``: wall time from request to answer (histogram);
    - ``sightkit_batch_size{model}``: items per forward pass (histogram);
    - ``sightkit_inference_seconds{model}``: time of one forward pass with pre/post-processing
      of the batch (histogram);
    - ``sightkit_queue_depth{model}``: items waiting for a batch (gauge, read at scrape time).
    """

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "sightkit_requests", "HTTP requests answered", ["endpoint", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "sightkit_request_seconds",
            "time from request to answer",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "sightkit_batch_size", "items per forward pass", ["model"], buckets=BATCH_BUCKETS, registry=self.registry
        )
        self.inference = Histogram(
            "sightkit_inference_seconds",
            "time of one batched forward pass",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge("sightkit_queue_depth", "items waiting for a batch", ["model"], registry=self.registry)

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint=endpoint, status=str(status)).inc()
        self.latency.labels(endpoint=endpoint).observe(seconds)

    def observe_batch(self, model: str, size: int, seconds: float) -> None:
        self.batch_size.labels(model=model).observe(size)
        self.inference.labels(model=model).observe(seconds)

    def track_queue(self, model: str, queued: Callable[[], int]) -> None:
        """Report ``queued()`` as ``sightkit_queue_depth{model}`` at every scrape."""
        self.queue_depth.labels(model=model).set_function(queued)

    def render(self) -> bytes:
        """All metrics in the Prometheus text exposition format."""
        return generate_latest(self.registry)
