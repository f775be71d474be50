"""Bootstrap.trim drops the mapping's pages from this process's RSS and nothing else.

Measured with /proc/self/smaps (the mapping's own Rss line). mincore() would not do: for
a file mapping it reports whether pages are in the page cache, which a trim leaves alone.
"""

from __future__ import annotations

import mmap
import sys
from pathlib import Path

import pytest

from tests.format.helpers import directory, reg
from virtiofsd_nydus.format.model import Image
from virtiofsd_nydus.format.reader import Bootstrap
from virtiofsd_nydus.format.writer import write_bootstrap_file

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="/proc/self/smaps")

FILES = 40_000  # ~5 MiB of bootstrap


def mapping_rss_kb(path: Path) -> int:
    """Rss of this process's mapping of PATH (kB, summed over its VMAs)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split(maxsplit=5)
            if "-" in head[0] and not head[0].endswith(":"):  # a VMA header line
                inside = len(head) == 6 and head[5].strip() == str(path)
            elif inside and head[0] == "Rss:":
                total += int(head[1])
    return total


def touch_every_page(bs: Bootstrap) -> None:
    buf = bs._buf
    for off in range(0, len(buf), mmap.PAGESIZE):
        buf[off]


def write_big_bootstrap(path: Path) -> Path:
    """A bootstrap of FILES files (~5 MiB, many pages) at PATH."""
    files = {b"f%06d" % i: reg(i, mtime_ns=i) for i in range(FILES)}
    image = Image(root=directory({b"d": directory(files)}), blobs=[], chunk_size=1 << 20)
    write_bootstrap_file(image, path)
    assert path.stat().st_size > 4 << 20
    return path


@pytest.fixture(scope="module")
def boot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_big_bootstrap(tmp_path_factory.mktemp("trim") / "image.boot")


def test_trim_drops_the_mapping_from_rss(boot: Path) -> None:
    with Bootstrap.open(boot) as bs:
        assert bs.mapped
        touch_every_page(bs)
        before = mapping_rss_kb(boot)
        assert before * 1024 >= boot.stat().st_size - mmap.PAGESIZE  # every page mapped
        assert bs.trim()
        assert mapping_rss_kb(boot) == 0


def test_reads_after_a_trim_fault_back_the_same_bytes(boot: Path) -> None:
    with Bootstrap.open(boot) as bs:
        d = bs.lookup(bs.root_ino, b"d")
        assert d is not None
        want = [(bs.lookup(d, b"f%06d" % i), i) for i in range(0, FILES, 997)]
        assert bs.trim()
        # the lookup keys' memoryview (and any address into the mapping) stays valid
        for i in range(0, FILES, 997):
            ino = bs.lookup(d, b"f%06d" % i)
            assert ino is not None and (ino, i) in want
            assert bs.inode(ino).size == i


def test_verify_leaves_nothing_mapped(boot: Path) -> None:
    with Bootstrap.open(boot) as bs:
        bs.verify()
        bs.verify_merkle()
        assert mapping_rss_kb(boot) == 0


def test_nothing_to_trim_in_bytes_or_after_close(boot: Path) -> None:
    copy = Bootstrap.from_bytes(boot.read_bytes())
    assert not copy.mapped
    assert not copy.trim()  # MADV_DONTNEED on a heap copy would zero it: never done
    assert copy.lookup(copy.root_ino, b"d") is not None
    bs = Bootstrap.open(boot)
    bs.close()
    assert not bs.trim()
