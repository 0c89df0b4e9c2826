"""Reading the YAML: ``${VAR}`` expansion, renamed keys, validation, error messages.

``${VAR}`` and ``${VAR:-default}`` in string values are expanded from the
environment: the one documented way to inject secrets and per-host values.

Error messages name the key path and the problem. They quote the offending value
only when it is plain data: never the value of a secret field (``SecretStr``, or a
key named like one), never the value of an unknown key (a misspelled ``apikey:``
holds a key), and never a value that came from the environment (the message names
the ``${VAR}`` instead).
"""

from __future__ import annotations

import copy
import os
import re
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, SecretStr, ValidationError

from voiceline.config.base import ConfigError
from voiceline.config.settings import SECRET_NAME, Settings

# Old key path -> new key path. The old name keeps working with a deprecation
# warning; giving both is an error (which one was meant?).
RENAMED_KEYS: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (("streaming", "jitter_buffer_ms"), ("streaming", "max_buffer_ms")),
    (("streaming", "logging_level"), ("logging", "levels", "streaming")),
)

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_SHOWN_CHARS = 80


def expand_env(value: Any, env: Mapping[str, str], path: str = "", missing: list[str] | None = None) -> Any:
    """Expand ``${VAR}`` / ``${VAR:-default}`` in every string of a YAML tree.

    An unset ``${VAR}`` without a default becomes an empty string and is recorded in
    ``missing`` (with its key path) so callers can say which secret is absent.
    """
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env and env[name] != "":
                return env[name]
            if default is not None:
                return default
            if missing is not None:
                missing.append(f"{path or '<root>'}: environment variable {name} is not set")
            return ""

        return _VAR.sub(substitute, value)
    if isinstance(value, dict):
        return {k: expand_env(v, env, f"{path}.{k}" if path else str(k), missing) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, env, f"{path}[{i}]", missing) for i, v in enumerate(value)]
    return value


def rename_keys(data: dict[str, Any], notices: list[str], problems: list[str]) -> dict[str, Any]:
    """A copy of ``data`` with every old key name moved to its new place."""
    data = copy.deepcopy(data)
    for old, new in RENAMED_KEYS:
        parent = _mapping_at(data, old[:-1], create=False)
        if parent is None or old[-1] not in parent:
            continue
        old_name, new_name = ".".join(old), ".".join(new)
        target = _mapping_at(data, new[:-1], create=True)
        if target is None:
            continue  # the new place is not a mapping: validation reports it, and the old key
        value = parent.pop(old[-1])
        if new[-1] in target:
            problems.append(f"{old_name}: renamed to {new_name}, which is set too; keep only {new_name}")
            continue
        target[new[-1]] = value
        notices.append(f"{old_name} is deprecated: it is now {new_name} (same meaning); rename it")
    return data


def _mapping_at(data: dict[str, Any], path: tuple[str, ...], *, create: bool) -> dict[str, Any] | None:
    node: Any = data
    for key in path:
        if not isinstance(node, dict):
            return None
        if key not in node or node[key] is None:
            if not create:
                return None
            node[key] = {}
        node = node[key]
    return node if isinstance(node, dict) else None


def merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``extra`` laid over ``base`` key by key (mappings merge, anything else replaces)."""
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


# ---------------------------------------------------------------------------- errors


def describe_error(err: Mapping[str, Any], raw: Any) -> str:
    """One pydantic error as ``key.path: problem``, with the value only where safe."""
    loc = tuple(part for part in err["loc"] if "[" not in str(part))
    path = key_path(loc) or "<root>"
    if err["type"] == "extra_forbidden":
        return f"{path}: unknown key; check the spelling against config/ai-agent.yaml"
    msg = err["msg"].removeprefix("Value error, ")
    return f"{path}: {msg}{_shown_value(loc, err.get('input'), raw)}"


def key_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _shown_value(loc: tuple[Any, ...], value: Any, raw: Any) -> str:
    if isinstance(value, (dict, list, tuple)):
        return ""  # a rule over a whole section or list: its message names the fields
    if is_secret(loc):
        return " (value not shown: secret)"
    written = _value_at(raw, loc)
    if isinstance(written, str) and _VAR.search(written):
        return f" (from {written[:_SHOWN_CHARS]})"
    if isinstance(value, str) and len(value) > _SHOWN_CHARS:
        value = value[: _SHOWN_CHARS - 3] + "..."
    return f" (got {value!r})"


def _value_at(raw: Any, loc: tuple[Any, ...]) -> Any:
    for part in loc:
        if isinstance(raw, dict) and part in raw:
            raw = raw[part]
        elif isinstance(raw, list) and isinstance(part, int) and 0 <= part < len(raw):
            raw = raw[part]
        else:
            return None
    return raw


def is_secret(loc: tuple[Any, ...]) -> bool:
    """Whether the value at this key path of ``Settings`` is (or may be) a secret."""
    if loc and isinstance(loc[-1], str) and SECRET_NAME.fullmatch(loc[-1]):
        return True
    candidates: list[Any] = [Settings]
    for part in loc:
        following: list[Any] = []
        for kind in (k for c in candidates for k in _alternatives(c)):
            if kind is SecretStr:
                return True
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                field = kind.model_fields.get(part) if isinstance(part, str) else None
                if field is not None:
                    following.append(field.annotation)
            elif get_origin(kind) in (list, tuple) and isinstance(part, int):
                following.extend(get_args(kind)[:1])
            elif get_origin(kind) is dict:
                following.extend(get_args(kind)[1:2])
        candidates = following
    return any(kind is SecretStr for c in candidates for kind in _alternatives(c))


def _alternatives(annotation: Any) -> list[Any]:
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        return [k for arg in get_args(annotation) for k in _alternatives(arg)]
    if origin is Annotated:
        return _alternatives(get_args(annotation)[0])
    return [annotation]


# ---------------------------------------------------------------------------- loading


def parse_settings(
    data: Any,
    *,
    env: Mapping[str, str] | None = None,
    source: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> tuple[Settings, list[str]]:
    """Validate a YAML tree (``overrides`` laid over it, e.g. from the command line).

    Returns the settings and warnings for the operator: unset environment variables
    and deprecated key names. Raises ConfigError listing every problem.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"<root>: expected a mapping of sections, got {type(data).__name__}"], source)
    warnings: list[str] = []
    problems: list[str] = []
    raw = rename_keys(data, warnings, problems)
    if overrides:
        merge(raw, overrides)
    missing: list[str] = []
    expanded = expand_env(raw, os.environ if env is None else env, missing=missing)
    try:
        settings = Settings.model_validate(expanded)
    except ValidationError as exc:
        problems.extend(describe_error(e, raw) for e in exc.errors())
    if problems:
        raise ConfigError(problems, source)
    return settings, missing + warnings


def load_settings(
    path: str | Path, *, env: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None
) -> tuple[Settings, list[str]]:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError([f"cannot read {path}: {exc.strerror}"], str(path)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"YAML syntax error: {exc}"], str(path)) from None
    return parse_settings(data, env=env, source=str(path), overrides=overrides)
