"""The layer picture of docs/contributing/architecture-deep-dive.md, checked by reading
imports: a module that reaches across a forbidden edge fails here, with the line.

While the core and config are being reshaped it lists what is left to move: fix the
import in your own module, never loosen the rules here.
"""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "voiceline"

# package -> packages (or modules) of voiceline it must never import
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "core": ("asterisk", "telemetry", "config", "wiring", "app", "cli", "sim", "doctor",
             "providers.deepgram", "providers.deepgram_events", "providers.openai_realtime",
             "providers.local", "providers.echo", "providers.registry"),
    "providers": ("core", "asterisk", "telemetry", "app", "cli", "wiring"),
    "config": ("core", "providers", "asterisk", "telemetry", "audio", "sim", "app", "cli", "wiring"),
    "audio": ("core", "providers", "asterisk", "telemetry", "config", "sim", "app", "cli"),
    "asterisk": ("app", "cli", "sim"),
    "telemetry": ("asterisk", "app", "cli", "sim", "providers"),
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """voiceline-internal imports of a file, as module paths below voiceline."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("voiceline."):
                    found.append((node.lineno, alias.name.removeprefix("voiceline.")))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "voiceline":
                found.extend((node.lineno, alias.name) for alias in node.names)
            elif node.module.startswith("voiceline."):
                found.append((node.lineno, node.module.removeprefix("voiceline.")))
    return found


def _sources() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def _package(module: str) -> str:
    return module.split(".", 1)[0]


def _crosses(target: str, forbidden: str) -> bool:
    return target == forbidden or target.startswith(forbidden + ".")


def test_no_module_imports_across_a_forbidden_edge():
    violations = []
    for path in _sources():
        module = _module_name(path)
        rules = FORBIDDEN.get(_package(module), ())
        for lineno, target in _imports(path):
            for forbidden in rules:
                if _crosses(target, forbidden):
                    violations.append(f"{path.relative_to(SRC.parent)}:{lineno}: {module} imports {target}")
    assert not violations, "forbidden imports:\n" + "\n".join(violations)


def test_packages_form_no_import_cycle():
    edges: dict[str, set[str]] = defaultdict(set)
    for path in _sources():
        source = _package(_module_name(path))
        for _, target in _imports(path):
            target_package = _package(target)
            if target_package != source:
                edges[source].add(target_package)

    def cycle_from(start: str) -> list[str] | None:
        stack = [(start, [start])]
        while stack:
            node, trail = stack.pop()
            for nxt in edges.get(node, ()):
                if nxt == start:
                    return trail + [nxt]
                if nxt not in trail:
                    stack.append((nxt, trail + [nxt]))
        return None

    cycles = {tuple(c) for p in list(edges) if (c := cycle_from(p))}
    assert not cycles, "package import cycles: " + "; ".join(" -> ".join(c) for c in sorted(cycles))


@pytest.mark.parametrize("rule", ["core", "providers", "config"])
def test_rule_catches_a_planted_violation(tmp_path, rule):
    """The checker itself: a planted forbidden import is reported."""
    planted = {"core": "voiceline.asterisk.audiosocket", "providers": "voiceline.core.call",
               "config": "voiceline.core.stream_params"}[rule]
    target = planted.removeprefix("voiceline.")
    assert any(_crosses(target, f) for f in FORBIDDEN[rule])
    f = tmp_path / "planted.py"
    f.write_text(f"import os\nfrom {planted} import X\n")
    assert _imports(f) == [(2, target)]


def test_no_source_file_is_over_600_lines():
    long = [f"{p.relative_to(SRC.parent)}: {n}" for p in _sources()
            if (n := len(p.read_text().splitlines())) > 600]
    assert not long, "files over 600 lines (split them by job): " + ", ".join(long)
