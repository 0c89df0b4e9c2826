"""AudioSocket as a call's media leg, and the ``audiosocket`` call-control mode.

``AudioSocketLeg`` adapts one ``AudioSocketConnection`` to the core: it is the
call's ``MediaLeg`` (frames out) and the connection's handler (frames in, passed to
the ``Call`` with their sample rate). ``AudioSocketMode`` is the whole call control
of the mode: the dialplan runs ``AudioSocket(uuid,host:port)`` itself, and a
connection from an allowed peer with a fresh UUID is a call; there is no ARI, so no
file playback either.
"""

from __future__ import annotations

import structlog

from voiceline.asterisk.audiosocket import AudioSocketConnection
from voiceline.asterisk.audiosocket_codec import Frame, slin_kind_for_rate
from voiceline.core.call import Call
from voiceline.core.engine import Engine
from voiceline.core.models import CallState
from voiceline.telemetry.metrics import Metrics

__all__ = ["AudioSocketLeg", "AudioSocketMode"]

log = structlog.get_logger("voiceline.audiosocket_mode")


class AudioSocketLeg:
    """``MediaLeg`` over an AudioSocket connection; also the connection's handler."""

    __slots__ = ("_call", "_connection", "_forward_dtmf", "_kind", "_rate")

    def __init__(self, connection: AudioSocketConnection, call: Call, sample_rate: int,
                 forward_dtmf: bool = True) -> None:
        self._connection = connection
        self._call = call
        self._rate = sample_rate
        self._kind = slin_kind_for_rate(sample_rate)
        self._forward_dtmf = forward_dtmf

    # ---- MediaLeg
    @property
    def sample_rate(self) -> int:
        return self._rate

    @property
    def closed(self) -> bool:
        return self._connection.closed

    @property
    def frames_out(self) -> int:
        return self._connection.frames_out

    def send_frame(self, pcm: bytes) -> None:
        self._connection.send_audio(pcm, self._kind)

    def poll_inbound(self) -> None:
        self._connection.poll_read()

    def hangup(self) -> None:
        if not self._connection.closed:
            self._connection.send_hangup()
            self._connection.close("call ended")

    # ---- AudioSocketHandler
    def on_audio(self, frame: Frame) -> None:
        self._call.on_caller_audio(frame.payload, frame.sample_rate)

    def on_dtmf(self, digit: str) -> None:
        if self._forward_dtmf:
            self._call.on_dtmf(digit)

    def on_error_frame(self, code: int | None) -> None:
        self._call.on_media_error(code)

    def on_closed(self, reason: str) -> None:
        self._call.on_media_closed(reason)


def attach_leg(call: Call, connection: AudioSocketConnection, *, forward_dtmf: bool = True) -> AudioSocketLeg | None:
    """Attach ``connection`` to ``call`` as its media leg, making the call active; None
    if the call already ended. ``forward_dtmf`` False: the leg's DTMF frames are dropped
    (the mode hears keys another way)."""
    leg = AudioSocketLeg(connection, call, call.wire_format.sample_rate, forward_dtmf)
    if not call.attach(leg):
        return None
    call.session.state = CallState.ACTIVE
    return leg


class AudioSocketMode:
    """Calls started by AudioSocket connections (the dialplan's ``AudioSocket()``)."""

    def __init__(self, engine: Engine, metrics: Metrics) -> None:
        self.engine = engine
        self._metrics = metrics

    def accept(self, connection: AudioSocketConnection) -> AudioSocketLeg | None:
        """AcceptFn for the AudioSocket server: the handler for this UUID, or None to refuse."""
        conn_uuid = connection.uuid or ""
        if not self.engine.accepting:
            log.info("audiosocket_refused_draining", uuid=conn_uuid, peer=connection.peer[0])
            self._metrics.audiosocket_refused("draining")
            return None
        if self.engine.knows(conn_uuid):
            log.warning("audiosocket_duplicate_uuid", uuid=conn_uuid, peer=connection.peer[0])
            self._metrics.audiosocket_refused("duplicate-uuid")
            return None
        return attach_leg(self.engine.start_call(conn_uuid), connection)
