"""Heads added, replaced or removed while the server runs: the watched heads folder.

`serve --heads-dir DIR` serves every head folder in DIR, laid out as TF Serving lays out models:

    DIR/NAME/VERSION/   a head folder written by train-head; VERSION is a plain number (1, 2, 10)
    DIR/NAME/           a head folder itself (metadata.json directly inside): an unversioned head

Names starting with "." are skipped (train-head builds its output as `.NAME.tmp-PID` and renames
it into place), and so are version folders whose name is not a plain number. Every version that
loads is served; a request without a version gets the highest one being served.

`HeadStore.scan` (run on a timer, on SIGHUP and by POST /admin/reload) looks at DIR and loads what
is new or changed. A version is served only after it loaded, its model file matched the SHA-256
in its metadata, its spec passed `service.heads.check_head` against the loaded base, and it
answered a trial prediction. Until then the registry snapshot requests resolve their head from is
left as it was: a broken version never replaces a working one (a broken change to a served
version keeps the previous load serving), and the failure is recorded per version (`statuses`)
and logged.

Half-copied folders: a version whose metadata.json or model file is missing, unreadable, or does
not match its hash while its files changed in the last `settle_s` seconds is reported "loading"
and retried on every scan; once its files have been quiet that long it is "failed", and retried
when any of its files changes. train-head's atomic rename, or a copy made beside DIR and renamed
into it, never shows a half folder at all.

Every new snapshot is built whole and swapped in by one assignment; requests keep the
`ServedHead` they started with, so a request in flight finishes on the version it started on.

Scans run one at a time on the store's own scanning thread (`rescan`), never on the event loop
or its threadpool: a reload asked for while a scan runs shares the next scan, and its caller
waits `scan_timeout_s` at most (then 503 scan_busy; the scan goes on, and GET /heads shows what
it did). A folder that blocks (a FIFO, a hung network mount) so holds one thread, never the
server: /health and /ready never wait on the heads folder. Only regular files are read.

The conv base, when no --head names it (`choose_spec`): chosen from the versions that load
completely, never from a half-copied or broken one; the spec that serves the most of them wins,
ties going to the default head's, then to the head trained first, then to the name first in
order. So a restart serves what the running server served, as long as its heads are there.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from extractor.spec import FeatureSpec
from service.errors import HeadSpecMismatchError, ScanBusyError, StartupError
from service.heads import HeadRegistry, ServedHead, check_head, keras_head_kind, trial_features

logger = logging.getLogger(__name__)

LOADING, AVAILABLE, FAILED = "loading", "available", "failed"

#: A version folder's state on disk: the folder's identity and every file's name, size, mtime.
Fingerprint = tuple[Any, ...]

#: How long a caller (start-up, POST /admin/reload, the timer) waits for a scan.
SCAN_TIMEOUT_S = 30.0

#: The spec of the conv base that will serve, from the spec of a head it should serve (None:
#: no head loaded; the defaults).
ChooseBase = Callable[[FeatureSpec | None], FeatureSpec]


@dataclasses.dataclass(frozen=True)
class VersionStatus:
    """One version's state, as /heads shows it: no paths, no exception text."""

    name: str
    version: int | None
    status: str
    reason: str | None
    #: Requests can reach this version now (it may be serving an earlier load of its folder
    #: while a change to it failed).
    served: bool
    fixed: bool = False


@dataclasses.dataclass(frozen=True)
class Change:
    """What one scan changed: added, replaced, removed, failed (or still loading)."""

    head: str
    version: int | None
    change: str
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"head": self.head, "version": None if self.version is None else str(self.version),
                "change": self.change, "reason": self.reason}


@dataclasses.dataclass
class _Entry:
    """The store's record of one version folder in DIR."""

    name: str
    version: int | None
    status: str = LOADING
    reason: str | None = None
    fingerprint: Fingerprint | None = None
    head: ServedHead | None = None


@dataclasses.dataclass(frozen=True)
class _Candidate:
    name: str
    version: int | None
    path: Path
    fingerprint: Fingerprint
    newest_mtime: float
    #: A reason not to try loading at all (e.g. the name is taken by a --head head).
    refused: str | None = None


class _NotYet(Exception):
    """The folder looks incomplete: retried while its files are still changing."""


class _Refused(Exception):
    """The folder is complete but cannot be served; the message is the short public reason."""


