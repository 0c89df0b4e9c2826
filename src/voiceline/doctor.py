"""``voiceline doctor``: checks what a deployment needs and says how to fix each miss."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass

from voiceline.asterisk.ari import AriClient, AriError
from voiceline.config import Settings
from voiceline.core.realtime import RealtimeWindow
from voiceline.providers.base import Provider


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True


def check_port_bindable(name: str, host: str, port: int) -> Check:
    if port == 0:
        return Check(name, True, f"{host}:0 (any free port)")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return Check(name, False, f"cannot bind {host}:{port}: {exc.strerror}",
                         f"stop whatever listens on {port} (a running voiceline?) or change the port")
    return Check(name, True, f"{host}:{port} is free")


async def check_ari(settings: Settings) -> Check:
    a = settings.asterisk
    if not a.password.get_secret_value():
        return Check("ARI credentials", False, "asterisk.password is empty",
                     "export ARI_PASSWORD (the password of the [voiceline] user in ari.conf)")
    client = AriClient(a.ari_url, a.username, a.password.get_secret_value(), a.app_name,
                       request_timeout_s=min(a.request_timeout_ms / 1000, 5.0))
    await client.open()
    try:
        info = await client.asterisk_info()
    except AriError as exc:
        if exc.status in (401, 403):
            fix = f"check user {a.username!r} and ARI_PASSWORD against ari.conf"
        elif exc.status == 0:
            fix = f"is Asterisk running with http.conf enabled and bound where {a.ari_url} points?"
        else:
            fix = "check asterisk.ari_url (it must end in /ari) and res_ari is loaded"
        return Check("ARI reachable", False, str(exc), fix)
    finally:
        await client.close()
    version = info.get("system", {}).get("version", "?")
    return Check("ARI reachable", True, f"{a.ari_url} as {a.username!r}: Asterisk {version}")


def check_realtime(priority: int, *, window: RealtimeWindow | None = None) -> Check:
    """Open and close one real-time window the way the pacer will (a warning, not a
    failure: without it the engine paces at normal priority)."""
    name = "real-time pacing"
    if not priority:
        return Check(name, True, "off (streaming.realtime_priority: 0)", required=False)
    window = window if window is not None else RealtimeWindow(priority)
    window.enter()
    window.leave()
    if not window.enabled:
        return Check(name, False, f"SCHED_FIFO {priority} refused by the kernel; the pacer will run at normal "
                     "priority (send timing degrades under load)",
                     f"LimitRTPRIO={priority} in the systemd unit (--ulimit rtprio={priority} for a container), "
                     "or CAP_SYS_NICE", required=False)
    return Check(name, True, f"SCHED_FIFO {priority} granted for the pacer's spin and writes", required=False)


def check_providers(settings: Settings, providers: dict[str, Provider]) -> list[Check]:
    checks = []
    for name, provider in sorted(providers.items()):
        usable, why = provider.availability()
        is_default = name == settings.default_provider
        label = f"provider {name}" + (" (default)" if is_default else "")
        checks.append(Check(label, usable, "usable" if usable else why, "" if usable else why, required=is_default))
    return checks


async def run_checks(settings: Settings, providers: dict[str, Provider]) -> list[Check]:
    checks: list[Check] = [Check("config", True, f"valid (hash {settings.digest()}), mode {settings.mode}")]
    if settings.mode == "ari":
        checks.append(await check_ari(settings))
    s = settings.audiosocket
    checks.append(check_port_bindable("AudioSocket listener", s.host, s.port))
    if settings.http.enabled:
        checks.append(check_port_bindable("HTTP (/health, /metrics)", settings.http.host, settings.http.port))
    checks.extend(check_providers(settings, providers))
    checks.append(check_realtime(settings.streaming.realtime_priority))
    return checks


def format_checks(checks: list[Check]) -> str:
    lines = []
    for check in checks:
        mark = "ok  " if check.ok else ("FAIL" if check.required else "warn")
        lines.append(f"[{mark}] {check.name}: {check.detail}")
        if not check.ok and check.fix and check.fix != check.detail:
            lines.append(f"       fix: {check.fix}")
    return "\n".join(lines)


def doctor(settings: Settings, providers: dict[str, Provider]) -> tuple[str, bool]:
    checks = asyncio.run(run_checks(settings, providers))
    healthy = all(c.ok for c in checks if c.required)
    return format_checks(checks), healthy
