"""docker/entrypoint.sh run by /bin/sh with fake `id`, `stat`, `awk`, `chown` and `setpriv`: who
the job runs as, without building an image (issue 20, item 11: never chown a host folder, never
run as root)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

FAKES = {
    # The container's uid, and the owner of the folder named by FEATCACHE_RUN_AS_OWNER_OF.
    "id": 'echo "$FAKE_UID"',
    "stat": 'case "$2" in %u) echo "$FAKE_OWNER_UID" ;; %g) echo "$FAKE_OWNER_GID" ;; esac',
    # rootless() reads /proc/self/uid_map with awk: exit 0 means "not rootless".
    "awk": '[ "$FAKE_ROOTLESS" = 1 ] && exit 1; exit 0',
    "chown": 'echo "chown $*" >> "$LOG"',
    "setpriv": 'echo "setpriv $*" >> "$LOG"',
    "job": 'echo "job HOME=$HOME" >> "$LOG"',
}


def entrypoint(tmp_path: Path, *, container_uid: int = 0, owner: tuple[int, int] = (1000, 1000),
               rootless: bool = False, **env: str) -> tuple[int, str, list[str]]:
    """Run the entrypoint with command `job`; (exit status, stderr, what the fakes logged)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in FAKES.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    folder = tmp_path / "heads"
    folder.mkdir(exist_ok=True)
    log = tmp_path / "log"
    log.write_text("")
    result = subprocess.run(
        ["/bin/sh", str(ROOT / "docker/entrypoint.sh"), "job"],
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", "LOG": str(log), "FAKE_UID": str(container_uid),
             "FAKE_OWNER_UID": str(owner[0]), "FAKE_OWNER_GID": str(owner[1]),
             "FAKE_ROOTLESS": "1" if rootless else "0",
             "FEATCACHE_RUN_AS_OWNER_OF": str(folder), **env},
        capture_output=True, text=True, timeout=30,
    )
    return result.returncode, result.stderr, log.read_text().splitlines()


def test_runs_as_the_owner_of_the_folder(tmp_path: Path) -> None:
    rc, err, log = entrypoint(tmp_path, owner=(1000, 1001))
    assert rc == 0, err
    assert log == ["setpriv --reuid=1000 --regid=1001 --clear-groups -- job"]


def test_an_ordinary_container_just_runs_the_command(tmp_path: Path) -> None:
    rc, err, log = entrypoint(tmp_path, container_uid=10001, owner=(0, 0))
    assert (rc, log) == (0, ["job HOME="]), err  # no HOME given: none set


def test_a_folder_owned_by_root_is_refused_never_chowned(tmp_path: Path) -> None:
    rc, err, log = entrypoint(tmp_path, owner=(0, 0))
    assert rc != 0
    assert log == []  # no chown, no job
    assert "belongs to root" in err and "FEATCACHE_UID=$(id -u)" in err


def test_rootless_root_is_you_and_keeps_it(tmp_path: Path) -> None:
    rc, err, log = entrypoint(tmp_path, owner=(0, 0), rootless=True)
    assert rc == 0, err
    assert [line.split()[0] for line in log] == ["job"]


@pytest.mark.parametrize("env", [{"FEATCACHE_UID": "0"}, {"FEATCACHE_GID": "0"},
                                 {"FEATCACHE_UID": "0", "FEATCACHE_GID": "0"},
                                 {"FEATCACHE_UID": "00"}])
def test_uid_or_gid_0_is_refused(env: dict[str, str], tmp_path: Path) -> None:
    rc, err, log = entrypoint(tmp_path, **env)
    assert rc != 0 and log == []
    assert "is refused" in err and "never run as root" in err


def test_explicit_ids_win(tmp_path: Path) -> None:
    rc, err, log = entrypoint(tmp_path, owner=(0, 0), FEATCACHE_UID="1234", FEATCACHE_GID="55")
    assert rc == 0, err
    assert log == ["setpriv --reuid=1234 --regid=55 --clear-groups -- job"]
    rc, err, log = entrypoint(tmp_path, FEATCACHE_UID="me")
    assert rc != 0 and "numeric" in err and log == []
