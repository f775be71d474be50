"""Our cpio writer produces archives that cpio(1) reads back exactly (no guest needed)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.vm.cpio import CpioWriter


def test_cpio_round_trip(tmp_path: Path) -> None:
    w = CpioWriter()
    w.dir("d", 0o750)
    w.file("d/exe", b"#!/bin/sh\necho hi\n", 0o755)
    w.file("d/odd", os.urandom(4099))  # not a multiple of the 4-byte alignment
    w.file("empty", b"")
    w.symlink("link", "d/exe")
    archive = w.finish()
    assert len(archive) % 512 == 0

    out = tmp_path / "out"
    out.mkdir()
    r = subprocess.run(
        ["cpio", "-idm", "--quiet", "--no-absolute-filenames"],
        input=archive,
        cwd=out,
        capture_output=True,
        check=True,
    )
    assert r.stderr == b""
    assert (out / "d/exe").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert (out / "d/exe").stat().st_mode & 0o777 == 0o755
    assert (out / "d").stat().st_mode & 0o777 == 0o750
    assert len((out / "d/odd").read_bytes()) == 4099
    assert (out / "empty").read_bytes() == b""
    assert os.readlink(out / "link") == "d/exe"


def test_concatenated_archives_later_wins(tmp_path: Path) -> None:
    first, second = CpioWriter(), CpioWriter()
    first.file("f", b"base")
    second.file("f", b"per-run")
    second.file("g", b"new")
    out = tmp_path / "out"
    out.mkdir()
    # the kernel unpacks each archive of a concatenation in turn; cpio(1) stops at the first
    # trailer, so feed it one archive at a time, in order
    for part in (first.finish(), second.finish()):
        subprocess.run(["cpio", "-idmu", "--quiet"], input=part, cwd=out, check=True)
    assert (out / "f").read_bytes() == b"per-run"
    assert (out / "g").read_bytes() == b"new"
