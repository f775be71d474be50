from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fastpath.rig import Rig, tree
from tests.fuse.images import Built, build


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    b = build(tree(), tmp_path_factory.mktemp("image"))
    yield b
    b.bootstrap.close()


RigFactory = Callable[..., Rig]


@pytest.fixture
def make_rig(built: Built, tmp_path: Path) -> Iterator[RigFactory]:
    rigs: list[Rig] = []

    def make(**kw: Any) -> Rig:
        bs = kw.pop("bootstrap", built.bootstrap)
        rig = Rig(bs, built.blob_path.parent, tmp_path / f"cache{len(rigs)}", **kw)
        rigs.append(rig)
        return rig

    yield make
    for r in rigs:
        r.close()


@pytest.fixture
def rig(make_rig: RigFactory) -> Rig:
    return make_rig()
