"""Random rings: pop either returns chains whose every iovec lies inside guest memory, or
breaks the queue; it never crashes and never writes guest memory (EVENT_IDX off)."""

from __future__ import annotations

import os
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from virtiofsd_nydus._native import ffi
from virtiofsd_nydus.vhost.vring import Virtqueue

from .driver import Driver, Layout, make_memory

N = 8
K = 64 << 10  # small regions keep the before/after comparison cheap
WILD = st.tuples(
    st.one_of(
        st.integers(0, 6 * K),  # inside, around the edges and in the hole
        st.sampled_from([K - 8, 2 * K - 8, 4 * K - 8, 5 * K - 8, 0x8000]),
        st.integers(0, (1 << 64) - 1),
    ),
    st.integers(0, 1 << 18) | st.integers(0, (1 << 32) - 1),
    st.integers(0, 7),
    st.integers(0, N + 1),
)
# Mostly plausible descriptors, so that many chains pop and get checked.
PLAUSIBLE = st.tuples(
    st.sampled_from([0x10000, K - 100, 4 * K + 64, 0x9000]),
    st.integers(0, 300),
    st.sampled_from([0, 1, 2, 3]),
    st.integers(0, 3),
)
INDIRECT = st.tuples(
    st.just(0x8000), st.integers(1, 4).map(lambda n: 16 * n), st.just(4), st.just(0)
)
DESC = st.one_of(PLAUSIBLE, PLAUSIBLE, PLAUSIBLE, INDIRECT, WILD)

MEM, _FD = make_memory(Layout(((0, K, 0), (K, K, K), (4 * K, K, 2 * K))))
os.close(_FD)
SPANS = [
    (int(ffi.cast("uintptr_t", MEM.table.regions[i].host)), int(MEM.table.regions[i].size))
    for i in range(MEM.table.nregions)
]


def inside(base: int, length: int) -> bool:
    return any(lo <= base and base + length <= lo + size for lo, size in SPANS)


@settings(max_examples=200, deadline=None)
@given(
    descs=st.lists(DESC, min_size=N, max_size=N),
    table=st.lists(st.one_of(PLAUSIBLE, PLAUSIBLE, PLAUSIBLE, WILD), min_size=4, max_size=4),
    heads=st.lists(
        st.integers(0, N - 1) | st.integers(0, N + 2), min_size=1, max_size=N, unique=True
    ),
    jump=st.integers(0, 15),
)
def test_random_rings(
    descs: list[tuple[int, int, int, int]],
    table: list[tuple[int, int, int, int]],
    heads: list[int],
    jump: int,
) -> None:
    drv = Driver(MEM, N)
    for i, d in enumerate(descs):
        drv.set_desc(i, *d)
    for i, d in enumerate(table):  # an indirect table some descriptors may point at
        drv.set_desc(i, *d, table=0x8000)
    drv.publish(*heads)
    if jump == 15:
        drv.set_avail_idx(len(heads) + N)
    vq = Virtqueue(0, MEM, batch_size=N)
    vq.start(N, 0, drv.desc, drv.avail, drv.used, False)
    before = drv.snapshot()
    chains = vq.pop() + vq.pop()
    for c in chains:
        cd = c.cdata
        total = 0
        for k in range(cd.nread + cd.nwrite):
            base, length = int(ffi.cast("uintptr_t", cd.iov[k].base)), int(cd.iov[k].len)
            assert length > 0 and inside(base, length)
            total += length
        assert total == c.read_len + c.write_len
    assert drv.snapshot() == before
    assert len(chains) == len(heads) or vq.broken is not None
    assert struct.unpack_from("<H", MEM.view(drv.used + 2, 2))[0] == 0
