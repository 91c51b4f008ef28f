"""Where the VGG16 conv-base weights come from, and their identity (a hash of the file).

`imagenet` means the file Keras's VGG16 downloads (same URL, same MD5), kept where Keras keeps
it (`$KERAS_HOME/models`, default `~/.keras/models`), so either finds the other's copy; it is
downloaded with the standard library, without Keras (the lean serving image has none).
Offline, supply the same file by path: the `--weights` flag, or the `FEATCACHE_WEIGHTS`
environment variable, or by copying it into the Keras cache directory.
"""

from __future__ import annotations

import functools
import hashlib
import http.client
import logging
import os
import socket
import urllib.parse
import urllib.request
from pathlib import Path

logger = logging.getLogger(__name__)

WEIGHTS_ENV = "FEATCACHE_WEIGHTS"
IMAGENET = "imagenet"
NOTOP_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
NOTOP_URL = "https://storage.googleapis.com/tensorflow/keras-applications/vgg16/" + NOTOP_FILE
# Keras's own checksum for this file (keras/src/applications/vgg16.py).
NOTOP_MD5 = "6d6bbae143d832006294945121d1f1fc"
DOWNLOAD_TIMEOUT_S = 30.0


class WeightsError(RuntimeError):
    """The weights cannot be found or fetched; the message says how to supply them."""


def keras_cache_dir() -> Path:
    """The directory Keras caches downloads in (`KERAS_HOME`, else `~/.keras`)."""
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")).expanduser()


def default_weights() -> str:
    """`$FEATCACHE_WEIGHTS` when set, else `imagenet`."""
    return os.environ.get(WEIGHTS_ENV) or IMAGENET


def resolve_weights(weights: str | os.PathLike[str] | None = None) -> Path:
    """Return a local path to the conv-base weights, downloading `imagenet` if needed."""
    name = os.fspath(weights) if weights is not None else default_weights()
    if name != IMAGENET:
        path = Path(name).expanduser()
        if not path.is_file():
            raise WeightsError(
                f"weights file not found: {path}. Pass --weights imagenet or the path of a "
                f"Keras VGG16 no-top weights file ({NOTOP_FILE})."
            )
        return path
    cached = keras_cache_dir() / "models" / NOTOP_FILE
    if cached.is_file():
        return cached
    return _download_imagenet()


def _first_hop(url: str) -> tuple[str, int]:
    """Where a download of `url` connects first: the proxy urllib uses for its scheme
    (HTTPS_PROXY / https_proxy for https) when one is set and NO_PROXY does not exempt the
    host, else the host itself, at the URL's port."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        hop = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        return hop.hostname or "", hop.port or (443 if hop.scheme == "https" else 80)
    return host, parts.port or (443 if parts.scheme == "https" else 80)


def _download_imagenet() -> Path:
    # A quick connection check first, so that offline machines fail at once with what to do
    # rather than after Keras's own retries. Behind a proxy, the proxy is what must answer.
    host, port = _first_hop(NOTOP_URL)
    try:
        socket.create_connection((host, port), timeout=10).close()
    except OSError as exc:
        raise WeightsError(
            f"the ImageNet VGG16 weights are not in the Keras cache and {host}:{port} cannot be "
            f"reached ({exc}). Behind a proxy, set HTTPS_PROXY=http://PROXY:PORT. "
            f"Offline, supply the file {NOTOP_FILE}: pass "
            f"--weights /path/to/{NOTOP_FILE}, or set {WEIGHTS_ENV}=/path/to/it, or copy it to "
            f"{keras_cache_dir() / 'models' / NOTOP_FILE}."
        ) from None

    target = keras_cache_dir() / "models" / NOTOP_FILE
    logger.info("downloading the ImageNet VGG16 weights from %s", NOTOP_URL)
    try:
        _fetch(NOTOP_URL, target, NOTOP_MD5)
    except (OSError, ValueError, http.client.HTTPException) as exc:  # IncompleteRead, ...
        raise WeightsError(
            f"downloading the ImageNet VGG16 weights failed ({exc}); pass --weights PATH or set "
            f"{WEIGHTS_ENV} to use a local copy"
        ) from exc
    return target


def _fetch(url: str, target: Path, md5: str) -> None:
    """Download `url` to `target` whole or not at all, checking Keras's MD5 of the file.

    The standard library only, not `keras.utils.get_file`: the lean serving image downloads
    the weights at build time and has no Keras (docker/Dockerfile). Same place, same check.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(f".{target.name}.{os.getpid()}.part")
    digest = hashlib.md5(usedforsecurity=False)
    try:
        # The timeout bounds every read: a stalled download fails rather than hangs.
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, \
                open(part, "wb") as out:
            for block in iter(lambda: response.read(1 << 20), b""):
                digest.update(block)
                out.write(block)
        if digest.hexdigest() != md5:
            raise ValueError(f"the file downloaded has MD5 {digest.hexdigest()}, not {md5}: "
                             "incomplete or not the expected file")
        os.replace(part, target)
    finally:
        part.unlink(missing_ok=True)


@functools.cache
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_sha256(path: Path) -> str:
    """SHA-256 of the weights file: the identity recorded in caches and heads."""
    st = path.stat()
    return _sha256_cached(str(path.resolve()), st.st_size, st.st_mtime_ns)
