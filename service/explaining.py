"""`?explain=true`: the conv base's full maps for an upload, and the heatmap made from them.

An explained request runs its image (and the head's views of it) through the conv base outside
the micro-batcher, in one pass on the model thread that gives every tapped layer's maps; its
named features are derived from those maps by `extractor.features.from_maps`, the function the
batcher's passes use, so its probabilities are the ones an unexplained request gets. The
heatmap itself is `classifier.explain`'s, computed on the head thread.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from extractor.features import Features, from_maps
from service.batching import ModelWorker
from service.errors import ExplainUnavailableError

Maps = dict[str, NDArray[np.float32]]


class MapsRunner:
    """Runs the conv base's `maps` (layer -> maps) on the model thread, for explained requests."""

    def __init__(self, backbone: Any, worker: ModelWorker) -> None:
        self._backbone = backbone
        self._worker = worker

    async def __call__(self, pixels: Sequence[NDArray[np.uint8]]
                       ) -> tuple[Maps, Features, float]:
        """The maps and named features of these images, and the pass's milliseconds."""
        maps_fn = getattr(self._backbone, "maps", None)
        if maps_fn is None:
            raise ExplainUnavailableError("this server's conv base gives no maps to explain "
                                          "predictions with")
        t0 = time.perf_counter()
        maps = await self._worker.run(maps_fn, np.stack(pixels))
        features = from_maps(maps, self._backbone.spec)
        return maps, features, (time.perf_counter() - t0) * 1000.0


def explanation(head: Any, maps: Maps, proba: NDArray[np.floating],
                pixels: NDArray[np.uint8], views: Any, sha256: str) -> dict[str, Any]:
    """`{"grid": [[float]], "overlay_png": "<base64 PNG>"}` for a served head's prediction."""
    from classifier.explain import ExplainError, explain

    try:
        return explain(head, maps, proba, pixels, views, sha256).to_json()
    except ExplainError as exc:
        raise ExplainUnavailableError(str(exc)) from None
