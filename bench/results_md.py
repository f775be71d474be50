"""bench/RESULTS.md: one ``## Title`` section per benchmark, each rewritten by its own script."""

from __future__ import annotations

import re
from pathlib import Path

PATH = Path(__file__).parent / "RESULTS.md"
HEADER = """# Benchmark results

Machine (all numbers below): 2 cores, 24 GiB RAM, Debian 12, Python 3.11, no KVM (guests
run under TCG). The box is shared with other work: single runs move by 10-50%, so each
section gives its spread or its number of runs. Each section is written by the script it
names; `make bench` runs them all in a quick mode (without touching this file).
"""


def write_section(title: str, body: str, path: Path = PATH) -> None:
    """Replace (or append) the section ``## TITLE`` with BODY, keeping every other section."""
    text = _with_header(path.read_text() if path.exists() else HEADER)
    block = f"## {title}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _m: block + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text.rstrip("\n") + "\n")


def _with_header(text: str) -> str:
    """TEXT with today's title and machine paragraph in place of whatever preceded the
    first section."""
    first = re.search(r"^## ", text, re.M)
    return HEADER + ("\n" + text[first.start() :] if first else "")


def write_report(title: str, lines: list[str], note: str = "") -> None:
    """A section holding the running script's printed report verbatim, with its command line
    (less ``--write``), the date and the load average it ran under."""
    import datetime
    import os
    import sys

    module = getattr(sys.modules["__main__"].__spec__, "name", sys.argv[0])
    command = " ".join(["python -m", module, *(a for a in sys.argv[1:] if a != "--write")])
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    body = (
        f"Command: `{command}` ({datetime.date.today()}, {os.cpu_count()} CPUs, "
        f"load average {load} at the end).\n\n```\n" + "\n".join(lines) + "\n```\n"
    )
    write_section(title, body + (f"\n{note.strip()}\n" if note else ""))
