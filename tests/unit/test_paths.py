"""Paths inside an action's input root: created and resolved without leaving it."""

import os
from pathlib import Path

import pytest

from reapi.errors import InvalidArgument
from workers.paths import make_dirs, resolve

ALIASES = ("/exec/root",)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    (r / "d" / "sub").mkdir(parents=True)
    (r / "d" / "file").write_text("inside")
    return r


@pytest.mark.parametrize(
    ("link", "target", "resolved"),
    [
        ("rel", "d/file", "d/file"),
        ("abs", "/exec/root/d/file", "d/file"),
        ("up", "d/sub/../file", "d/file"),
        ("dir", "d", "d"),
    ],
)
def test_it_follows_symlinks_that_stay_inside(root: Path, link: str, target: str, resolved: str) -> None:
    os.symlink(target, root / link)
    assert resolve(root, link, ALIASES, "output") == root / resolved


@pytest.mark.parametrize("target", ["/etc/passwd", "../../..", "d/../../x", "/exec", "/exec/rootx/y"])
def test_it_refuses_a_symlink_leading_outside(root: Path, target: str) -> None:
    os.symlink(target, root / "out")
    with pytest.raises(InvalidArgument, match="leading outside the input root"):
        resolve(root, "out", ALIASES, "output")


def test_it_refuses_a_parent_symlink_leading_outside(root: Path) -> None:
    os.symlink("/usr", root / "escape")
    with pytest.raises(InvalidArgument, match="leading outside"):
        resolve(root, "escape/bin/sh", ALIASES, "output")


def test_a_symlink_loop_ends_with_an_error(root: Path) -> None:
    os.symlink("b", root / "a")
    os.symlink("a", root / "b")
    with pytest.raises(InvalidArgument, match="too many levels of symlinks"):
        resolve(root, "a", ALIASES, "output")


@pytest.mark.parametrize("rel", ["../x", "/abs", "a/../../x", ""])
def test_it_refuses_paths_that_are_not_relative_and_inside(root: Path, rel: str) -> None:
    with pytest.raises(InvalidArgument, match="relative path inside the input root"):
        resolve(root, rel, ALIASES, "output")


def test_make_dirs_never_goes_through_a_symlink(root: Path, tmp_path: Path) -> None:
    os.symlink(str(tmp_path), root / "link")
    with pytest.raises(InvalidArgument, match="passes through a symlink"):
        make_dirs(root, "link/evil", None, "output file")
    assert not (tmp_path / "evil").exists()
    assert make_dirs(root, "new/deeper", None, "output file") == root / "new" / "deeper"
    assert (root / "new" / "deeper").is_dir()
