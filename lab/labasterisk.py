"""The lab Asterisk: is the lab usable here, ``lab/setup.sh`` once per process, and
:class:`AsteriskLab` to start/stop the chrooted Asterisk and talk to its CLI, log and ARI."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Self

from labenv import (
    ARI_USER,
    DEFAULT_ARI_PASSWORD,
    DEFAULT_AUDIOSOCKET_PORT,
    HTTP_URL,
    LAB_CACHE,
    LAB_DIR,
    LAB_ROOT,
    REQUIRED_TOOLS,
    LabError,
    tail_lines,
)


def _run_script(
    name: str, env: dict[str, str] | None = None, timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    script = LAB_DIR / name
    full_env = dict(os.environ)
    full_env.update(env or {})
    try:
        proc = subprocess.run(
            ["bash", str(script)],
            env=full_env,
            text=True,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or "") + (exc.stderr or "")
        if isinstance(out, bytes):
            out = out.decode(errors="replace")
        raise LabError(
            f"lab/{name} timed out after {timeout:.0f}s:\n{tail_lines(out)}"
        ) from exc
    if proc.returncode != 0:
        raise LabError(
            f"lab/{name} failed (exit {proc.returncode}):\n"
            f"{tail_lines(proc.stdout + proc.stderr)}"
        )
    return proc


def lab_unavailable_reason() -> str | None:
    """Why the lab cannot run here (for ``pytest.skip``), or None if it can.

    Tools missing from PATH are not a reason: :func:`ensure_lab` installs them.
    """
    if os.name != "posix" or not Path("/proc/self/mounts").exists():
        return "the lab needs Linux"
    if os.geteuid() != 0:
        return "the lab needs root (chroot, mount, packet capture)"
    missing = [t for t in REQUIRED_TOOLS if shutil.which(t) is None]
    if missing and shutil.which("apt-get") is None:
        return f"missing tools and no apt-get to install them: {', '.join(missing)}"
    return None


_LAB_READY = False


def ensure_lab(timeout: float = 1800.0) -> None:
    """Run ``lab/setup.sh`` once per process (seconds when already cached)."""
    global _LAB_READY
    if _LAB_READY:
        return
    reason = lab_unavailable_reason()
    if reason:
        raise LabError(reason)
    _run_script("setup.sh", timeout=timeout)
    _LAB_READY = True


def _in_root(root: Path, path: str) -> Path:
    """Host path of ``path`` as seen inside the chroot (absolute links re-rooted)."""
    parts = [p for p in path.split("/") if p]
    resolved: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == ".":
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = root.joinpath(*resolved, part)
        if candidate.is_symlink():
            hops += 1
            if hops > 40:
                raise LabError(f"too many symlinks resolving {path} in {root}")
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p] + parts
            continue
        resolved.append(part)
    return root.joinpath(*resolved)


class AsteriskLab:
    """Start/stop the lab Asterisk around a block::

        with AsteriskLab() as ast:
            print(ast.cli("core show channels"))

    The config is (re)written by ``lab/configure.sh`` on entry, so the ARI
    password and the AudioSocket port of the ``audiosocket`` extension can be
    chosen per instance. If Asterisk was already running, its configuration
    is reloaded instead and it is left running on exit.
    """

    def __init__(
        self,
        ari_password: str | None = None,
        audiosocket_port: int | None = None,
        start_timeout: float | None = None,
    ) -> None:
        self.ari_user = ARI_USER
        self.ari_password = ari_password or os.environ.get(
            "LAB_ARI_PASSWORD", DEFAULT_ARI_PASSWORD
        )
        self.audiosocket_port = int(
            audiosocket_port
            or os.environ.get("LAB_AUDIOSOCKET_PORT", DEFAULT_AUDIOSOCKET_PORT)
        )
        self.http_url = HTTP_URL
        self.ari_url = f"{HTTP_URL}/ari"
        self.root = LAB_ROOT
        self.start_timeout = start_timeout
        self._owned = False

    # -- lifecycle -----------------------------------------------------
    def _env(self) -> dict[str, str]:
        env = {
            "LAB_ARI_PASSWORD": self.ari_password,
            "LAB_AUDIOSOCKET_PORT": str(self.audiosocket_port),
        }
        if self.start_timeout is not None:
            env["LAB_START_TIMEOUT"] = str(math.ceil(self.start_timeout))
        return env

    def running(self) -> bool:
        pidfile = LAB_CACHE / "asterisk.pid"
        try:
            pid = int(pidfile.read_text().strip())
            os.kill(pid, 0)
        except (OSError, ValueError):
            return False
        return True

    def start(self) -> AsteriskLab:
        was_running = self.running()
        _run_script("configure.sh", env=self._env())
        if was_running:
            # Pick up the freshly written config (ARI users, dialplan, ...).
            self.cli("core reload")
            _run_script("start.sh", env=self._env(), timeout=60)  # waits for ARI
        else:
            _run_script("start.sh", env=self._env(), timeout=60)
            self._owned = True
        return self

    def stop(self) -> None:
        if self._owned:
            _run_script("stop.sh", timeout=60)
            self._owned = False

    def force_stop(self) -> None:
        """Stop Asterisk even if another user of the lab started it (restart tests);
        a later ``start()`` starts it afresh and owns it."""
        _run_script("stop.sh", timeout=60)
        self._owned = False

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- access ----------------------------------------------------------
    def cli(self, cmd: str, timeout: float = 20.0) -> str:
        """Run an Asterisk CLI command (``asterisk -rx``) and return its output."""
        proc = subprocess.run(
            ["chroot", str(self.root), "/usr/sbin/asterisk", "-rx", cmd],
            text=True,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0:
            raise LabError(
                f"asterisk -rx {cmd!r} failed ({proc.returncode}): "
                f"{tail_lines(proc.stdout + proc.stderr)}"
            )
        return proc.stdout

    @property
    def log_path(self) -> Path:
        return _in_root(self.root, "/var/log/asterisk/messages")

    def log_offset(self) -> int:
        """Current size of the Asterisk log; pass to ``log_text(since=...)``."""
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def log_text(self, since: int = 0) -> str:
        """The Asterisk log (``/var/log/asterisk/messages`` in the root)."""
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(since)
                return fh.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def ari_get(self, path: str, timeout: float = 5.0) -> Any:
        """GET ``{ari_url}/{path}`` with the lab credentials; parsed JSON."""
        req = urllib.request.Request(f"{self.ari_url}/{path.lstrip('/')}")
        mgr = urllib.request.HTTPPasswordMgrWithDefaultRealm()
        mgr.add_password(None, self.ari_url, self.ari_user, self.ari_password)
        opener = urllib.request.build_opener(urllib.request.HTTPBasicAuthHandler(mgr))
        with opener.open(req, timeout=timeout) as resp:
            body = resp.read()
        return json.loads(body) if body else None

    def ari_delete(self, path: str, timeout: float = 5.0) -> int:
        """DELETE ``{ari_url}/{path}``; the HTTP status (404 included, not raised)."""
        req = urllib.request.Request(f"{self.ari_url}/{path.lstrip('/')}", method="DELETE")
        mgr = urllib.request.HTTPPasswordMgrWithDefaultRealm()
        mgr.add_password(None, self.ari_url, self.ari_user, self.ari_password)
        opener = urllib.request.build_opener(urllib.request.HTTPBasicAuthHandler(mgr))
        try:
            with opener.open(req, timeout=timeout) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code

    def sweep(self) -> list[str]:
        """Hang up every channel and destroy every bridge (test isolation after a
        failed test); returns what was removed."""
        removed = []
        for channel in self.ari_get("channels"):
            self.ari_delete(f"channels/{channel['id']}")
            removed.append(f"channel {channel['id']} {channel.get('name', '')}")
        for bridge in self.ari_get("bridges"):
            self.ari_delete(f"bridges/{bridge['id']}")
            removed.append(f"bridge {bridge['id']} {bridge.get('name', '')}")
        return removed

    def events_url(self, app: str = "voiceline") -> str:
        """ARI events WebSocket URL for ``app`` (credentials in ``api_key``)."""
        return (
            f"ws://127.0.0.1:8088/ari/events?app={app}"
            f"&api_key={self.ari_user}:{self.ari_password}"
        )
