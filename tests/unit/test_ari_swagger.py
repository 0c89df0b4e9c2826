"""Check every ARI call the client makes against the swagger files of the Asterisk we run.

Asterisk ships its ARI description as swagger 1.1/1.2 JSON under
/usr/share/asterisk/rest-api/. Each file has ``apis[]`` entries with a ``path`` template and
``operations[]``, each operation an ``httpMethod`` and ``parameters[]`` with ``name``,
``paramType`` (path/query/body), ``required`` and sometimes ``allowableValues``.
"""

from __future__ import annotations

import inspect
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from voiceline.asterisk.ari import CHANNEL_TERMINAL_EVENTS, AriClient

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SPEC_DIR = REPO_ROOT / "lab" / ".cache" / "root" / "usr" / "share" / "asterisk" / "rest-api"

Operation = dict[str, Any]


def _spec_dir() -> Path:
    configured = os.environ.get("VOICELINE_ARI_SPEC_DIR")
    spec_dir = Path(configured) if configured else DEFAULT_SPEC_DIR
    if not (spec_dir / "channels.json").is_file():
        # Deliberately a failure, not a skip: an unchecked ARI client must not look green.
        pytest.fail(
            f"ARI swagger files not found in {spec_dir} "
            f"({'from VOICELINE_ARI_SPEC_DIR' if configured else 'default location'}). "
            "Run lab/setup.sh to build the lab Asterisk root, or point VOICELINE_ARI_SPEC_DIR "
            "at a directory holding Asterisk's rest-api/*.json."
        )
    return spec_dir


@pytest.fixture(scope="module")
def spec_files() -> dict[str, dict[str, Any]]:
    spec_dir = _spec_dir()
    files = {path.stem: json.loads(path.read_text()) for path in sorted(spec_dir.glob("*.json"))}
    # resources.json is only the index of the other files; it has no operations.
    files.pop("resources", None)
    return files


@pytest.fixture(scope="module")
def operations(spec_files: dict[str, dict[str, Any]]) -> dict[tuple[str, str], Operation]:
    index: dict[tuple[str, str], Operation] = {}
    for spec in spec_files.values():
        for api in spec.get("apis", []):
            for operation in api.get("operations", []):
                index[(operation["httpMethod"], api["path"])] = operation
    return index


