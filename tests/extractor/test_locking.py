"""The extraction lock never writes through a file planted under its name (issue 20, item 9)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fakes import fake_features, make_folder, opts

from extractor.locking import UnsafeLock, exclusive, lock_path
from extractor.runner import run


@pytest.mark.parametrize("how", ["symlink", "hardlink", "dangling-symlink"])
def test_a_planted_lock_name_is_refused_and_its_target_untouched(how: str,
                                                                 tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "imgs", per_class=1)
    out = tmp_path / "f.h5"
    victim = tmp_path / "precious.txt"
    if how != "dangling-symlink":
        victim.write_text("do not truncate me\n")
    if how == "hardlink":
        os.link(victim, lock_path(out))
    else:
        lock_path(out).symlink_to(victim)

    with pytest.raises(UnsafeLock, match="refusing to write through it"):
        run(opts(folder, out), features_fn=fake_features)
    if how == "dangling-symlink":
        assert not victim.exists()  # not created through the link either
    else:
        assert victim.read_text() == "do not truncate me\n"
    assert not out.exists()

    lock_path(out).unlink()  # removed: the next run goes ahead
    assert run(opts(folder, out), features_fn=fake_features).total == 2


def test_the_lock_file_is_plain_and_removed(tmp_path: Path) -> None:
    out = tmp_path / "f.h5"
    with exclusive(out) as lock:
        assert lock.is_file() and not lock.is_symlink()
        assert lock.read_text().startswith(f"pid {os.getpid()} ")
    assert not lock.exists()