class HeadStore:
    """The fixed heads and those of the watched folder; `current()` is the snapshot to serve."""

    def __init__(
        self, fixed: Sequence[ServedHead], heads_dir: Path | None, *,
        base_spec: FeatureSpec | None = None, choose_base: ChooseBase | None = None,
        default: str | None = None, settle_s: float = 5.0,
        scan_timeout_s: float | None = None,
    ) -> None:
        if base_spec is None and choose_base is None:
            raise ValueError("give the base's spec, or choose_base to choose it from the heads")
        self.fixed = list(fixed)
        self.heads_dir = heads_dir
        #: The loaded base's spec; None until the first scan chose it (`choose_base`).
        self.base_spec = base_spec
        self.choose_base = choose_base
        self.default = default
        self.settle_s = settle_s
        self.scan_timeout_s = SCAN_TIMEOUT_S if scan_timeout_s is None else scan_timeout_s
        self._entries: dict[tuple[str, int | None], _Entry] = {}
        self._lock = threading.Lock()
        self._snapshot = HeadRegistry([])
        self._statuses: tuple[VersionStatus, ...] = ()
        self._runner = _ScanRunner(self.scan)
        self._publish()

    @classmethod
    def open(
        cls, fixed: Sequence[ServedHead], heads_dir: Path | None, *,
        base_spec: FeatureSpec | None = None, choose_base: ChooseBase | None = None,
        default: str | None = None, settle_s: float = 5.0,
        scan_timeout_s: float | None = None,
    ) -> HeadStore:
        """A store with the folder scanned once; a missing folder, or one that does not answer
        within `scan_timeout_s`, stops the start-up. Without `base_spec`, the scan chooses it
        (`choose_spec`, then `choose_base`)."""
        if heads_dir is not None and not heads_dir.is_dir():
            raise StartupError(f"--heads-dir {str(heads_dir)!r} is not a folder")
        store = cls(fixed, heads_dir, base_spec=base_spec, choose_base=choose_base,
                    default=default, settle_s=settle_s, scan_timeout_s=scan_timeout_s)
        if heads_dir is not None:
            try:
                store._runner.request().result(timeout=store.scan_timeout_s)
            except TimeoutError:
                raise StartupError(
                    f"--heads-dir {str(heads_dir)!r} did not answer within "
                    f"{store.scan_timeout_s:g} s "
                    "(a hung network mount, or a file that blocks when read?)") from None
            if not any(not h.fixed for h in store.current()):
                logger.warning("no head in %s can be served yet; watching it for heads", heads_dir)
        if store.base_spec is None:
            assert choose_base is not None
            store.base_spec = choose_base(None)
        return store

    async def rescan(self) -> list[Change]:
        """`scan` on the store's scanning thread; what a reload, SIGHUP and the timer call.

        Requests made while a scan runs share the next one. Waits `scan_timeout_s` at most:
        past it, or while a scan has been running longer than that, `ScanBusyError` (the scan
        goes on; /heads shows its outcome)."""
        if self.heads_dir is None:
            return []
        running = self._runner.running_for()
        if running is not None and running > self.scan_timeout_s:
            raise ScanBusyError(
                f"the heads folder has not answered for {running:.0f} s: a scan is still "
                "running (a hung mount?); GET /heads shows what is served")
        future = self._runner.request()
        try:
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)),
                                          self.scan_timeout_s)
        except TimeoutError:
            raise ScanBusyError(
                f"the heads folder did not answer within {self.scan_timeout_s:g} s; the scan "
                "goes on, and GET /heads shows what it loads") from None

    def current(self) -> HeadRegistry:
        """The snapshot to serve from; take it once per request and keep the head it gives."""
        return self._snapshot

    def statuses(self) -> tuple[VersionStatus, ...]:
        return self._statuses

    @property
    def watching(self) -> bool:
        return self.heads_dir is not None

    def has_loading(self) -> bool:
        """Some version looked incomplete at the last scan and waits for a retry."""
        return any(s.status == LOADING for s in self._statuses)

    def scan(self) -> list[Change]:
        """Load what is new or changed in the heads folder, drop what is gone; return changes."""
        if self.heads_dir is None:
            return []
        with self._lock:
            listed = self._discover(self.heads_dir)
            if listed is None:
                return []
            found, unreadable = listed
            changes: list[Change] = []
            for key in [k for k in self._entries if k not in found and k not in unreadable]:
                gone = self._entries.pop(key)
                if gone.head is not None:
                    changes.append(Change(gone.name, gone.version, "removed"))
            todo = []
            for key, candidate in found.items():
                known = self._entries.get(key)
                if known is None:
                    entry = self._entries[key] = _Entry(candidate.name, candidate.version)
                elif known.fingerprint == candidate.fingerprint and known.status != LOADING:
                    continue
                else:
                    entry = known
                todo.append((entry, candidate, (entry.status, entry.reason)))
                if entry.head is None:
                    entry.status, entry.reason = LOADING, None
            if todo:
                self._publish()  # /heads shows "loading" while they load
            outcomes = [self._attempt(self._prepare, candidate) for _, candidate, _ in todo]
            if self.base_spec is None:
                assert self.choose_base is not None
                loaded = [o for o in outcomes if isinstance(o, ServedHead)]
                self.base_spec = self.choose_base(choose_spec(loaded, self.default))
            for (entry, candidate, before), outcome in zip(todo, outcomes, strict=True):
                if isinstance(outcome, ServedHead):
                    outcome = self._attempt(self._check_spec, outcome, candidate)
                change = self._record(entry, candidate, before, outcome)
                if change is not None:
                    changes.append(change)
            self._publish()
        for change in changes:
            log = logger.warning if change.change == FAILED else logger.info
            log("heads folder: %s %s%s", change.change, _label(change.head, change.version),
                f": {change.reason}" if change.reason else "")
        return changes

    # -- one version ------------------------------------------------------------------------

    def _attempt(self, step: Callable[..., ServedHead], *args: Any) -> ServedHead | Exception:
        """Run one step of loading a version; its head, or why not (_NotYet or _Refused)."""
        candidate: _Candidate = args[-1]
        try:
            if candidate.refused is not None:
                raise _Refused(candidate.refused)
            try:
                return step(*args)
            except OSError as exc:  # a file went or changed between two looks: being copied
                raise _NotYet("its files changed while they were read") from exc
            except (_NotYet, _Refused):
                raise
            except Exception as exc:
                logger.exception("heads folder: checking %s failed", _label(candidate.name,
                                                                            candidate.version))
                raise _Refused("could not be checked (the server log says why)") from exc
        except (_NotYet, _Refused) as exc:
            return exc

    def _record(self, entry: _Entry, candidate: _Candidate, before: tuple[str, str | None],
                outcome: ServedHead | Exception) -> Change | None:
        """Update a version's entry with what loading it gave; the change to report, if any."""
        if isinstance(outcome, ServedHead):
            change = "replaced" if entry.head is not None else "added"
            entry.head, entry.status, entry.reason = outcome, AVAILABLE, None
            entry.fingerprint = candidate.fingerprint
            return Change(candidate.name, candidate.version, change)
        if isinstance(outcome, _NotYet):
            recent = time.time() - candidate.newest_mtime < self.settle_s
            entry.status = LOADING if recent else FAILED
            entry.reason = str(outcome) if recent else f"incomplete: {outcome}"
            if not recent:
                entry.fingerprint = candidate.fingerprint
        else:
            entry.status, entry.reason = FAILED, str(outcome)
            entry.fingerprint = candidate.fingerprint
        if entry.head is not None:
            entry.reason = (f"a change to its files is not served ({entry.reason}); "
                            "the previous load keeps serving")
        if (entry.status, entry.reason) == before:
            return None  # still loading, or failed the same way: reported once
        return Change(candidate.name, candidate.version, entry.status, entry.reason)

    def _prepare(self, candidate: _Candidate) -> ServedHead:
        """Load one version folder and try it; raise _NotYet or _Refused with a short reason.
        Its model file is hashed once, by `load_head`."""
        from classifier.artifact import load_head
        from classifier.errors import ModelHashError

        path = candidate.path
        metadata = _completeness(path)
        label = _label(candidate.name, candidate.version)
        if keras_head_kind(metadata) is not None:  # a Keras head with no Keras (the lean image)
            logger.warning("heads folder: refusing %s: a Keras head, and this server has no "
                           "Keras", label)
            raise _Refused("a Keras head: this server has no Keras (the lean serving image); "
                           "serve it with the full image")
        try:
            loaded = load_head(path)
        except ModelHashError:  # a damaged file, or one still being copied
            raise _NotYet(f"{metadata['model_file']} does not match the SHA-256 in "
                          f"{_metadata_name()}") from None
        except Exception as exc:  # any failure of a foreign folder is that folder's, not ours
            logger.warning("heads folder: cannot load %s from %s: %s", label, path, exc)
            raise _Refused("not a loadable head artifact (the server log says why)") from None
        head = ServedHead(candidate.name, candidate.version, loaded)
        try:
            rows = head.predict_proba(trial_features(head))
            if getattr(rows, "shape", None) != (1, len(head.classes_)):
                raise ValueError(f"a trial prediction has shape {getattr(rows, 'shape', None)}, "
                                 f"expected (1, {len(head.classes_)})")
        except Exception as exc:
            logger.warning("heads folder: %s failed a trial prediction: %s", label, exc)
            raise _Refused("failed a trial prediction (the server log says why)") from None
        return head

    def _check_spec(self, head: ServedHead, candidate: _Candidate) -> ServedHead:
        """Refuse (_Refused) a loaded head the base cannot feed (`check_head`)."""
        assert self.base_spec is not None
        try:
            check_head(head, self.base_spec)
        except HeadSpecMismatchError as exc:
            logger.warning("heads folder: %s", exc)
            differs = ", ".join(exc.fields) or "its features"
            raise _Refused(f"trained on other features than the loaded base's (differs in: "
                           f"{differs})") from None
        return head

    # -- the folder -------------------------------------------------------------------------

    def _discover(
        self, root: Path
    ) -> tuple[dict[tuple[str, int | None], _Candidate], set[tuple[str, int | None]]] | None:
        """Every version folder in the heads folder, and those that could not be read this time
        (left as they are, not dropped); None when the folder itself cannot be listed."""
        fixed_names = {h.name for h in self.fixed}
        found: dict[tuple[str, int | None], _Candidate] = {}
        unreadable: set[tuple[str, int | None]] = set()
        try:
            names = sorted(e.name for e in os.scandir(root) if e.is_dir() and e.name[0] != ".")
        except OSError as exc:
            logger.warning("cannot list the heads folder %s: %s", root, exc)
            return None
        for name in names:
            folder = root / name
            refused = ("the name is taken by a --head head" if name in fixed_names else None)
            if (folder / _metadata_name()).exists():
                versions: list[tuple[int | None, Path]] = [(None, folder)]
            else:
                versions = _version_folders(folder) or [(None, folder)]
            for version, path in versions:
                try:
                    fingerprint, newest = _fingerprint(path)
                except OSError:
                    unreadable.add((name, version))  # changing as we look: next scan
                    continue
                found[(name, version)] = _Candidate(name, version, path, fingerprint, newest,
                                                    refused)
        return found, unreadable

    def _publish(self) -> None:
        """Build the next snapshot whole and swap it in with one assignment."""
        served = list(self.fixed)
        for key in sorted(self._entries, key=_sort_key):
            entry = self._entries[key]
            if entry.head is not None:
                served.append(entry.head)
        registry = HeadRegistry(served, default=self._default(served))
        statuses = [VersionStatus(h.name, None, AVAILABLE, None, True, fixed=True)
                    for h in self.fixed]
        statuses += [VersionStatus(e.name, e.version, e.status, e.reason, e.head is not None)
                     for e in (self._entries[k] for k in sorted(self._entries, key=_sort_key))]
        self._snapshot, self._statuses = registry, tuple(statuses)

    def _default(self, served: list[ServedHead]) -> str | None:
        if self.default is not None:
            return self.default
        if self.fixed:
            return self.fixed[0].name
        names = {h.name for h in served}
        return names.pop() if len(names) == 1 else None


