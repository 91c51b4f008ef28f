"""Images -> VGG16 features in an HDF5 cache (the first stage of featcache).

The names below are imported on first use (PEP 562), so importing a submodule (a command's
`extractor.cli`, `extractor.console`) does not load h5py: `--help` stays instant and Ctrl-C is
answered by the command's own handler from its first moment (`extractor.console.run`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__: str

if TYPE_CHECKING:
    from extractor.cache import CacheError, FeatureCache, open_cache, write_cache
    from extractor.spec import FeatureSpec, SpecMismatchError

_LAZY = {
    "CacheError": "extractor.cache",
    "FeatureCache": "extractor.cache",
    "open_cache": "extractor.cache",
    "write_cache": "extractor.cache",
    "FeatureSpec": "extractor.spec",
    "SpecMismatchError": "extractor.spec",
}

__all__ = [
    "CacheError",
    "FeatureCache",
    "FeatureSpec",
    "SpecMismatchError",
    "__version__",
    "open_cache",
    "write_cache",
]


def _version() -> str:
    # importlib.metadata alone takes ~20 ms to import: only when asked.
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("featcache")
    except PackageNotFoundError:  # running from a source tree that was not installed
        return "0.0.0+source"


def __getattr__(name: str) -> Any:
    if name == "__version__":
        globals()[name] = value = _version()
        return value
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'extractor' has no attribute {name!r}")
