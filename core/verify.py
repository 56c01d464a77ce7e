"""`vmsh-scheduler verify RECEIPT|DIR...`: check receipts anywhere, with no secret, writing nothing.

Anyone holding a receipt can check it: no config file is needed, no signing key, TSA
password or other secret is ever read, and nothing is written (no key, certificate or
folder). What a receipt needs comes from, first to last:

    local:<name>     --trust-bundle PEM and the existing <data_dir>/tsa/local-tsa.pem of
                     --data-dir, else of the data dir the receipt sits in
                     (<data_dir>/receipts/<namespace>/<file>), else of the config
    rfc3161:<name>   --trust-bundle PEM; else the target's trust_bundle in the config
    eip155:<id>      --rpc-url eip155:<id>=URL; else the target's rpcUrl in the config

(each scheme's spec says it: its `checker`, core/anchors/<scheme>/checking.py).

Four outcomes per receipt, and the exit code of the worst one (FAIL, CANNOT CHECK,
PENDING, OK: the same for `--explain | sh`, ctl, the control API and the dashboard):

    OK            0  the audit path, the attestation and (version 2) anchored_at check out;
                     the line says what is vouched for: "OK <namespace> <batch id> <root>
                     existed at <attested time> (<target>)", then the file
    FAIL          1  the receipt is wrong (or unreadable): it proves nothing
    CANNOT CHECK  3  something needed is missing or out of reach; the line says what to pass
    PENDING       4  genuine, but not final yet (a transaction fewer blocks deep than
                     required); the line says how far

A directory stands for every `*.json` below it (hidden folders skipped). With more than
one receipt a count goes to stderr. `--json` prints one JSON object per receipt and line.
"""

from __future__ import annotations

import asyncio
import enum
import json
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from core.anchors.base import CannotVerify
from core.anchors.schemes import SCHEMES, TargetSettings
from core.anchors.spec import ClosingVerifier, SchemeSpec
from core.errors import ValidationError
from core.receipts import (
    REDUNDANT_VERSION,
    Receipt,
    ReceiptError,
    ReceiptInvalid,
    ReceiptPending,
    ReceiptUncheckable,
    Verifier,
    Vouched,
    load_receipt,
    receipt_matches,
    verify_receipt,
)
from core.text import printable

SettingsFor = Callable[[str], TargetSettings | None]  # None (or LookupError): no entry


class Outcome(enum.Enum):
    OK = ("OK", 0)
    FAIL = ("FAIL", 1)
    CANNOT_CHECK = ("CANNOT CHECK", 3)
    PENDING = ("PENDING", 4)

    @property
    def label(self) -> str:
        return self.value[0]

    @property
    def exit_code(self) -> int:
        return self.value[1]


@dataclass(frozen=True)
class Result:
    path: Path
    outcome: Outcome
    reason: str | None = None
    receipt: Receipt | None = None
    vouched: Vouched | None = None

    def line(self) -> str:
        if self.outcome is Outcome.OK:
            if self.vouched is not None and self.receipt is not None:
                # the receipt's own text: a hidden character is shown escaped, never sent to the terminal
                return f"OK {printable(self.vouched.line(self.receipt))}: {self.path}"
            return f"OK {self.path}"
        reason = self.reason or ""
        if reason.startswith(f"{self.path}:"):  # file errors name the file (and line:col) already
            return f"{self.outcome.label} {reason}"
        return f"{self.outcome.label} {self.path}: {reason}"

    def as_json(self) -> dict[str, Any]:
        r = self.receipt
        att = r.attestation if r is not None else {}
        redundant: dict[str, Any] = {}
        if r is not None and r.version == REDUNDANT_VERSION:  # version 3: min, and which attestations are valid
            redundant = {"min": r.least, "valid": list(self.vouched.valid) if self.vouched else None}
        return redundant | {
            "path": str(self.path),
            "outcome": self.outcome.name.lower(),
            "exit_code": self.outcome.exit_code,
            "reason": self.reason,
            "namespace": r.namespace if r else None,
            "cadence": r.cadence if r else None,
            "target": r.target if r else None,
            "batch_id": r.batch.id if r else None,
            "anchored_root": r.anchored_root if r else None,
            "anchored_at": r.anchored_at if r else None,
            "gen_time": att.get("gen_time"),
            "attested_at": self.vouched.attested_at if self.vouched else None,
            "unbound": list(self.vouched.unbound) if self.vouched else None,
            "receipt_version": r.version if r else None,
            "tx_hash": att.get("tx_hash"),
        }


def data_dir_of(receipt_path: Path) -> Path | None:
    """Receipts live at <data_dir>/receipts/<namespace>/<file>.json; None elsewhere."""
    resolved = receipt_path.resolve()
    if len(resolved.parents) >= 3 and resolved.parents[1].name == "receipts":
        return resolved.parents[2]
    return None