def choose_spec(heads: Sequence[ServedHead], default: str | None = None) -> FeatureSpec | None:
    """The spec of the head whose conv base serves the most of `heads` (versions that loaded
    completely); None when there is none. Deterministic: ties go to the `default` head's spec,
    then to the head trained first (its metadata's `created`), then to the first by name and
    version.

    Start-up uses it to choose the conv base's layer, input size and int8 model when no --head
    is given (as it uses the first --head's otherwise). A base gives the pooled vectors of every
    layer `extract` stores by default, so heads of pooled vectors count for any base that makes
    them.
    """
    from extractor.features import DEFAULT_POOLED_LAYERS

    def rank(head: ServedHead) -> tuple[int, int, str, str, int]:
        base = dataclasses.replace(head.spec, pooled_layers=DEFAULT_POOLED_LAYERS)
        serves = sum(base.can_feed(h.spec, h.feature_names) for h in heads)
        created = str(head.metadata.get("created") or "9999")
        version = -1 if head.version is None else head.version
        return -serves, 0 if head.name == default else 1, created, head.name, -version

    return min(heads, key=rank).spec if heads else None


def _metadata_name() -> str:
    from classifier.artifact import METADATA

    return METADATA


def _version_folders(folder: Path) -> list[tuple[int | None, Path]]:
    """Numbered version folders (plain numbers, no leading zeros), lowest first."""
    out: list[tuple[int | None, Path]] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return out
    for e in entries:
        if e.is_dir() and e.name.isdigit() and e.name.isascii() and str(int(e.name)) == e.name:
            out.append((int(e.name), folder / e.name))
    return sorted(out, key=lambda item: item[0] or 0)


