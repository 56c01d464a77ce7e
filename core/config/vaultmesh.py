"""The VaultMesh files merged into the raw data: namespaces.yaml and anchors.yaml.

load_config (core/config/load.py) decides which files to include; these merge one file's
data and position tree into the main file's, reporting a name defined twice.
"""

from __future__ import annotations

from typing import Any

from core.config.positions import Pos, Problems, unknown_key_message


def merge_namespaces(raw: dict[str, Any], data: Any, pos: Pos, problems: Problems) -> None:
    """A VaultMesh namespaces.yaml (``namespaces:`` only) into the raw data."""
    root = problems.root
    if data == {}:
        return
    if not isinstance(data, dict):
        problems.at(pos, "expected a mapping with a 'namespaces' key")
        return
    for key, child in pos.children.items():
        if key != "namespaces":
            problems.at(child, unknown_key_message(key, ["namespaces"]), key=True)
    namespaces = data.get("namespaces")
    ns_pos = pos.children.get("namespaces")
    if namespaces is None or ns_pos is None:
        return
    if not isinstance(namespaces, dict):
        raw["namespaces"] = namespaces
        root.children["namespaces"] = ns_pos
        return
    existing = raw.get("namespaces")
    if existing is None:
        raw["namespaces"] = namespaces
        root.children["namespaces"] = ns_pos
        return
    if not isinstance(existing, dict):
        return
    target_pos = root.children["namespaces"]
    for name, value in namespaces.items():
        child = ns_pos.children[name]
        if name in existing:
            problems.at(child, f"namespace {name!r} is also defined in {target_pos.file}", key=True)
            continue
        existing[name] = value
        target_pos.children[name] = child


def merge_targets(raw: dict[str, Any], data: Any, pos: Pos, problems: Problems) -> None:
    """A VaultMesh anchors.yaml (``<scheme>: {<name>: settings}``) into ``targets``."""
    root = problems.root
    if data == {}:
        return
    if not isinstance(data, dict):
        problems.at(pos, "expected a mapping of <scheme>: {<name>: settings}")
        return
    existing = raw.get("targets")
    if existing is None:
        raw["targets"] = data
        root.children["targets"] = pos
        return
    if not isinstance(existing, dict):
        return
    tpos = root.children["targets"]
    for scheme, entries in data.items():
        spos = pos.children[scheme]
        if scheme not in existing or not isinstance(existing[scheme], dict) or not isinstance(entries, dict):
            if scheme in existing:
                problems.at(spos, f"targets.{scheme} is also defined in {tpos.file}", key=True)
                continue
            existing[scheme] = entries
            tpos.children[scheme] = spos
            continue
        for name, settings in entries.items():
            npos = spos.children[name]
            if name in existing[scheme]:
                problems.at(npos, f"target {scheme}.{name} is also defined in {tpos.file}", key=True)
                continue
            existing[scheme][name] = settings
            tpos.children[scheme].children[name] = npos
