"""What the app holds between requests: set up by the lifespan, read by the dependencies."""

from __future__ import annotations

import dataclasses
import time

from service.config import Settings
from service.head_store import HeadStore
from service.metrics import Metrics
from service.predictor import Predictor


@dataclasses.dataclass
class AppState:
    settings: Settings
    metrics: Metrics
    #: The served heads (fixed and watched); requests take `head_store.current()` once.
    head_store: HeadStore | None = None
    #: Set once the conv base is built and warmed; None means not ready.
    predictor: Predictor | None = None
    load_error: str | None = None
    started_at: float = dataclasses.field(default_factory=time.time)
    ready_at: float | None = None
