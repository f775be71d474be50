from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .treesnap import diff, snapshot


def vnydus(
    *args: str | Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "virtiofsd_nydus.convert.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def ok(*args: str | Path, env: dict[str, str] | None = None) -> str:
    r = vnydus(*args, env=env)
    assert r.returncode == 0, f"vnydus {args} failed: {r.stderr}"
    return r.stdout


def extract(tar: Path, dest: Path) -> Path:
    dest.mkdir(parents=True)
    subprocess.run(
        [
            "tar",
            "--xattrs",
            "--xattrs-include=*",
            "--numeric-owner",
            "-xpf",
            str(tar),
            "-C",
            str(dest),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return dest


def unpack_tree(image_dir: Path, tmp: Path) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    ok("unpack", image_dir, tmp / "unpacked.tar")
    return extract(tmp / "unpacked.tar", tmp / "unpacked")


def assert_same_tree(reference: Path, got: Path) -> None:
    problems = diff(snapshot(str(reference)), snapshot(str(got)))
    assert not problems, "trees differ:\n" + "\n".join(problems[:40])


def assert_one_line_error(r: subprocess.CompletedProcess[str], *words: str) -> None:
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("vnydus: error:"), r.stderr
    assert "Traceback" not in r.stderr
    for w in words:
        assert w.lower() in lines[0].lower(), lines[0]
