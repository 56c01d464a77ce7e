"""What a target scheme package provides: its `SchemeSpec` (core/anchors/<scheme>/scheme.py),
registered with one line in core/anchors/schemes.py.

Everything outside the package that depends on the scheme reads the spec: the config (the
`targets.<scheme>` settings model, which target ids are valid, which need settings, which
accept a policy, which jobs are refused), the backend registry (build), check-config (the
summary's detail, the files it opens), the runtime (the development warning), `verify`
(the read-only checker of a receipt's proof and the `--rpc-url` it takes) and
`verify --explain` (the stock-tool steps).

Light on purpose (pydantic only, through core.model_types): core.config imports the specs,
and the backends themselves (cryptography, httpx, eth_account) are imported by the spec's
functions on first use.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from core.model_types import Model

if TYPE_CHECKING:
    from core.anchors.base import Backend, SharedRecords
    from core.clock import Clock
    from core.receipts import Receipt


# (target, settings, data dir, clock, records shared with other replicas or None) -> the backend
Build = Callable[[str, Any, Path, "Clock", "SharedRecords | None"], "Backend"]


class ClosingVerifier(Protocol):
    """What `verify` checks a receipt's attestation with (the part of a Backend that
    core.receipts.verify_receipt needs), holding something to release until close()."""

    async def verify(
        self,
        attestation: dict[str, Any],
        digest: bytes,
        *,
        required: int | None = None,
        policy: str | None = None,
    ) -> datetime | None: ...

    async def close(self) -> None: ...


class VerifyInputs(Protocol):
    """What `verify` was given to check receipts with, no secret among it (core/verify.py's
    ReadOnlyVerifiers): the flags first, then the config."""

    trust_bundles: list[Path]  # --trust-bundle PEM files
    rpc_urls: dict[str, str]  # --rpc-url: target -> URL
    config_data_dir: Path | None

    def settings(self, target: str) -> Any:
        """The config's settings for a target, or None (no config, or no entry)."""

    def data_dir_for(self, receipt_path: Path) -> Path | None:
        """--data-dir, else the data dir the receipt sits in, else the config's."""

    def no_config(self) -> str:
        """" (the config was not used: why)" when a config was asked for but not read, else ""."""


@dataclass(frozen=True)
class TrustFile:
    """A certificate file a verifier of a receipt needs (`export` writes it beside the
    receipts): its file name, PEM bytes, and where it came from, said to the user."""

    name: str
    pem: bytes
    origin: str


# (target, the receipt's attestation, the inputs) -> the certificate files its verifier needs
ExportTrust = Callable[[str, dict[str, Any], VerifyInputs], list[TrustFile]]
# export --format <name>: (name, the receipt's JSON document -> the file's bytes, ValueError
# when that receipt has none yet); written as <receipt>.<name> beside the receipt
ProofFile = tuple[str, Callable[[dict[str, Any]], bytes]]
# (target, the inputs, the receipt's path) -> the checker of that target's receipts
MakeChecker = Callable[[str, VerifyInputs, Path], ClosingVerifier]
# (the receipt, its path, the inputs) -> the shell lines that check its attestation
ExplainSteps = Callable[["Receipt", Path, VerifyInputs], list[str]]


def _no_refusal(target: str, settings: object, entry: str | None) -> str | None:
    return None


def _any_name(name: str) -> str | None:
    return None


def _no_detail(settings: object) -> str:
    return ""


def _no_files(settings: object, target: str) -> list[tuple[str, str]]:
    return []


def _one_checker(inputs: VerifyInputs, receipt_path: Path) -> Hashable:
    return None


@dataclass(frozen=True)
class SchemeSpec:
    """Everything the rest of the program knows about one target scheme."""

    name: str
    settings: type[Model]  # the model of a `targets.<scheme>.<name>` entry
    build: Build | None  # None: this build has no backend for the scheme (its jobs are refused)
    # (target id, settings, the entry it resolved to) -> why its jobs are refused, or None
    refusal: Callable[[str, Any, str | None], str | None] = _no_refusal
    # the same for the config's load warning, where it reads better said another way
    # (same arguments; only called when `refusal` gave a reason); None: the reason itself
    refusal_warning: Callable[[str, Any, str | None], str] | None = None
    # the part after "<scheme>:" -> what is wrong with it ("needs a numeric chain id..."), or None
    name_problem: Callable[[str], str | None] = _any_name
    # check-config's detail after the target: the host only, never a secret or a URL path
    describe: Callable[[Any], str] = _no_detail
    # check-config (thorough): (settings, target id) -> [(field, problem)] for the files it names
    file_problems: Callable[[Any, str], list[tuple[str, str]]] = _no_files
    # verify: the read-only checker of a receipt's attestation; None: cannot be checked here
    checker: MakeChecker | None = None
    # what else than the target a checker depends on (local: the receipt's data dir)
    checker_scope: Callable[[VerifyInputs, Path], Hashable] = _one_checker
    # verify --explain: the stock-tool steps after the audit path; None: none known
    explain: ExplainSteps | None = None
    # export: the certificates a verifier of a receipt needs, written beside it; None: none
    export_trust: ExportTrust | None = None
    # export: a proof file another program checks (btc: "ots", OpenTimestamps); None: none
    proof_file: ProofFile | None = None
    # verify --rpc-url <scheme>:<name>=<URL> (a name that passes `name_problem`): the form it
    # takes, shown when one is wrong ("eip155:<chain id>=<URL>, for example ..."); None: the
    # scheme's receipts are not checked on a node (no --rpc-url)
    rpc_url_form: str | None = None
    # "" for a target that proves something; else what it is, for the warning the runtime
    # logs at start: "target is <development>: it proves nothing to third parties"
    development: str = ""
    # a target without an entry uses the model's defaults, shown as this entry name
    # ("embedded"); None: such a target has no settings (add targets.<scheme>.<name>)
    default_entry: str | None = None
    # why an unset ${VARIABLE} in this scheme's settings is no error ("btc jobs stay disabled
    # until it is set": `refusal` then names what is missing); "": an unset one is an error
    unset_ok: str = ""
    confirmations: bool = False  # proofs deepen over time (receipts pending until `required`)
    policy: bool = False  # accepts a cadence's policyOID (time-stamp authorities)


def host_of(url: str) -> str:
    """The host of a URL, for display: never the path or query (they may hold API keys)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "?"
    # without a scheme urlsplit finds no host: the text before the first "/", less any user:password@
    return parts.hostname or url.split("/")[0].rpartition("@")[2] or "?"


def shell_word(value: Any) -> str:
    """`value` as one word of a POSIX shell command (verify --explain)."""
    return shlex.quote(str(value))
