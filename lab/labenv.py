"""Where the lab lives, its fixed ports and credentials, and running its tools (``labkit`` re-exports these)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path


REPO_ROOT = Path(__file__).resolve().parents[1]
LAB_DIR = REPO_ROOT / "lab"
LAB_CACHE = Path(os.environ.get("LAB_CACHE", LAB_DIR / ".cache"))
LAB_ROOT = Path(os.environ.get("LAB_ROOT", LAB_CACHE / "root"))

ARI_USER = "voiceline"
DEFAULT_ARI_PASSWORD = "voiceline-lab"
DEFAULT_AUDIOSOCKET_PORT = 9092
HTTP_URL = "http://127.0.0.1:8088"
SIP_PORT = 5060
SIPP_SIP_PORT = 5070
SIPP_RTP_PORT = 6000
ASTERISK_RTP_PORTS = (20000, 20999)
SAMPLE_RATE = 8000

REQUIRED_TOOLS = ("sipp", "tshark", "espeak-ng", "sox", "curl", "debootstrap")


class LabError(RuntimeError):
    """A lab script or tool failed; the message carries its output tail."""


# One user of the lab Asterisk (its SIP and ARI ports, the engine's listeners) at a
# time: the end-to-end session and the comparison bench both take this lock.
LAB_LOCK_PATH = LAB_CACHE / "e2e.lock"


@contextlib.contextmanager
def lab_lock() -> Iterator[None]:
    """Hold the lab's lock (waits while another run holds it)."""
    LAB_LOCK_PATH.parent.mkdir(parents=True, exist_ok=True)
    with LAB_LOCK_PATH.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def new_call_dir(label: str) -> Path:
    """A fresh directory for one call's (or one load's) files under the lab cache."""
    (LAB_CACHE / "calls").mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{time.strftime('%Y%m%d-%H%M%S')}-{label}-", dir=LAB_CACHE / "calls"))


def tail_lines(text: str, lines: int = 40) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def need_tool(tool: str) -> str:
    found = shutil.which(tool)
    if not found:
        raise LabError(f"{tool} is not installed (run lab/setup.sh)")
    return found


def run_tool(cmd: Sequence[str], timeout: float = 60.0) -> None:
    proc = subprocess.run(
        list(cmd), capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        raise LabError(
            f"{' '.join(cmd)} failed ({proc.returncode}): "
            f"{tail_lines(proc.stdout + proc.stderr)}"
        )
