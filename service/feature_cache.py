"""A bounded in-memory LRU of conv-base features, keyed by the SHA-256 of the uploaded bytes."""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np
from numpy.typing import NDArray

from service.metrics import Metrics


class FeatureLRU:
    """Least-recently-used map from content hash to features; `capacity=0` disables it.

    Features are stored read-only so a caller can never corrupt a cached entry.
    """

    def __init__(self, capacity: int, metrics: Metrics) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0; got {capacity}")
        self.capacity = capacity
        self._metrics = metrics
        self._items: OrderedDict[str, NDArray[np.float32]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = self.evictions = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> NDArray[np.float32] | None:
        with self._lock:
            value = self._items.get(key)
            if value is None:
                self.misses += 1
                self._metrics.cache_misses.inc()
                return None
            self._items.move_to_end(key)
            self.hits += 1
            self._metrics.cache_hits.inc()
            return value

    def put(self, key: str, value: NDArray[np.float32]) -> None:
        if self.capacity == 0:
            return
        stored = np.array(value, dtype=np.float32, copy=True)
        stored.setflags(write=False)
        with self._lock:
            self._items[key] = stored
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
                self.evictions += 1
                self._metrics.cache_evictions.inc()
            self._metrics.cache_entries.set(len(self._items))