def _fingerprint(path: Path) -> tuple[Fingerprint, float]:
    """What changes when anything in the folder changes, and the newest modification time."""
    st = path.stat()
    files = []
    newest = st.st_mtime
    for e in os.scandir(path):
        fst = e.stat(follow_symlinks=True)
        files.append((e.name, fst.st_size, fst.st_mtime_ns, fst.st_ino))
        newest = max(newest, fst.st_mtime)
    return (st.st_ino, st.st_mtime_ns, tuple(sorted(files))), newest


def _completeness(path: Path) -> dict[str, Any]:
    """The folder's metadata; raise _NotYet when the folder looks half copied, _Refused when it
    is not a head at all. Cheap: nothing is hashed here (`load_head` hashes the model once),
    and nothing but a regular file is opened (a FIFO would block the scan)."""
    from classifier.artifact import read_metadata
    from classifier.errors import ArtifactError

    meta_path = path / _metadata_name()
    if not meta_path.exists():
        raise _NotYet(f"no {meta_path.name}")
    _regular(meta_path)
    try:
        metadata = read_metadata(path)
    except ArtifactError:
        try:
            import json

            json.loads(meta_path.read_text())
        except (OSError, ValueError):
            raise _NotYet(f"{meta_path.name} is not readable JSON") from None
        raise _Refused(f"{meta_path.name} is not head metadata") from None
    model_file, expected = metadata.get("model_file"), metadata.get("model_sha256")
    if not isinstance(model_file, str) or not isinstance(expected, str) \
            or Path(model_file).name != model_file:
        raise _Refused(f"{meta_path.name} does not name a model file and its SHA-256")
    model_path = path / model_file
    if not model_path.exists():
        raise _NotYet(f"no model file {model_file}")
    _regular(model_path)
    return metadata


