"""check-config's deeper look: what only the dashboard reads, and the files the config names.

``load_config(..., thorough=True)`` (check-config) adds these issues to the others, each
at the file:line of the value, so a config that passes check-config does not stop the
scheduler or the dashboard at start:

- ``tui.keys``: every action is one the dashboard has (core.dashboard_settings), every
  key one Textual can bind; ``tui.theme``: a theme that exists; ``tui.theme_file``: a
  theme file that reads and checks.
- the files a target names, as its scheme's ``file_problems`` says (core/anchors/<scheme>/scheme.py;
  the checks themselves are in each scheme package's checking.py):
  ``targets.rfc3161.*.trustBundle``: PEM holding at least one certificate;
  ``targets.eip155.*.keyFile``: readable and a valid secp256k1 private key. Its content
  never reaches a message.

A run or a reload does not open these files here: the dashboard reports its settings
itself (and starts with its defaults), the backends read their files when they need them.
"""

from __future__ import annotations

from core.anchors.schemes import SCHEMES
from core.config.errors import ConfigIssue
from core.config.models import Config
from core.config.positions import Pos, issue_at
from core.dashboard_settings import (
    ThemeFileError,
    action_problem,
    key_problem,
    read_theme_file,
    theme_names,
    theme_problem,
)


def thorough_issues(config: Config, root: Pos) -> list[ConfigIssue]:
    return [*_dashboard_issues(config, root), *_target_file_issues(config, root)]


def _target_file_issues(config: Config, root: Pos) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    for scheme, spec in SCHEMES.items():
        for name, settings in config.targets.of(scheme).items():
            for field, problem in spec.file_problems(settings, f"{scheme}:{name}"):
                issues.append(issue_at(root, ("targets", scheme, name, field), problem))
    return issues


def _dashboard_issues(config: Config, root: Pos) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    tui = config.tui
    for action, key in tui.keys.items():
        problem = action_problem(action)
        if problem:
            issues.append(issue_at(root, ("tui", "keys", action), problem, at_key=True))
        problem = key_problem(key)
        if problem:
            issues.append(issue_at(root, ("tui", "keys", action), problem))
    own = None
    if tui.theme_file is not None:
        try:
            own = read_theme_file(tui.theme_file).name
        except ThemeFileError as exc:
            issues.append(issue_at(root, ("tui", "theme_file"), str(exc)))
    if tui.theme and (own is not None or tui.theme_file is None):
        problem = theme_problem(tui.theme, theme_names(own))
        if problem:
            issues.append(issue_at(root, ("tui", "theme"), problem))
    return issues
