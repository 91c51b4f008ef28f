"""What the app holds between requests: set up by the lifespan, read by the dependencies."""

from __future__ import annotations

import dataclasses
import time

from service.config import Settings
from service.heads import HeadRegistry
from service.metrics import Metrics
from service.predictor import Predictor


@dataclasses.dataclass
class AppState:
    settings: Settings
    metrics: Metrics
    heads: HeadRegistry | None = None
    #: Set once the conv base is built and warmed; None means not ready.
    predictor: Predictor | None = None
    load_error: str | None = None
    started_at: float = dataclasses.field(default_factory=time.time)
    ready_at: float | None = None
