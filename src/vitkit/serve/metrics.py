"""The service's Prometheus metrics, in a registry of its own (several services in one process,
as in tests, never share counters)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.images = Counter("vitkit_images", "Images answered or refused, by model, version, "
                              "arm and outcome (ok, error, overloaded)",
                              ["model", "version", "arm", "outcome"], registry=r)
        self.http_requests = Counter("vitkit_http_requests", "HTTP requests by method, route "
                                     "and status (4xx and 5xx included)",
                                     ["method", "route", "status"], registry=r)
        self.http_latency = Histogram("vitkit_http_request_seconds", "Time from request to "
                                      "response, by route", ["route"],
                                      buckets=LATENCY_BUCKETS, registry=r)
        self.log_backlog = Gauge("vitkit_log_backlog", "Answered images not yet written to the "
                                 "request-log database (memory and spill file)", registry=r)
        self.log_healthy = Gauge("vitkit_log_healthy", "1 while the request-log database "
                                 "takes writes", registry=r)
        self.latency = Histogram("vitkit_request_latency_seconds", "Time from decoded image "
                                 "to answer", ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("vitkit_batch_size", "Images per model call", ["model"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge("vitkit_queue_depth", "Images waiting for a model call",
                                 ["model"], registry=r)
        self.unknown = Counter("vitkit_unknown", "Images answered 'unknown' (out of "
                               "distribution)", ["model"], registry=r)
        self.fallbacks = Counter("vitkit_fallbacks", "Answers given by a fallback model",
                                 ["failed", "answered"], registry=r)
        self.ready = Gauge("vitkit_model_ready", "1 when the model is loaded and warmed; 0 while "
                           "loading or after a failed load", ["model"], registry=r)
        self.drift = Gauge("vitkit_drift", "1 when the last drift check of the live model's "
                           "recent inputs rejected 'like the training data'", ["model"],
                           registry=r)
        self.drift_p_value = Gauge("vitkit_drift_feature_p_value", "p-value of the last "
                                   "feature-distribution test", ["model"], registry=r)
