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
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from extractor.spec import FeatureSpec
from service.errors import HeadSpecMismatchError, StartupError
from service.heads import HeadRegistry, ServedHead, check_head, keras_refusal, trial_features

logger = logging.getLogger(__name__)

LOADING, AVAILABLE, FAILED = "loading", "available", "failed"

#: A version folder's state on disk: the folder's identity and every file's name, size, mtime.
Fingerprint = tuple[Any, ...]


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
        self, fixed: Sequence[ServedHead], heads_dir: Path | None, *, base_spec: FeatureSpec,
        default: str | None = None, settle_s: float = 5.0,
    ) -> None:
        self.fixed = list(fixed)
        self.heads_dir = heads_dir
        self.base_spec = base_spec
        self.default = default
        self.settle_s = settle_s
        self._entries: dict[tuple[str, int | None], _Entry] = {}
        self._lock = threading.Lock()
        self._snapshot = HeadRegistry([])
        self._statuses: tuple[VersionStatus, ...] = ()
        self._publish()

    @classmethod
    def open(
        cls, fixed: Sequence[ServedHead], heads_dir: Path | None, *, base_spec: FeatureSpec,
        default: str | None = None, settle_s: float = 5.0,
    ) -> HeadStore:
        """A store with the folder scanned once; a missing folder stops the start-up."""
        if heads_dir is not None and not heads_dir.is_dir():
            raise StartupError(f"--heads-dir {str(heads_dir)!r} is not a folder")
        store = cls(fixed, heads_dir, base_spec=base_spec, default=default, settle_s=settle_s)
        if heads_dir is not None:
            store.scan()
            if not any(not h.fixed for h in store.current()):
                logger.warning("no head in %s can be served yet; watching it for heads", heads_dir)
        return store

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
            for entry, candidate, before in todo:
                change = self._load(entry, candidate, before)
                if change is not None:
                    changes.append(change)
            self._publish()
        for change in changes:
            log = logger.warning if change.change == FAILED else logger.info
            log("heads folder: %s %s%s", change.change, _label(change.head, change.version),
                f": {change.reason}" if change.reason else "")
        return changes

    # -- one version ------------------------------------------------------------------------

    def _load(self, entry: _Entry, candidate: _Candidate,
              before: tuple[str, str | None]) -> Change | None:
        """Try one new or changed version; update its entry; the change to report, if any."""
        try:
            if candidate.refused is not None:
                raise _Refused(candidate.refused)
            try:
                head = self._check(candidate)
            except OSError as exc:  # a file went or changed between two looks: being copied
                raise _NotYet("its files changed while they were read") from exc
            except (_NotYet, _Refused):
                raise
            except Exception as exc:
                logger.exception("heads folder: checking %s failed", _label(candidate.name,
                                                                            candidate.version))
                raise _Refused("could not be checked (the server log says why)") from exc
        except _NotYet as exc:
            recent = time.time() - candidate.newest_mtime < self.settle_s
            entry.status = LOADING if recent else FAILED
            entry.reason = str(exc) if recent else f"incomplete: {exc}"
            if not recent:
                entry.fingerprint = candidate.fingerprint
        except _Refused as exc:
            entry.status, entry.reason = FAILED, str(exc)
            entry.fingerprint = candidate.fingerprint
        else:
            change = "replaced" if entry.head is not None else "added"
            entry.head, entry.status, entry.reason = head, AVAILABLE, None
            entry.fingerprint = candidate.fingerprint
            return Change(candidate.name, candidate.version, change)
        if entry.head is not None:
            entry.reason = (f"a change to its files is not served ({entry.reason}); "
                            "the previous load keeps serving")
        if (entry.status, entry.reason) == before:
            return None  # still loading, or failed the same way: reported once
        return Change(candidate.name, candidate.version, entry.status, entry.reason)

    def _check(self, candidate: _Candidate) -> ServedHead:
        """Load and check one version folder; raise _NotYet or _Refused with a short reason."""
        from classifier.artifact import load_head

        path = candidate.path
        _completeness(path)
        label = _label(candidate.name, candidate.version)
        refusal = keras_refusal(path)  # a Keras head where there is no Keras (the lean image)
        if refusal is not None:
            logger.warning("heads folder: refusing %s: %s", label, refusal)
            raise _Refused("a Keras head: this server has no Keras (the lean serving image); "
                           "serve it with the full image")
        try:
            loaded = load_head(path)
        except Exception as exc:  # any failure of a foreign folder is that folder's, not ours
            logger.warning("heads folder: cannot load %s from %s: %s", label, path, exc)
            raise _Refused("not a loadable head artifact (the server log says why)") from None
        head = ServedHead(candidate.name, candidate.version, loaded)
        try:
            check_head(head, self.base_spec)
        except HeadSpecMismatchError as exc:
            logger.warning("heads folder: %s", exc)
            differs = ", ".join(exc.fields) or "its features"
            raise _Refused(f"trained on other features than the loaded base's (differs in: "
                           f"{differs})") from None
        try:
            rows = head.predict_proba(trial_features(head))
            if getattr(rows, "shape", None) != (1, len(head.classes_)):
                raise ValueError(f"a trial prediction has shape {getattr(rows, 'shape', None)}, "
                                 f"expected (1, {len(head.classes_)})")
        except Exception as exc:
            logger.warning("heads folder: %s failed a trial prediction: %s", label, exc)
            raise _Refused("failed a trial prediction (the server log says why)") from None
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


def peek_spec(heads_dir: Path) -> FeatureSpec | None:
    """The spec recorded by the first head in the folder (by name, highest version), if any.

    Start-up uses it to choose the conv base's layer and input size when no --head is given,
    as it uses the first --head's otherwise.
    """
    from classifier.artifact import read_metadata

    if not heads_dir.is_dir():
        return None
    for name in sorted(e.name for e in os.scandir(heads_dir) if e.is_dir() and e.name[0] != "."):
        folder = heads_dir / name
        paths = ([folder] if (folder / _metadata_name()).exists()
                 else [p for _, p in reversed(_version_folders(folder))])
        for path in paths:
            try:
                return FeatureSpec.from_dict(read_metadata(path)["spec"])
            except (ValueError, KeyError, TypeError, OSError):
                continue
    return None


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


def _completeness(path: Path) -> None:
    """Raise _NotYet when the folder looks half copied, _Refused when it is not a head at all."""
    import hashlib

    from classifier.artifact import read_metadata
    from classifier.errors import ArtifactError

    meta_path = path / _metadata_name()
    if not meta_path.exists():
        raise _NotYet(f"no {meta_path.name}")
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
    if not model_path.is_file():
        raise _NotYet(f"no model file {model_file}")
    h = hashlib.sha256()
    with open(model_path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    if h.hexdigest() != expected:
        raise _NotYet(f"{model_file} does not match the SHA-256 in {meta_path.name}")


def _sort_key(key: tuple[str, int | None]) -> tuple[str, int]:
    return key[0], -1 if key[1] is None else key[1]


def _label(name: str, version: int | None) -> str:
    return name if version is None else f"{name} version {version}"
