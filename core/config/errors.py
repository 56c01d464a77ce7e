"""What a load reports: ConfigIssue (one problem, placed), ConfigError (all of them)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in the configuration, located as precisely as the source allows."""

    file: str | None
    line: int | None
    col: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = ""
        if self.file:
            where = str(self.file)
            if self.line is not None:
                where += f":{self.line}"
                if self.col is not None:
                    where += f":{self.col}"
            where += ": "
        path = f"{self.path}: " if self.path else ""
        return f"{where}{path}{self.message}"


class ConfigError(Exception):
    """The configuration is invalid; ``issues`` lists every problem found."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = list(issues)
        super().__init__("\n".join(str(i) for i in self.issues))


class NoConfigFound(ConfigError):
    """No --config, VMSH_CONFIG, VMSH_ROOT nor ./config.yaml: there is no configuration at
    all (commands that can do without one tell it from an invalid one)."""


class TargetNotFound(LookupError):
    """A target id that no settings in ``targets`` resolve."""
