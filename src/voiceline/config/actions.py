"""What a provider's model may do on the call (``providers.<name>.actions``): built-in
telephony actions offered to the model as functions, HTTP functions the engine runs
for it, and what caller keypresses become for the model.

Every provider section has the same ``actions`` block; the engine executes the
functions itself (one path for every provider) and answers the model with the result.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from voiceline.config.base import Strict

# What OpenAI and Deepgram accept as a function name.
FUNCTION_NAME = r"^[A-Za-z0-9_-]{1,64}$"
BUILTIN_ACTIONS = ("transfer", "hangup", "send_dtmf", "get_call_info")
# What the model is told each built-in action does, unless the config says otherwise.
BUILTIN_DESCRIPTIONS = {
    "transfer": (
        "Transfer the caller to a person or another department. Say a short sentence first "
        "(for example that you are transferring them); it is played before the transfer."
    ),
    "hangup": "End the call. Say goodbye first; the call ends once your goodbye has been played.",
    "send_dtmf": "Send DTMF tones (digits 0-9, *, #, A-D) on the call, e.g. to navigate a phone menu.",
    "get_call_info": "Get what is known about this call: the caller's number and channel variables.",
}


class TransferTarget(Strict):
    """Where ``transfer`` sends the caller: a dialplan place (``extension`` in
    ``context`` at ``priority``; ARI ``continue``) or an ``endpoint`` (ARI ``redirect``,
    e.g. ``PJSIP/operator``). ``name`` is what the model chooses by."""

    name: str = Field(pattern=r"^\S+$", description="what the model picks this destination by")
    context: str | None = Field(None, description="dialplan context (default: the caller's current one)")
    extension: str | None = Field(None, description="dialplan extension")
    priority: int = Field(1, ge=1)
    endpoint: str | None = Field(None, description="technology/resource to redirect the channel to")

    @model_validator(mode="after")
    def _one_kind(self) -> TransferTarget:
        if (self.extension is None) == (self.endpoint is None):
            raise ValueError("give exactly one of 'extension' (with an optional 'context') or 'endpoint'")
        if self.endpoint is not None and self.context is not None:
            raise ValueError("'context' goes with 'extension', not with 'endpoint'")
        return self

    def describe(self) -> str:
        if self.endpoint is not None:
            return self.endpoint
        return f"{self.context or '(current context)'},{self.extension},{self.priority}"


class TransferAction(Strict):
    enabled: bool = False
    description: str | None = Field(None, description="what the model is told the function does (null: built-in text)")
    targets: list[TransferTarget] = Field(
        default_factory=list, description="destinations the model picks from by name (the first is the default)"
    )

    @model_validator(mode="after")
    def _targets_when_enabled(self) -> TransferAction:
        if self.enabled and not self.targets:
            raise ValueError("transfer is enabled but has no 'targets'")
        names = [t.name for t in self.targets]
        if len(set(names)) != len(names):
            raise ValueError(f"transfer target names must be unique, got {names}")
        return self


class HangupAction(Strict):
    enabled: bool = False
    description: str | None = Field(None, description="what the model is told (null: built-in text)")


class SendDtmfAction(Strict):
    enabled: bool = False
    description: str | None = Field(None, description="what the model is told (null: built-in text)")


class CallInfoAction(Strict):
    enabled: bool = False
    description: str | None = Field(None, description="what the model is told (null: built-in text)")
    variables: list[str] = Field(default_factory=list, description="channel variables reported to the model")


class HttpFunction(Strict):
    """A function the engine runs by POSTing the model's arguments (JSON) to ``url``;
    the JSON reply goes back to the model. No redirects to another host."""

    name: str = Field(pattern=FUNCTION_NAME)
    description: str = ""
    parameters: dict[str, Any] = Field(
        default_factory=lambda: {"type": "object", "properties": {}}, description="JSON schema of the arguments"
    )
    url: str = Field(pattern=r"^https?://", description="POSTed the arguments as a JSON object")
    headers: dict[str, str] = Field(default_factory=dict, description="sent with each request (may hold secrets)")
    timeout_s: float = Field(5.0, gt=0, le=60)
    max_response_bytes: int = Field(65536, gt=0, le=4 * 1024 * 1024)

    @field_validator("name")
    @classmethod
    def _not_builtin(cls, value: str) -> str:
        if value in BUILTIN_ACTIONS:
            raise ValueError(f"{value!r} is a built-in action name; enable it under actions.{value}")
        return value


class DtmfIn(Strict):
    """Caller keypresses: ``message`` hands the model ``template`` with ``{digit}``
    filled in (Deepgram InjectUserMessage, an OpenAI user item, the local agent's rules);
    ``ignore`` drops them."""

    mode: Literal["message", "ignore"] = "message"
    template: str = Field("The caller pressed {digit} on the phone keypad.", min_length=1)

    @field_validator("template")
    @classmethod
    def _has_digit(cls, value: str) -> str:
        if "{digit}" not in value:
            raise ValueError("must contain {digit}")
        try:
            value.format(digit="1")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"is not a valid template: {exc}") from None
        return value

    def text(self, digit: str) -> str:
        return self.template.format(digit=digit)


class ActionsSettings(Strict):
    timeout_s: float = Field(8.0, gt=0, le=120, description="a function that takes longer answers the model with an error")
    speech_settle_ms: int = Field(
        1200, ge=0, le=10000,
        description="transfer/hangup wait until the agent has been silent this long (its last sentence played)",
    )
    speech_max_wait_ms: int = Field(15000, ge=0, le=120000, description="... but never longer than this")
    transfer: TransferAction = Field(default_factory=TransferAction)
    hangup: HangupAction = Field(default_factory=HangupAction)
    send_dtmf: SendDtmfAction = Field(default_factory=SendDtmfAction)
    get_call_info: CallInfoAction = Field(default_factory=CallInfoAction)
    http: list[HttpFunction] = Field(default_factory=list, description="functions the engine runs by HTTP POST")
    dtmf: DtmfIn = Field(default_factory=DtmfIn)

    @model_validator(mode="after")
    def _unique_names(self) -> ActionsSettings:
        seen: set[str] = set()
        for fn in self.http:
            if fn.name in seen:
                raise ValueError(f"http function name {fn.name!r} is used twice")
            seen.add(fn.name)
        return self

    def description_of(self, name: str) -> str:
        return getattr(self, name).description or BUILTIN_DESCRIPTIONS[name]