@pytest.fixture(scope="module")
def models(spec_files: dict[str, dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for spec in spec_files.values():
        merged.update(spec.get("models", {}))
    return merged


def _params(operation: Operation, param_type: str) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in operation.get("parameters", []) if p["paramType"] == param_type}


def _operation(operations: dict[tuple[str, str], Operation], method: str, path: str) -> Operation:
    operation = operations.get((method, path))
    if operation is None:
        same_path = sorted(m for (m, p) in operations if p == path)
        pytest.fail(f"{method} {path} is not in the ARI swagger files (methods on that path: {same_path or 'none'})")
    return operation


def test_spec_files_are_the_expected_format(spec_files: dict[str, dict[str, Any]]) -> None:
    assert {"channels", "bridges", "playbacks", "asterisk", "events"} <= set(spec_files)
    for name, spec in spec_files.items():
        assert spec.get("swaggerVersion", "").startswith("1."), name
        assert spec.get("basePath", "").endswith("/ari"), name


def test_endpoint_registry_has_no_duplicates() -> None:
    assert len(AriClient.REST_ENDPOINTS) == len(set(AriClient.REST_ENDPOINTS))
    assert set(AriClient.REST_ENDPOINT_PARAMS) == set(AriClient.REST_ENDPOINTS)


@pytest.mark.parametrize(("method", "path"), AriClient.REST_ENDPOINTS, ids=lambda value: str(value))
def test_rest_endpoint_matches_swagger(operations: dict[tuple[str, str], Operation], method: str, path: str) -> None:
    operation = _operation(operations, method, path)
    sent = AriClient.REST_ENDPOINT_PARAMS[(method, path)]

    declared_path = _params(operation, "path")
    assert set(sent["path"]) == set(declared_path), f"{method} {path}: path parameters differ from swagger"

    declared_query = _params(operation, "query")
    undeclared = set(sent["query"]) - set(declared_query)
    assert not undeclared, f"{method} {path}: client sends query parameters swagger does not declare: {undeclared}"
    required_query = {name for name, p in declared_query.items() if p.get("required")}
    not_always_sent = required_query - set(sent["query_always"])
    assert not not_always_sent, f"{method} {path}: required query parameters not always sent: {not_always_sent}"

    declared_body = _params(operation, "body")
    undeclared_body = set(sent["body"]) - set(declared_body)
    assert not undeclared_body, f"{method} {path}: client sends body fields swagger does not declare: {undeclared_body}"
    required_body = {name for name, p in declared_body.items() if p.get("required")}
    assert required_body <= set(sent["body"]), f"{method} {path}: required body fields not sent: {required_body}"


def test_events_websocket_matches_swagger(operations: dict[tuple[str, str], Operation]) -> None:
    endpoint = AriClient.EVENTS_ENDPOINT
    operation = _operation(operations, endpoint.method, endpoint.path)
    assert operation.get("upgrade") == "websocket"
    declared_query = _params(operation, "query")
    assert endpoint.query <= set(declared_query)
    assert {n for n, p in declared_query.items() if p.get("required")} <= endpoint.query_always
    assert declared_query["subscribeAll"]["dataType"] == "boolean"


def _default(method_name: str, parameter: str) -> Any:
    return inspect.signature(getattr(AriClient, method_name)).parameters[parameter].default


@pytest.mark.parametrize(
    ("client_method", "client_param", "method", "path", "swagger_param"),
    [
        ("hangup", "reason", "DELETE", "/channels/{channelId}", "reason"),
        ("external_media", "encapsulation", "POST", "/channels/externalMedia", "encapsulation"),
        ("external_media", "transport", "POST", "/channels/externalMedia", "transport"),
    ],
)
def test_client_defaults_are_allowed_values(
    operations: dict[tuple[str, str], Operation],
    client_method: str,
    client_param: str,
    method: str,
    path: str,
    swagger_param: str,
) -> None:
    parameter = _params(_operation(operations, method, path), "query")[swagger_param]
    allowed = parameter["allowableValues"]["values"]
    assert _default(client_method, client_param) in allowed


def test_default_bridge_type_is_a_documented_attribute(operations: dict[tuple[str, str], Operation]) -> None:
    # "type" has no allowableValues: it is a comma-separated list described in prose,
    # "Comma separated list of bridge type attributes (mixing, holding, ...)".
    description = _params(_operation(operations, "POST", "/bridges"), "query")["type"]["description"]
    listed = re.search(r"\(([^)]*)\)", description)
    assert listed, description
    attributes = {item.strip() for item in listed.group(1).split(",")}
    assert set(_default("create_bridge", "bridge_type").split(",")) <= attributes


def test_continue_priority_is_an_integer_and_listings_return_arrays(
    operations: dict[tuple[str, str], Operation]
) -> None:
    # The client sends the priority as decimal digits and only accepts positive integers.
    query = _params(_operation(operations, "POST", "/channels/{channelId}/continue"), "query")
    assert query["priority"]["dataType"] == "int"
    assert _operation(operations, "GET", "/channels")["responseClass"] == "List[Channel]"
    assert _operation(operations, "GET", "/bridges")["responseClass"] == "List[Bridge]"


def test_external_media_declares_audiosocket_parameters(operations: dict[tuple[str, str], Operation]) -> None:
    query = _params(_operation(operations, "POST", "/channels/externalMedia"), "query")
    assert "data" in query, "this Asterisk does not declare 'data' (the AudioSocket UUID) for externalMedia"
    assert "audiosocket" in query["encapsulation"]["allowableValues"]["values"]
    assert "tcp" in query["transport"]["allowableValues"]["values"]


def test_event_routing_fields_exist_in_models(models: dict[str, Any]) -> None:
    """The dispatcher orders events by these fields; make sure Asterisk really sends them."""
    for event_type in CHANNEL_TERMINAL_EVENTS | {"StasisStart"}:
        assert models[event_type]["properties"]["channel"]["type"] == "Channel", event_type
    assert models["Dial"]["properties"]["peer"]["type"] == "Channel"
    for event_type in ("PlaybackStarted", "PlaybackFinished"):
        assert models[event_type]["properties"]["playback"]["type"] == "Playback"
    assert models["RecordingStarted"]["properties"]["recording"]["type"] == "LiveRecording"
    assert models["Playback"]["properties"]["target_uri"]["type"] == "string"
    assert models["LiveRecording"]["properties"]["target_uri"]["type"] == "string"
    assert "ApplicationReplaced" in models
    assert models["Channel"]["properties"]["id"]["type"] == "string"
