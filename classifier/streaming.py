"""Feed a cache larger than memory to Keras, one batch read from disk at a time.

Rows are shuffled each epoch without random access to single rows (which would decompress a
whole HDF5 chunk per row): contiguous blocks are shuffled, then rows within a window of blocks.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from numpy.typing import NDArray

from classifier.data import Subset
from extractor import open_cache

BLOCK_ROWS = 256
WINDOW_BLOCKS = 8


class CacheBatches(keras.utils.PyDataset):
    def __init__(self, subset: Subset, batch_size: int, shuffle: bool, seed: int) -> None:
        super().__init__()
        self.subset = subset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.labels = subset.labels
        self.feature_shape = subset.feature_shape
        #: Set by the head: cache label -> output unit.
        self.label_map: dict[int, int] = {}
        self._rng = np.random.default_rng(seed)
        self._cache: Any = None
        self._order = np.arange(len(subset))
        self.on_epoch_end()

    def __len__(self) -> int:
        return -(-len(self.subset) // self.batch_size)

    def on_epoch_end(self) -> None:
        if not self.shuffle:
            return
        n = len(self.subset)
        blocks = [np.arange(s, min(s + BLOCK_ROWS, n)) for s in range(0, n, BLOCK_ROWS)]
        self._rng.shuffle(blocks)
        order = np.concatenate(blocks) if blocks else np.arange(0)
        span = BLOCK_ROWS * WINDOW_BLOCKS
        for s in range(0, n, span):
            self._rng.shuffle(order[s : s + span])
        self._order = order

    def __getitem__(self, i: int) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        if self._cache is None:
            self._cache = open_cache(self.subset.path)
        rows = self._order[i * self.batch_size : (i + 1) * self.batch_size]
        (x, _), = self._cache.iter_batches(len(rows), self.subset.indices[rows])
        y = np.array([self.label_map[int(c)] for c in self.subset.labels[rows]], np.int64)
        return x, y
