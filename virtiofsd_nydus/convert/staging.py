"""Never leave a half-written output that looks valid: build in a sibling temp dir, rename."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..errors import LocalError


@contextlib.contextmanager
def staged_dir(output: Path) -> Iterator[Path]:
    """Yield ``OUTPUT.tmp-XXXX``; on success it becomes ``output``, on any error it is removed."""
    output = output.absolute()
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise LocalError(f"{output}: already exists and is not an empty directory")
    if not output.parent.is_dir():
        raise LocalError(f"{output.parent}: no such directory")
    try:
        tmp = Path(tempfile.mkdtemp(prefix=output.name + ".tmp-", dir=output.parent))
    except OSError as exc:
        raise LocalError(f"cannot create a directory next to {output}: {exc.strerror}") from None
    try:
        yield tmp
        tmp.chmod(0o755)
        os.rename(tmp, output)  # replaces an empty directory atomically
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