def expand(paths: list[Path]) -> list[tuple[Path, str | None]]:
    """Files as given; a directory becomes the receipts below it, or an error if none."""
    out: list[tuple[Path, str | None]] = []
    for path in paths:
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*.json")
                if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            out += [(p, None) for p in found] or [(path, "no receipt files (*.json) below this folder")]
        else:
            out.append((path, None))
    return out


def trust_files(paths: Sequence[Path]) -> list[Path]:
    """--trust-bundle as given, a folder standing for its *.pem, *.crt and *.cer files (by
    name; a folder with none stays, and reading it says so)."""
    out: list[Path] = []
    for path in map(Path, paths):
        found = (
            sorted(p for p in path.iterdir() if p.suffix in (".pem", ".crt", ".cer") and p.is_file())
            if path.is_dir()
            else []
        )
        out += found or [path]
    return out


def chosen(
    paths: list[Path], lookup: Lookup | None, loaded: Sequence[tuple[Path, Receipt]]
) -> Iterator[tuple[Path, str | None, Receipt | None]]:
    """(path, why it cannot be read, the receipt when already read) of each receipt to check:
    every file, or with a lookup the readable ones it matches."""
    for path, problem in expand(paths):
        if lookup is None or problem:
            if lookup is None or not path.is_dir():  # a folder without receipts: nothing matches there
                yield path, problem, None
            continue
        try:
            receipt = load_receipt(path)
        except ReceiptError:
            continue  # not the receipt looked for (verify without --root names it)
        if lookup.matches(receipt):
            yield path, None, receipt
    for path, receipt in loaded:
        if lookup is None or lookup.matches(receipt):
            yield path, None, receipt


def parse_rpc_urls(values: Sequence[str]) -> dict[str, str]:
    """`<scheme>:<name>=URL` flags of the schemes that take one (their spec's `rpc_url_form`,
    their `name_problem`) -> {target: url}; ValueError with a sentence on a bad one."""
    out: dict[str, str] = {}
    for value in values:
        target, sep, url = value.partition("=")
        scheme, _, name = target.partition(":")
        spec = SCHEMES.get(scheme)
        if (
            not sep
            or spec is None
            or spec.rpc_url_form is None
            or not name
            or spec.name_problem(name) is not None
            or "://" not in url
        ):
            forms = " or ".join(s.rpc_url_form for s in SCHEMES.values() if s.rpc_url_form)
            raise ValueError(f"--rpc-url {value!r}: expected {forms}")
        out[target] = url
    return out


# --------------------------------------------------------------------------- verifiers


def scheme_of(target: str) -> SchemeSpec:
    """The spec of ``target``'s scheme; ValidationError for a scheme this program does not know."""
    scheme = target.partition(":")[0]
    spec = SCHEMES.get(scheme)
    if spec is None:
        raise ValidationError(f"unknown target scheme {scheme!r} in {target!r}")
    return spec


class ReadOnlyVerifiers:
    """What each target needs, from the flags first, then the config (core.anchors.spec's
    VerifyInputs); builds nothing that writes and reads no secret. Each scheme's `checker`
    builds the verifier of its receipts. `for_receipt(path)` is the `backend_for` of
    verify_receipt."""

    def __init__(
        self,
        *,
        trust_bundles: Sequence[Path] = (),
        rpc_urls: Mapping[str, str] | None = None,
        settings_for: SettingsFor | None = None,
        config_data_dir: Path | None = None,
        config_problem: str | None = None,
        data_dir: Path | None = None,
    ) -> None:
        self.trust_bundles = trust_files(trust_bundles)
        self.rpc_urls = dict(rpc_urls or {})
        self.settings_for = settings_for
        self.config_data_dir = config_data_dir
        self.config_problem = config_problem
        self.data_dir = data_dir
        self._cache: dict[tuple[str, Any], ClosingVerifier] = {}

    def for_receipt(self, path: Path) -> Callable[[str], ClosingVerifier]:
        return lambda target: self.verifier(target, path)

    def verifier(self, target: str, receipt_path: Path) -> ClosingVerifier:
        spec = scheme_of(target)
        if spec.checker is None:
            raise CannotVerify(f"{target}: this build cannot check {spec.name} receipts")
        key = (target, spec.checker_scope(self, receipt_path))
        if key not in self._cache:
            self._cache[key] = spec.checker(target, self, receipt_path)
        return self._cache[key]

    def data_dir_for(self, receipt_path: Path) -> Path | None:
        return self.data_dir or data_dir_of(receipt_path) or self.config_data_dir

    def settings(self, target: str) -> TargetSettings | None:
        """The config's settings for a target, or None (no config, or no entry)."""
        if self.settings_for is None:
            return None
        try:
            return self.settings_for(target)
        except LookupError:
            return None

    def no_config(self) -> str:
        return f" (the config was not used: {self.config_problem})" if self.config_problem else ""

    async def close(self) -> None:
        for verifier in self._cache.values():
            await verifier.close()
        self._cache.clear()


