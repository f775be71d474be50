"""Whatever bytes arrive, the server answers with a well-formed reply or nothing."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from virtiofsd_nydus.fuse import abi
from virtiofsd_nydus.fuse.abi import Opcode
from virtiofsd_nydus.fuse.imagefs import ImageFS
from virtiofsd_nydus.fuse.passthroughfs import PassthroughFS
from virtiofsd_nydus.fuse.pseudofs import PseudoFS
from virtiofsd_nydus.fuse.server import Server

from .images import Built, File, Link, build
from .memfs import sample
from .wire import BIG, KERNEL_FLAGS, KERNEL_FLAGS2, init_body, request


class _Bugs(logging.Handler):
    """Collects log records carrying a traceback: the server's 'internal error' path."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.records.append(record)


@pytest.fixture(autouse=True)
def no_internal_errors() -> Iterator[None]:
    bugs = _Bugs()
    logger = logging.getLogger("virtiofsd_nydus")
    logger.addHandler(bugs)
    try:
        yield
    finally:
        logger.removeHandler(bugs)
    assert not bugs.records, [r.getMessage() for r in bugs.records]


def check(reply: bytes | None, max_reply: int) -> None:
    if reply is None:
        return
    assert len(reply) >= abi.OUT_HEADER.size
    assert len(reply) <= max_reply
    n, error, _ = abi.OUT_HEADER.unpack_from(reply)
    assert n == len(reply)
    assert -4095 <= error <= 0
    if error:
        assert n == abi.OUT_HEADER.size


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Built:
    tree = {
        b"f": File(b"data" * 3000, holes=frozenset()),
        b"d": {b"x": File(b"x"), b"l": Link(b"../f")},
    }
    return build(tree, Path(tmp_path_factory.mktemp("fuzz")))


@pytest.fixture(scope="module")
def passthrough(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PassthroughFS]:
    d = Path(tmp_path_factory.mktemp("fuzz-pt"))
    (d / "f").write_bytes(b"data")
    (d / "d").mkdir()
    fs = PassthroughFS(d)
    yield fs
    fs.close()


def _servers(image: Built, passthrough: PassthroughFS) -> list[Server]:
    out = []
    pseudo = PseudoFS()
    pseudo.mount("/containers", passthrough)
    pseudo.mount("/rafs/c/lowerdir", ImageFS(image.bootstrap, image.source))
    for fs in (sample()[0], ImageFS(image.bootstrap, image.source), passthrough, pseudo):
        srv = Server(fs)
        srv.handle(request(Opcode.INIT, init_body(38, KERNEL_FLAGS, KERNEL_FLAGS2)), BIG)
        out.append(srv)
    return out


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(max_size=300), max_reply=st.integers(0, 1 << 17))
def test_random_bytes(
    image: Built, passthrough: PassthroughFS, data: bytes, max_reply: int
) -> None:
    for srv in [Server(sample()[0]), *_servers(image, passthrough)]:
        check(srv.handle(data, max_reply), max_reply)


_ops = st.one_of(st.sampled_from(list(Opcode)), st.integers(0, 70))
_small = st.one_of(
    st.integers(0, 8),
    st.integers(0, 2**64 - 1),
    st.sampled_from([1 << 56 | 1, 1 << 56 | 2, 2 << 56 | 1, 2 << 56 | 3]),
)


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    opcode=_ops,
    nodeid=_small,
    body=st.one_of(
        st.binary(max_size=200),
        # plausible argument structs with hostile numbers, optionally followed by a name
        st.builds(
            lambda nums, tail: b"".join(n.to_bytes(8, "little") for n in nums) + tail,
            st.lists(_small, max_size=8),
            st.one_of(st.just(b""), st.binary(max_size=20), st.just(b"f\0"), st.just(b"d\0")),
        ),
    ),
    extlen=st.integers(0, 3),
    max_reply=st.one_of(st.just(BIG), st.integers(0, 4096)),
)
def test_structured_requests(
    image: Built,
    passthrough: PassthroughFS,
    opcode: int,
    nodeid: int,
    body: bytes,
    extlen: int,
    max_reply: int,
) -> None:
    for srv in _servers(image, passthrough):
        raw = request(opcode, body, nodeid=nodeid, extlen=extlen)
        check(srv.handle(raw, max_reply), max_reply)
        # and the session still works afterwards
        assert srv.handle(request(Opcode.GETATTR, abi.GETATTR_IN.pack(0, 0, 0)), BIG) is not None
