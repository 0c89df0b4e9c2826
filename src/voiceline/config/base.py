"""What every config module shares: the strict base model, the error type, level names."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]


class ConfigError(Exception):
    """A config that cannot be used; the message lists every problem, each naming its key path.

    Problems never quote a secret or the value of an unknown key (see ``loading``).
    """

    def __init__(self, problems: list[str], source: str | None = None) -> None:
        self.problems = problems
        self.source = source
        where = f" in {source}" if source else ""
        super().__init__(f"invalid configuration{where}:\n" + "\n".join(f"  - {p}" for p in problems))

    def with_source(self, source: str) -> ConfigError:
        return self if self.source else ConfigError(self.problems, source)


class Strict(BaseModel):
    """Unknown keys are errors; assignments are validated like loading."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
