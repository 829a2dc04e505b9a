"""Atomic writes: unwritable paths are one clear UserError, and files get the user's umask, not 0600."""

import os
import stat

import pytest

from lensgen.errors import UserError
from lensgen.io import atomic_open, atomic_write_bytes, atomic_write_text, check_writable, current_umask


@pytest.fixture
def umask():
    """Set a umask for one test and restore the old one after."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda mask: os.umask(mask)
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask,expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path, umask, mask, expected):
    umask(mask)
    assert current_umask() == mask
    atomic_write_bytes(tmp_path / "a.png", b"x")
    atomic_write_text(tmp_path / "sub" / "index.html", "<p>")
    assert _mode(tmp_path / "a.png") == expected and _mode(tmp_path / "sub" / "index.html") == expected


def test_unwritable_paths_are_user_errors_naming_the_path(tmp_path):
    with pytest.raises(UserError, match=r"cannot write /proc/x\.png: cannot create a file in /proc: "):
        atomic_write_bytes("/proc/x.png", b"x")
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    with pytest.raises(UserError, match=rf"cannot write {blocker}/out\.png: cannot create its folder"):
        atomic_write_bytes(blocker / "out.png", b"x")
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(UserError, match=r"dir\.png: Is a directory"):
        atomic_write_bytes(tmp_path / "dir.png", b"x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.png", "file.txt"]  # no temp file left behind


def test_a_failed_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_open(path, "w") as f:
        f.write("new")
        raise RuntimeError("crash")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_check_writable_fails_before_any_work(tmp_path):
    check_writable(tmp_path / "new" / "deeper" / "out.png")  # folders that do not exist yet are fine
    assert not (tmp_path / "new").exists() and list(tmp_path.iterdir()) == []
    with pytest.raises(UserError, match="cannot create a file in /proc"):
        check_writable("/proc/x.png")
    (tmp_path / "f").write_text("")
    with pytest.raises(UserError, match="is a file, not a folder"):
        check_writable(tmp_path / "f" / "x.png")
    with pytest.raises(UserError, match="it is a folder"):
        check_writable(tmp_path)