def _regular(path: Path) -> None:
    """Refuse (_Refused) anything but a regular file (a link to one is fine)."""
    if not stat.S_ISREG(path.stat().st_mode):
        raise _Refused(f"{path.name} is not a regular file")


def _sort_key(key: tuple[str, int | None]) -> tuple[str, int]:
    return key[0], -1 if key[1] is None else key[1]


def _label(name: str, version: int | None) -> str:
    return name if version is None else f"{name} version {version}"


class _ScanRunner:
    """Runs the store's scans one at a time on a daemon thread of its own (started when asked,
    gone when idle), so a scan that blocks holds that one thread and never the server's event
    loop or threadpool, and never stops the process from exiting."""

    def __init__(self, scan: Callable[[], list[Change]]) -> None:
        self._scan = scan
        self._lock = threading.Lock()
        #: The scan asked for and not started yet: every request until it starts shares it.
        self._next: concurrent.futures.Future[list[Change]] | None = None
        self._started: float | None = None
        self._thread: threading.Thread | None = None

    def request(self) -> concurrent.futures.Future[list[Change]]:
        """The outcome of a scan that starts after this call (shared with other requests)."""
        with self._lock:
            if self._next is None:
                self._next = concurrent.futures.Future()
            future = self._next
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="featcache-heads-scan",
                                                daemon=True)
                self._thread.start()
        return future

    def running_for(self) -> float | None:
        """Seconds the scan now running has taken; None when none runs."""
        started = self._started
        return None if started is None else time.monotonic() - started

    def _run(self) -> None:
        while True:
            with self._lock:
                future, self._next = self._next, None
                self._started = None if future is None else time.monotonic()
                if future is None:
                    self._thread = None
                    return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(self._scan())
            except BaseException as exc:
                future.set_exception(exc)
