"""The classifier's exceptions, all `ValueError`s so callers can catch bad input in one place.

    ClassifierError            base: anything the classifier refuses
    ├── DataError              a cache cannot be used for training or evaluation (unlabelled,
    │                          fewer than two classes, class names that differ, bad split)
    └── ArtifactError          a head artifact is missing, corrupt, tampered with, or unsafe
        └── ModelHashError     its model file does not match the SHA-256 in its metadata

`extractor.SpecMismatchError` (also a `ValueError`) reports features made differently.
"""

from __future__ import annotations


class ClassifierError(ValueError):
    """Base class of the classifier's errors."""


class DataError(ClassifierError):
    """A cache (or array) cannot be used as given."""


class ArtifactError(ClassifierError):
    """A head artifact cannot be saved or loaded safely."""


class ModelHashError(ArtifactError):
    """A head's model file does not match the SHA-256 its metadata records (damaged, modified,
    or still being copied)."""
