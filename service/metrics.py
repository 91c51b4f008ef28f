"""Prometheus metrics, one registry per app so that several apps (tests) never collide."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
#: ood_score is the guard's distance over its threshold: 1.0 is the threshold.
_OOD_BUCKETS = (0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "featcache_http_requests", "HTTP requests by route, method and status",
            ["route", "method", "status"], registry=r,
        )
        self.latency = Histogram(
            "featcache_http_request_duration_seconds", "HTTP request latency by route",
            ["route", "method"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.forward_batch_size = Histogram(
            "featcache_forward_batch_size", "Images per forward pass of the conv base",
            buckets=_SIZE_BUCKETS, registry=r,
        )
        self.forward_seconds = Histogram(
            "featcache_forward_duration_seconds", "Duration of one forward pass of the conv base",
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.request_files = Histogram(
            "featcache_batch_request_files", "Files per /predict/batch request",
            buckets=_SIZE_BUCKETS, registry=r,
        )
        self.predictions = Counter(
            "featcache_predictions", "Images answered, by head and outcome (ok or error code)",
            ["head", "outcome"], registry=r,
        )
        self.cache_hits = Counter(
            "featcache_feature_cache_hits", "Uploads whose features came from the feature cache",
            registry=r,
        )
        self.cache_misses = Counter(
            "featcache_feature_cache_misses", "Uploads that needed a forward pass", registry=r,
        )
        self.cache_evictions = Counter(
            "featcache_feature_cache_evictions", "Features evicted from the full feature cache",
            registry=r,
        )
        self.cache_entries = Gauge(
            "featcache_feature_cache_entries", "Images held in the feature cache", registry=r,
        )
        self.cache_bytes = Gauge(
            "featcache_feature_cache_bytes", "Bytes of features held in the feature cache",
            registry=r,
        )
        self.images_waiting = Gauge(
            "featcache_images_waiting",
            "Images admitted and not yet through the conv base (decoding, queued or computing)",
            registry=r,
        )
        self.ood_score = Histogram(
            "featcache_ood_score", "Out-of-distribution score of each image checked by its "
            "head's guard (1.0 is the threshold)", ["head"], buckets=_OOD_BUCKETS, registry=r,
        )
        self.ood_images = Counter(
            "featcache_ood_images", "Images checked by the guard, by head and whether they were "
            "out of distribution", ["head", "out_of_distribution"], registry=r,
        )
        self.ood_rate = Gauge(
            "featcache_ood_rate", "Share of the images checked since start that were out of "
            "distribution, by head", ["head"], registry=r,
        )
        self.ready = Gauge("featcache_ready", "1 when the model is loaded and warmed", registry=r)
        self._ood_counts: dict[str, list[int]] = {}

    def observe_ood(self, head: str, score: float, flagged: bool) -> None:
        """Record one image's guard score (event loop only, like every metric update)."""
        self.ood_score.labels(head).observe(score)
        self.ood_images.labels(head, "true" if flagged else "false").inc()
        counts = self._ood_counts.setdefault(head, [0, 0])
        counts[0] += 1
        counts[1] += int(flagged)
        self.ood_rate.labels(head).set(counts[1] / counts[0])
