"""A container's own changes (docker diff, docker commit): the engine's files and the mount points the
runtime added are left out, and the folder that changed only because it holds them."""

from __future__ import annotations

from services.highlevel.snapshots.snapshotter import Change, ChangeKind, without_engine_paths

A, C, D = ChangeKind.ADDED, ChangeKind.MODIFIED, ChangeKind.DELETED


def changes(*items: tuple[ChangeKind, str]) -> list[Change]:
    return [Change(kind, path) for kind, path in items]


def test_only_the_engines_files_in_etc() -> None:
    got = without_engine_paths(changes((C, "/etc"), (A, "/etc/hosts"), (A, "/etc/resolv.conf"), (A, "/test")))
    assert got == changes((A, "/test"))


def test_a_folder_added_for_them_goes_too() -> None:
    assert without_engine_paths(changes((A, "/etc"), (A, "/etc/hostname"))) == []


def test_the_containers_own_file_beside_them_keeps_the_folder() -> None:
    got = without_engine_paths(changes((C, "/etc"), (A, "/etc/hosts"), (A, "/etc/mine")))
    assert got == changes((C, "/etc"), (A, "/etc/mine"))


def test_bare_mount_points_go_but_not_filled_ones() -> None:
    got = without_engine_paths(changes((A, "/dev"), (A, "/proc"), (A, "/sys"), (A, "/sys/x")))
    assert got == changes((A, "/sys"), (A, "/sys/x"))
    # One the image had and the container changed is the container's.
    assert without_engine_paths(changes((C, "/proc"))) == changes((C, "/proc"))


def test_nothing_to_hide_is_left_alone() -> None:
    items = changes((D, "/bin/true"), (A, "/srv"), (A, "/srv/f"), (C, "/etc/passwd"))
    assert without_engine_paths(items) == items
