"""What one ``flwr run`` on a local deployment gave (:class:`RunOutcome`), the error
when it failed (:class:`DeployFailed`), and how the reason is read from its log."""

from __future__ import annotations

import re
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

RUN_STARTED = re.compile(r"Successfully started run (\d+)")
EXCEPTION_LINE = re.compile(
    r"^(?:[A-Za-z_][\w.]*\.)?[A-Z]\w*(?:Error|Exception|Failed|Exit)\b(?::.*)?$",
    re.MULTILINE,
)


class DeployFailed(RuntimeError):
    """The deployment could not start, or the run did not complete."""


@dataclass
class RunOutcome:
    """Result of one ``flwr run`` on the deployment."""

    run_id: str
    status: str
    details: str
    run_dir: Path
    summary: dict[str, Any] | None
    wall_s: float
    log_path: Path
    extra: dict[str, Any] = field(default_factory=dict)


def last_exception(log: str) -> str:
    """The last Python exception line (``ValueError: ...``) in a streamed ServerApp
    log."""
    found = EXCEPTION_LINE.findall(log)
    return found[-1].strip() if found else ""
