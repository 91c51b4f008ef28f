"""A bounded in-memory LRU of conv-base features, keyed by the SHA-256 of the uploaded bytes.

Bounded by bytes, not entries: what one entry costs depends on the layer (block4_pool's maps are
5x block5_pool's) and on how many named arrays it holds (a dict of maps and pooled vectors, with
named features), so a count of entries bounds nothing. An entry's size is the sum of its
arrays' `nbytes`; the few hundred bytes of bookkeeping per entry are not counted.
"""

from __future__ import annotations

import logging
import threading
import types
from collections import OrderedDict
from collections.abc import Mapping
from typing import Generic, TypeVar, cast

import numpy as np
from numpy.typing import NDArray

from extractor.features import Features as NamedFeatures
from service.config import Settings
from service.metrics import Metrics

logger = logging.getLogger(__name__)

#: What an entry may hold: one array, or named arrays.
Features = NDArray[np.float32] | Mapping[str, NDArray[np.float32]]
V = TypeVar("V", bound=Features)


def entry_nbytes(value: Features) -> int:
    """Bytes of the arrays an entry holds."""
    if isinstance(value, Mapping):
        return sum(int(np.asarray(v).nbytes) for v in value.values())
    return int(value.nbytes)


def _read_only(array: NDArray[np.float32]) -> NDArray[np.float32]:
    stored = np.array(array, dtype=np.float32, copy=True)
    stored.setflags(write=False)
    return stored


class FeatureLRU(Generic[V]):
    """Least-recently-used map from content hash to features, at most `max_bytes` of arrays
    (and, if given, `max_entries` entries); 0 for either disables it.

    Entries are stored as read-only copies (named arrays in a read-only mapping) so a caller can
    never corrupt a cached entry. An entry larger than `max_bytes` is not kept.
    """

    def __init__(self, max_bytes: int, metrics: Metrics, max_entries: int | None = None) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0; got {max_bytes}")
        if max_entries is not None and max_entries < 0:
            raise ValueError(f"max_entries must be >= 0; got {max_entries}")
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self._metrics = metrics
        self._items: OrderedDict[str, tuple[V, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.nbytes = 0
        self.hits = self.misses = self.evictions = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> V | None:
        with self._lock:
            entry = self._items.get(key)
            if entry is None:
                self.misses += 1
                self._metrics.cache_misses.inc()
                return None
            self._items.move_to_end(key)
            self.hits += 1
            self._metrics.cache_hits.inc()
            return entry[0]

    def put(self, key: str, value: V) -> None:
        if self.max_bytes == 0 or self.max_entries == 0:
            return
        size = entry_nbytes(value)
        if size > self.max_bytes:
            return
        stored = cast(V, types.MappingProxyType({k: _read_only(v) for k, v in value.items()})
                      if isinstance(value, Mapping) else _read_only(value))
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.nbytes -= old[1]
            self._items[key] = (stored, size)
            self.nbytes += size
            while self.nbytes > self.max_bytes or (
                    self.max_entries is not None and len(self._items) > self.max_entries):
                _, (_, evicted) = self._items.popitem(last=False)
                self.nbytes -= evicted
                self.evictions += 1
                self._metrics.cache_evictions.inc()
            self._metrics.cache_entries.set(len(self._items))
            self._metrics.cache_bytes.set(self.nbytes)


def feature_cache(settings: Settings, metrics: Metrics) -> FeatureLRU[NamedFeatures]:
    """The cache these settings ask for; says so when the deprecated entry count is set."""
    if settings.feature_cache_size is not None:
        logger.warning(
            "FEATCACHE_FEATURE_CACHE_SIZE (--feature-cache-size) is deprecated: it counts "
            "entries, whose size depends on the layer. It still caps the number of entries "
            "(%d; 0 disables the cache); bound the memory with FEATCACHE_FEATURE_CACHE_BYTES "
            "(now %d bytes) instead", settings.feature_cache_size, settings.feature_cache_bytes,
        )
    return FeatureLRU(settings.feature_cache_bytes, metrics, settings.feature_cache_size)
