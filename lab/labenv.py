"""Where the lab lives, its fixed ports and credentials, and running its tools (``labkit`` re-exports these)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
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
