"""A corrupted blob in a real guest: the damaged chunk reads as EIO, never as wrong bytes,
everything else still reads, and the daemon's log names the blob and the chunk."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from tests.e2e.images import Converted, MiB, SourceImage
from tests.vm.guest import run_guest
from tests.vm.ours import OursFactory
from virtiofsd_nydus.format.reader import Bootstrap

pytestmark = pytest.mark.vm

_VICTIM = "mib/several"  # 3 MiB + 4097 bytes: four chunks; the second one is damaged

_SCRIPT = f"""
cat {_VICTIM} > /tmp/out 2>/tmp/err; echo "cat rc=$?"
cat /tmp/err
echo "bytes out: $(wc -c < /tmp/out)"; sha256sum /tmp/out
echo "first chunk: $(dd if={_VICTIM} bs=1M count=1 2>/dev/null | sha256sum)"
echo "last chunk: $(dd if={_VICTIM} bs=1M skip=2 2>/dev/null | sha256sum)"
dd if={_VICTIM} of=/dev/null bs=4096 skip=300 count=1 2>/dev/null; echo "dd in chunk 1 rc=$?"
sha256sum mib/exact mib/plus data/big
"""


def _corrupt_chunk(image: Path, path: str, file_offset: int) -> tuple[str, int]:
    """Flip bytes inside the stored chunk at FILE_OFFSET of PATH; returns (blob hex, chunk)."""
    with Bootstrap.open(image / "image.boot") as bs:
        ino = bs.resolve(b"/" + path.encode())
        assert ino is not None
        [(_, index)] = bs.chunks_covering(ino, file_offset, 1)
        chunk = bs.chunk(index)
        blob = bs.blobs[chunk.blob_index].digest.removeprefix("sha256:")
    blob_path = image / "blobs" / "sha256" / blob
    data = bytearray(blob_path.read_bytes())
    mid = chunk.compressed_offset + chunk.compressed_size // 2
    for i in range(mid, min(mid + 16, chunk.compressed_offset + chunk.compressed_size)):
        data[i] ^= 0x5A
    blob_path.unlink()  # the copy may share nothing with the original, but be sure
    blob_path.write_bytes(bytes(data))
    return blob, index


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_corrupt_chunk_is_eio_in_the_guest(
    e2e_image: Converted, e2e_source: SourceImage, vnydus_daemon: OursFactory, tmp_path: Path
) -> None:
    image = tmp_path / "image"
    shutil.copytree(e2e_image.image, image)
    blob, chunk = _corrupt_chunk(image, _VICTIM, MiB)
    daemon = vnydus_daemon(image=image, cache_dir=tmp_path / "fresh-cache")
    r = run_guest(daemon.socket_path, _SCRIPT, timeout=240)
    assert r.status == 0, r.output
    ref = e2e_source.reference
    content = (ref / _VICTIM).read_bytes()
    lines = r.output.splitlines()
    assert lines[0] != "cat rc=0", r.output
    assert "Input/output error" in lines[1], r.output
    # whatever cat wrote before the error is a correct prefix, and stops before chunk 1 ends
    n = int(lines[2].removeprefix("bytes out: "))
    assert n < 2 * MiB
    assert lines[3] == f"{_sha(content[:n])}  /tmp/out"
    assert lines[4] == f"first chunk: {_sha(content[:MiB])}  -"
    assert lines[5] == f"last chunk: {_sha(content[2 * MiB :])}  -"
    assert lines[6] != "dd in chunk 1 rc=0"
    assert lines[7:] == [
        f"{_sha((ref / p).read_bytes())}  {p}" for p in ("mib/exact", "mib/plus", "data/big")
    ]
    log = daemon.log()
    named = [line for line in log.splitlines() if blob in line and f"chunk={chunk}" in line]
    assert named, f"no log line names blob {blob} and chunk {chunk}:\n{log[-3000:]}"
