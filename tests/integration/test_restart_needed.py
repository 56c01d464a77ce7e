"""A reload that changes a setting read only at start says "restart needed" and keeps running."""

from __future__ import annotations

from core.jobs import JobKey


async def test_a_reload_names_the_settings_that_need_a_restart_and_applies_the_rest(stack, obs, tmp_path):
    s = await stack({"a": {"fast": "10s"}})
    await s.anchor_pass()
    s.batch("b", 1)
    text = obs.config_text({"a": {"fast": "10s"}, "b": {"fast": "10s"}})
    text = (
        text.replace("data_dir: data", "data_dir: elsewhere\n  concurrency: 3")
        .replace('listen: "127.0.0.1:0"', 'listen: "127.0.0.1:1"')
        .replace("http:", "log:\n  file: vmsh.log\ncloudevents:\n  file: events.jsonl\nhttp:")
    )
    obs.replace_file(s.config_path, text)

    result = s.runtime.reload()

    needed = "scheduler.data_dir, scheduler.concurrency, http.listen, log.file, cloudevents"
    assert result.applied and result.changed
    assert result.summary == f"+1 -0 ~0 jobs; restart needed: {needed}"
    [warning] = [r for r in s.logs if r.msg.startswith("config reload: restart needed")]
    assert warning.level == "WARNING" and warning.fields["settings"] == needed
    # The jobs were applied; the data dir and the HTTP server are the ones it started with.
    assert JobKey("b", "fast") in s.engine.jobs
    await s.anchor_pass()
    assert list((tmp_path / "data" / "receipts").glob("b/*.json"))
    assert not (tmp_path / "elsewhere").exists()
    code, body = await s.health()
    assert set(body["namespaces"]) == {"a", "b"}


async def test_a_reload_of_jobs_only_needs_no_restart(stack, obs):
    s = await stack({"a": {"fast": "10s"}})
    obs.replace_file(s.config_path, obs.config_text({"a": {"fast": "20s"}}))
    result = s.runtime.reload()
    assert result.summary == "+0 -0 ~1 jobs"
    assert not [r for r in s.logs if "restart needed" in r.msg]


async def test_a_reload_that_changes_the_dashboards_keys_or_theme_says_restart_needed(stack, obs):
    # The dashboard reads tui.keys, tui.theme and tui.theme_file once, when it starts: a
    # reload that changes them must not be reported as applied without a word (issue 22, 7).
    s = await stack({"a": {"fast": "10s"}})
    text = obs.config_text({"a": {"fast": "10s"}})
    obs.replace_file(s.config_path, text + "tui:\n  theme: nord\n  keys:\n    force: x\n")

    result = s.runtime.reload()

    assert result.applied and result.changed
    assert result.summary == "+0 -0 ~0 jobs; restart needed: tui.theme, tui.keys"
    [warning] = [r for r in s.logs if r.msg.startswith("config reload: restart needed")]
    assert warning.fields["settings"] == "tui.theme, tui.keys"
    # What the dashboard runs with stays what it started with.
    assert s.runtime.started_with.tui.theme is None and s.runtime.started_with.tui.keys == {}