# --------------------------------------------------------------------------- running


@dataclass(frozen=True)
class Lookup:
    """`verify --root` / `--batch`: only the receipts of that root and/or batch id."""

    root: str | None = None
    batch_id: str | None = None

    def matches(self, receipt: Receipt) -> bool:
        return receipt_matches(receipt, root=self.root, batch_id=self.batch_id)

    @property
    def text(self) -> str:
        return " ".join(x for x in (self.root, self.batch_id and f"batch {self.batch_id}") if x)


async def check_one(
    path: Path, verifiers: ReadOnlyVerifiers | Callable[[str], Verifier], receipt: Receipt | None = None
) -> Result:
    """One receipt's outcome (`receipt`: already read from `path`); `verifiers` is a
    ReadOnlyVerifiers or a backend_for."""
    if receipt is None:
        try:
            receipt = load_receipt(path)
        except ReceiptInvalid as exc:
            return Result(path, Outcome.FAIL, exc.reason)
        except ReceiptError as exc:
            return Result(path, Outcome.FAIL, str(exc))
    backend_for = verifiers.for_receipt(path) if isinstance(verifiers, ReadOnlyVerifiers) else verifiers
    try:
        vouched = await verify_receipt(receipt, backend_for)
    except ReceiptUncheckable as exc:
        return Result(path, Outcome.CANNOT_CHECK, exc.reason, receipt)
    except ReceiptPending as exc:
        return Result(path, Outcome.PENDING, exc.reason, receipt)
    except ReceiptInvalid as exc:
        return Result(path, Outcome.FAIL, exc.reason, receipt)
    except Exception as exc:  # a verifier's bug is no verdict on the receipt; go on with the others
        reason = f"could not be checked ({type(exc).__name__}: {exc}); please report this"
        return Result(path, Outcome.CANNOT_CHECK, reason, receipt)
    return Result(path, Outcome.OK, None, receipt, vouched)


async def verify_files(
    paths: list[Path],
    out: TextIO,
    *,
    as_json: bool = False,
    err: TextIO | None = None,
    verifiers: ReadOnlyVerifiers | None = None,
    data_dir: Path | None = None,
    settings_for: SettingsFor | None = None,
    lookup: Lookup | None = None,
    loaded: Sequence[tuple[Path, Receipt]] = (),
) -> int:
    """Verify each receipt, one line (or JSON object) each; the exit code of the worst outcome.
    With `lookup`, only the receipts it matches (none: FAIL naming what was looked for);
    `loaded`: receipts already read (a store's rows), checked after the files.

    `verifiers` says where trust comes from; without it, `settings_for` (a config's
    resolve_target) and `data_dir` are used."""
    err = err or sys.stderr
    own = verifiers is None
    if verifiers is None:
        verifiers = ReadOnlyVerifiers(settings_for=settings_for, data_dir=data_dir)
    results: list[Result] = []
    try:
        for path, problem, receipt in chosen(paths, lookup, loaded):
            if problem:
                result = Result(path, Outcome.FAIL, problem)
            else:
                result = await check_one(path, verifiers, receipt)
            results.append(result)
            out.write((json.dumps(result.as_json()) if as_json else result.line()) + "\n")
    finally:
        if own:
            await verifiers.close()
    if lookup is not None and not results:
        where = ", ".join(map(str, paths)) or "the store"
        out.write(f"FAIL {lookup.text}: no receipt of it in {where}\n")
        return Outcome.FAIL.exit_code
    counts = {o: sum(r.outcome is o for r in results) for o in Outcome}
    if len(results) > 1:
        tail = (
            f", {counts[Outcome.CANNOT_CHECK]} cannot be checked"
            if counts[Outcome.CANNOT_CHECK]
            else ""
        ) + (f", {counts[Outcome.PENDING]} pending" if counts[Outcome.PENDING] else "")
        err.write(
            f"{len(results)} receipts: {counts[Outcome.OK]} OK, "
            f"{counts[Outcome.FAIL]} failed{tail}\n"
        )
    if counts[Outcome.FAIL]:
        return Outcome.FAIL.exit_code
    if counts[Outcome.CANNOT_CHECK]:
        return Outcome.CANNOT_CHECK.exit_code
    if counts[Outcome.PENDING]:
        return Outcome.PENDING.exit_code
    return Outcome.OK.exit_code


def run_verify(paths: list[Path], out: TextIO, **kw: Any) -> int:
    async def run() -> int:
        verifiers: ReadOnlyVerifiers | None = kw.pop("verifiers", None)
        try:
            return await verify_files(paths, out, verifiers=verifiers, **kw)
        finally:
            if verifiers is not None:
                await verifiers.close()

    return asyncio.run(run())
