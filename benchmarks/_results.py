"""Write a benchmark's figures into its own section of ``benchmarks/RESULTS.md``.

Each benchmark owns one section, delimited by ``<!-- begin NAME -->`` / ``<!-- end NAME
-->``; :func:`write_section` replaces that section (or appends it) under a file lock, so
several benchmark scripts can update the file without losing each other's figures. Every
section records the command, the machine and the date.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import os
import platform
import shlex
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
HEADER = (
    "# Benchmark results\n\n"
    "Written by the scripts in `benchmarks/` (each owns one section). Figures are "
    "from the\n"
    "machine named in each section; compare ratios measured in the same run, not "
    "absolute times.\n"
)


def machine() -> str:
    """A one-line description of this machine."""
    return (
        f"{os.cpu_count()} cores, {platform.machine()}, Python "
        f"{platform.python_version()}, {platform.system()}"
    )


def write_section(name: str, title: str, body: str, command: str | None = None) -> None:
    """Replace (or append) section ``name`` of RESULTS.md with ``body`` (markdown)."""
    command = command or "python " + " ".join(shlex.quote(a) for a in sys.argv)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    block = (
        f"<!-- begin {name} -->\n## {title}\n\n"
        f"- command: `{command}`\n- machine: {machine()}\n- date: "
        f"{stamp}\n\n{body.rstrip()}\n"
        f"<!-- end {name} -->\n"
    )
    RESULTS.touch(exist_ok=True)
    with open(RESULTS, "r+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        text = fh.read() or HEADER
        begin, end = f"<!-- begin {name} -->", f"<!-- end {name} -->"
        if begin in text and end in text:
            head, rest = text.split(begin, 1)
            _, tail = rest.split(end, 1)
            text = head + block.rstrip("\n") + tail
        else:
            text = text.rstrip("\n") + "\n\n" + block
        fh.seek(0)
        fh.write(text)
        fh.truncate()
        fcntl.flock(fh, fcntl.LOCK_UN)


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    """A markdown table of ``rows`` restricted to ``columns``."""

    def fmt(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def not_yet_run(
    names: list[str], command: str, *, shown: int = 12, note: str = ""
) -> str:
    """The RESULTS.md line naming the cells still to run (the first ``shown``) and the
    command that runs them; ``note`` follows the count (e.g. an estimated time)."""
    if not names:
        return ""
    count = f"{len(names)} cell{'' if len(names) == 1 else 's'}{note}"
    more = " ..." if len(names) > shown else ""
    listed = ", ".join(names[:shown])
    return f"\n**Not yet run** ({count}): {listed}{more}. Command: `{command}`.\n"
