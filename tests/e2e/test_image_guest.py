"""A real guest mounts an image converted from a multi-layer OCI image.

One boot serves both back-ends side by side: ours (the converted image, on /mnt) and the
reference virtiofsd (umoci's unpack of the same image, read-only, on /ref). The guest runs
the same script over both; the host compares ours with its own listing of the unpack, and
ours with virtiofsd's output line by line. A program from the image runs in a chroot.
"""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass

import pytest

from tests.e2e.images import Converted, SourceImage
from tests.e2e.listing import GUEST_LISTING, diff_lines, host_listing, parse_guest
from tests.vm.guest import run_guest
from tests.vm.ours import our_virtiofsd
from tests.vm.process import short_tmpdir
from tests.vm.reference import reference_virtiofsd

pytestmark = pytest.mark.vm

# corners of the tree whose behaviour (not only metadata) must match virtiofsd's
_PROBE = """
probe() (
  cd "$1" || exit 1
  for l in abs rel dangling bin/sh bin/ls; do echo "readlink $l: $(readlink "$l")"; done
  cat rel; cat abs 2>&1 | sed "s|$1||"
  cat dangling 2>/dev/null; echo "dangling rc=$?"
  echo "via a relative link: $(head -c 4 bin/sh | od -An -c)"
  ls -ln dev | sed 1d | awk '{print $1, $3, $4, $5, $6, $NF}'
  echo "dev/null bytes: $(cat dev/null | wc -c)"
  echo "holes@2M: $(dd if=mib/holes bs=1 skip=2097152 count=11 2>/dev/null | od -An -c | tr -s ' ')"
  echo "holes@6M: $(dd if=mib/holes bs=4096 skip=1536 count=1 2>/dev/null | od -An -x | sort -u)"
  echo "tail of minus: $(tail -c 5 mib/minus | od -An -tx1)"
  echo "opq: $(ls opq | tr '\\n' ' ')"; echo "old: $(ls -d old 2>&1 | sed "s|$1||")"
  echo "data: $(ls data | tr '\\n' ' ')"
  echo "long: $(ls mib | grep -c '^LLLL')"; cat "mib/Ωμέγα dir/inner file" mib/日本語のファイル名
  [ "$(stat -c %i mib/plus)" = "$(stat -c %i mib/plus-hardlink)" ] && echo "plus: one inode"
  [ "$(stat -c %i data/exact)" = "$(stat -c %i data/xhl)" ] && echo "xhl: one inode"
  touch new-file 2>&1 | sed "s|$1||"; mkdir new-dir 2>&1 | sed "s|$1||"
  rm etc/motd 2>&1 | sed "s|$1||"
  cat no/such/file 2>&1 | sed "s|$1||"
  echo "end of probe"
)
"""

_PROGRAM = (
    'cat /etc/motd; /bin/tool; echo "mib holds $(ls /mib | wc -l) names"; '
    'cd /mib && sha256sum exact plus; echo "kernel $(uname -s)"'
)

_SCRIPT = f"""
{GUEST_LISTING}
{_PROBE}
mkdir -p /ref && mount -t virtiofs ref /ref || echo "REF-MOUNT-FAILED"
echo "==ours-listing"; listing "$VNYDUS_SHARE"
echo "==ref-listing"; listing /ref
echo "==ours-probe"; probe "$VNYDUS_SHARE"
echo "==ref-probe"; probe /ref
echo "==program"
chroot "$VNYDUS_SHARE" /bin/sh -c '{_PROGRAM}'
echo "program rc=$?"
"""


@dataclass(frozen=True)
class Run:
    sections: dict[str, str]
    output: str
    ours_log: str
    boot_seconds: float


@pytest.fixture(scope="module")
def run(e2e_source: SourceImage, e2e_image: Converted) -> Run:
    """One guest, both back-ends, the whole script."""
    tmp = short_tmpdir("vne2e-")
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, tmp, ignore_errors=True)
        ref = stack.enter_context(reference_virtiofsd(e2e_source.reference, tmp / "ref.sock"))
        ours = stack.enter_context(
            our_virtiofsd(tmp / "ours.sock", image=e2e_image.image, cache_dir=tmp / "cache")
        )
        extra = [
            "-chardev", f"socket,id=ref,path={ref.socket_path}",
            "-device", "vhost-user-fs-pci,queue-size=1024,chardev=ref,tag=ref",
        ]  # fmt: skip
        result = run_guest(ours.socket_path, _SCRIPT, timeout=300, extra_qemu_args=extra)
        assert result.status == 0, result.output + "\n" + ours.log()[-4000:]
        log = ours.log()
    sections: dict[str, str] = {}
    name = ""
    for line in result.output.splitlines(keepends=True):
        if line.startswith("=="):
            name = line[2:].strip()
            sections[name] = ""
        elif name:
            sections[name] += line
    assert "REF-MOUNT-FAILED" not in result.output, result.output
    return Run(sections, result.output, log, result.boot_seconds)


def test_listing_matches_umoci_unpack(run: Run, e2e_source: SourceImage) -> None:
    want = host_listing(e2e_source.reference)
    got = parse_guest(run.sections["ours-listing"])
    assert got == want, diff_lines(want, got) + "\n--- daemon log ---\n" + run.ours_log[-3000:]
    # the listing covers what it should: specials, links, the 1 MiB corner files
    rows = {line.split("|")[0]: line.split("|") for line in got}
    assert rows["./dev/null"][1].startswith("20") and rows["./dev/null"][6] == "1,3"
    assert rows["./dev/loop0"][1].startswith("60") and rows["./dev/loop0"][6] == "7,0"
    assert rows["./mib/fifo"][1] == "10640"
    assert rows["./mib/exact"][5] == str(1 << 20) and rows["./mib/plus"][4] == "2"
    assert rows["./bin/sh"][-1] == "-> busybox"
    assert "hardlinks ./mib/plus ./mib/plus-hardlink" in got


def test_same_output_as_virtiofsd(run: Run) -> None:
    ours = parse_guest(run.sections["ours-listing"])
    ref = parse_guest(run.sections["ref-listing"])
    assert ours == ref, diff_lines(ref, ours)
    ours_probe = run.sections["ours-probe"].splitlines()
    ref_probe = run.sections["ref-probe"].splitlines()
    assert ours_probe == ref_probe, diff_lines(ref_probe, ours_probe)
    assert ours_probe[-1] == "end of probe"
    assert "Read-only file system" in run.sections["ours-probe"]


def test_program_runs_from_the_image(run: Run, e2e_source: SourceImage) -> None:
    import hashlib

    mib = e2e_source.reference / "mib"
    sums = [
        hashlib.sha256((mib / n).read_bytes()).hexdigest() + f"  {n}" for n in ("exact", "plus")
    ]
    names = len(list(mib.iterdir()))
    assert run.sections["program"].splitlines() == [
        "hello from a program inside the image",
        "tool",
        f"mib holds {names} names",
        *sums,
        "kernel Linux",
        "program rc=0",
    ]
