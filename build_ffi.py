"""Build the C core (csrc/) as the cffi extension ``virtiofsd_nydus._vnc``.

Each header in csrc/ carries its public declarations between ``CDEF-BEGIN`` and
``CDEF-END`` markers: that text is both the C header and the cffi cdef, so the two
cannot drift. Every ``.c`` file in csrc/ is compiled in. Exported symbols are ``vn_*``.
"""

from __future__ import annotations

import re
import shutil
import sys
import sysconfig
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
CSRC = HERE / "csrc"
_CDEF = re.compile(r"/\*\s*CDEF-BEGIN\s*\*/(.*?)/\*\s*CDEF-END\s*\*/", re.S)


def _check_compiler() -> None:
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(cc) is None:
        sys.exit(f"error: no C compiler ({cc!r}) found: install gcc (apt-get install gcc)")


def _cdef() -> str:
    parts = []
    for header in sorted(CSRC.glob("*.h")):
        parts.extend(m.group(1) for m in _CDEF.finditer(header.read_text()))
    return "\n".join(parts)


def make_builder() -> FFI:
    ffi = FFI()
    ffi.cdef(_cdef())
    headers = "\n".join(f'#include "{h.name}"' for h in sorted(CSRC.glob("*.h")))
    ffi.set_source(
        "virtiofsd_nydus._vnc",
        headers,
        sources=[str(p.relative_to(HERE)) for p in sorted(CSRC.glob("*.c"))],
        include_dirs=[str(CSRC)],
        extra_compile_args=[
            "-O2",
            "-std=gnu11",
            "-Wall",
            "-Wextra",
            "-Werror=implicit-function-declaration",
            "-fno-strict-aliasing",
            "-D_GNU_SOURCE",
        ],
    )
    return ffi


_check_compiler()
ffibuilder = make_builder()

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=str(HERE / "build"), verbose=True)
