"""Redundant anchoring in the config: `targets: [...]` and `min` (issue 23 item 4)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from core.config import ConfigError, load_config
from core.jobs import JobKey, member_targets, redundant_parts

TARGETS = """\
targets:
  rfc3161:
    a: {url: "https://a.example/tsr"}
    b: {url: "https://b.example/tsr"}
"""


def write(tmp_path: Path, cadence: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(TARGETS + textwrap.dedent(f"""\
    namespaces:
      "demo:a":
        cadence:
          fast: {cadence}
    """))
    return path


def errors(tmp_path: Path, cadence: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, cadence), env={}, cwd=tmp_path)
    return [str(i) for i in info.value.issues]


def test_targets_and_min_make_one_redundant_job(tmp_path):
    cfg = load_config(
        write(tmp_path, '{targets: ["rfc3161:a", "rfc3161:b", "local:dev"], min: 2, every: "10s"}'),
        env={}, cwd=tmp_path,
    ).config
    [job] = cfg.jobs()
    assert job.key == JobKey("demo:a", "fast")
    assert job.target == "2 of rfc3161:a,rfc3161:b,local:dev"
    assert redundant_parts(job.target) == (2, ("rfc3161:a", "rfc3161:b", "local:dev"))
    assert member_targets(job.target) == ("rfc3161:a", "rfc3161:b", "local:dev")
    assert cfg.target_mismatch(job.target) is None


def test_min_defaults_to_every_target(tmp_path):
    cfg = load_config(write(tmp_path, '{targets: ["rfc3161:a", "rfc3161:b"], every: "10s"}'), env={}, cwd=tmp_path).config
    assert cfg.jobs()[0].target == "2 of rfc3161:a,rfc3161:b"


def test_a_single_target_is_unchanged(tmp_path):
    cfg = load_config(write(tmp_path, '{target: "rfc3161:a", every: "10s"}'), env={}, cwd=tmp_path).config
    assert cfg.jobs()[0].target == "rfc3161:a"
    assert redundant_parts("rfc3161:a") is None


@pytest.mark.parametrize(
    ("cadence", "field", "message"),
    [
        ('{targets: ["rfc3161:a", "rfc3161:b"], min: 3, every: "10s"}', ".min", "min 3 is more than the 2 targets"),
        ('{targets: ["rfc3161:a", "rfc3161:b"], min: 0, every: "10s"}', ".min", "greater than or equal to 1"),
        ('{target: "rfc3161:a", targets: ["rfc3161:a", "rfc3161:b"], every: "10s"}', ".targets", "either target or targets"),
        ('{targets: ["rfc3161:a", "nope:x"], min: 1, every: "10s"}', ".targets[1]", "'nope:x' is not a target"),
        ('{targets: ["rfc3161:a", "rfc3161:zz"], min: 1, every: "10s"}', ".targets[1]", "'rfc3161:zz' has no settings"),
        ('{targets: ["rfc3161:a", "rfc3161:a"], every: "10s"}', ".targets", "'rfc3161:a' is named twice"),
        ('{target: "rfc3161:a", min: 1, every: "10s"}', ".min", "several targets"),
        ('{every: "10s"}', "", "needs a target"),
    ],
)
def test_bad_redundancy_is_an_error_naming_file_line_and_field(tmp_path, cadence, field, message):
    [issue] = errors(tmp_path, cadence)
    assert issue.startswith("config.yaml:8:"), issue  # the line of the cadence
    assert f"namespaces.\"demo:a\".cadence.fast{field}:" in issue, issue
    assert message in issue, issue
