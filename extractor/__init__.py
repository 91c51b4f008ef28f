"""Images -> VGG16 features in an HDF5 cache (the first stage of featcache)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("featcache")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+source"

from extractor.cache import CacheError, FeatureCache, open_cache, write_cache
from extractor.spec import FeatureSpec, SpecMismatchError

__all__ = [
    "CacheError",
    "FeatureCache",
    "FeatureSpec",
    "SpecMismatchError",
    "__version__",
    "open_cache",
    "write_cache",
]
