"""`eip155:<chainId>`: anchor a digest in an EVM transaction, signed locally, sent over JSON-RPC.

Two modes:

- without `contract`: a zero-value transaction from the signer to itself whose calldata
  is exactly the 32-byte anchored digest (any explorer shows it as the tx input);
- with `contract`: a call of the VaultMesh anchor contract
  `anchor(bytes32 root, bytes32 batchId, string memo, bool persist)`, ABI-encoded in abi.py.
  `root` and `batchId` are both the anchored digest: the backend is called once per
  group of jobs, and the digest (the batch root for a group of one, else the RFC 6962
  tree hash over the group's roots) is what identifies that group; the per-namespace
  batch ids live in the receipts. `memo` is "vaultmesh-scheduler"; `persist` comes from
  the target settings.

Sending, in this order, under a per-sender lock (asyncio, process-wide) so concurrent
groups never take the same nonce:

1. the node's `eth_chainId` must equal the target's chain id, else ValidationError;
2. fees: EIP-1559 when the latest block has `baseFeePerGas` (maxPriorityFeePerGas from
   the node, maxFeePerGas = 2 * baseFee + tip, clipped to `max_fee_gwei`), else a legacy
   `gasPrice`; a fee the chain needs now above `max_fee_gwei` is a ValidationError and
   nothing is signed;
3. gas: `gas_limit` if set, else `eth_estimateGas` + 20 %; a balance below gas * maxFee is
   a ValidationError naming the account (never the key);
4. nonce: the node's pending nonce, moved past our own transactions that the node still
   has, from the record of sent transactions ({nonce: tx_hash}) persisted under
   `<data_dir>/evm/<chainId>-<address>.json`: a restart or a lagging node never reuses a
   nonce, and a reorg that drops one of ours never leaves a gap that wedges the signer
   (a plain max(node, local counter) would; see `_next_nonce`);
5. sign, then `note({"tx_hash", "raw_tx", "nonce", "from"})` — durable in the intent
   journal — and only then `eth_sendRawTransaction`; the sent record is saved once the
   node accepted the transaction (a rejected send records nothing: no gap; a send whose
   answer was lost is recorded as outstanding, so the retry looks it up first).

Then it waits for the transaction's receipt (`receipt_timeout`, default 120 s) and
returns an Attestation with status "pending" and the observed depth; the confirmation
tracker (core/confirmations.py) moves the receipt to "confirmed" at the job's depth.
A transaction that is not mined in time stays "outstanding" in the same per-sender file
(keyed by digest): the next attempt for that digest waits for it again (or rebroadcasts
the same signed bytes) instead of signing a second transaction; the attempt itself
fails with a NetworkError so the job backs off.

After a crash, `recover(digest, notes)` never signs: it looks `notes["tx_hash"]` up on
the node; a mined transaction gives the attestation, a pending one is waited for, an
unknown one is rebroadcast from `notes["raw_tx"]` (the same signed bytes); if its nonce
was meanwhile used by another transaction, it never landed (None).

Secrets: the key comes from `key` (a SecretStr in the config), the environment variable
`key_env`, or the file `key_file`; it is read when the first transaction is signed (so
`verify` works without it) and never appears in a log, an attestation, a journal note,
an error message, or repr(). The RPC URL may carry an API key in its path: messages
name only its host.

Test hook: with `VMSH_TEST_CRASH_AFTER_SEND=1` in the environment the process exits with
status 137 (os._exit, like kill -9: no cleanup) right after `eth_sendRawTransaction`
returns, so tests can crash a real scheduler between send and receipt. It does nothing
unless that variable is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import weakref
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from eth_account import Account
from eth_utils import to_checksum_address

from core.anchors.base import (
    Attestation,
    CannotVerify,
    JournalNote,
    SharedRecords,
    SignerFile,
    SignerRecord,
    VerificationFailed,
)
from core.anchors.evm.abi import MEMO, encode_anchor_call
from core.anchors.evm.proof import check_transaction
from core.anchors.evm.rpc import Node, RpcError, qty, to_hex
from core.anchors.evm.settings import Eip155Target
from core.anchors.keysource import read_key
from core.errors import AuthError, NetworkError, ValidationError

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

    from core.clock import Clock

__all__ = ["CRASH_HOOK", "EVMBackend"]

GWEI = 10**9
DEFAULT_TIP = 1 * GWEI  # when the node has no eth_maxPriorityFeePerGas
GAS_MARGIN = 1.2
CRASH_HOOK = "VMSH_TEST_CRASH_AFTER_SEND"

# One lock per (chain id, sender) per event loop: backends are rebuilt on reload, the lock
# must outlive them (an asyncio.Lock belongs to one loop; tests run many loops).
_sender_locks: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[tuple[int, str], asyncio.Lock]
] = weakref.WeakKeyDictionary()


class _TxFailed(ValidationError):
    """The transaction was mined but reverted (status 0): it anchored nothing."""


# --------------------------------------------------------------------------- the backend


class EVMBackend:
    """Backend for `eip155:<chainId>` targets (implements core.anchors.base.Backend)."""

    def __init__(
        self,
        target: str,
        settings: Eip155Target,
        clock: Clock,
        data_dir: Path | str,
        *,
        receipt_timeout: float = 120.0,
        poll_interval: float = 0.5,
        rpc_timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
        shared: SharedRecords | None = None,
    ) -> None:
        scheme, _, name = target.partition(":")
        if scheme != "eip155" or not name.isdigit():
            raise ValidationError(f"{target!r} is not an eip155:<chainId> target")
        self.target = target
        self.chain_id = int(name)
        if settings.chain_id != self.chain_id:
            raise ValidationError(
                f"target {target} has chain id {self.chain_id} but its settings say chainId "
                f"{settings.chain_id}; refusing to anchor to the wrong chain"
            )
        self.settings = settings
        self.clock = clock
        self.data_dir = Path(data_dir)
        self.contract = to_checksum_address(settings.contract) if settings.contract else None
        self.receipt_timeout = receipt_timeout
        self.poll_interval = poll_interval
        self._account: LocalAccount | None = None  # loaded on first send; holds the key, never printed
        self._node = Node(target, settings.rpc_url, timeout=rpc_timeout, transport=transport, sender=self._from_text)
        self.shared = shared

    def __repr__(self) -> str:
        return f"EVMBackend({self.target!r}, rpc={self._node.where!r})"

    # ----- key -----------------------------------------------------------------------------

    def _load_key(self) -> str:
        return read_key(self.target, self.settings)

    @property
    def account(self) -> LocalAccount:
        if self._account is None:
            key = self._load_key()
            try:
                self._account = Account.from_key(key)
            except Exception:
                # Never chain the original: its message or traceback could quote the key.
                raise ValidationError(
                    f"{self.target}: the configured signing key is not a valid secp256k1 private key"
                ) from None
            finally:
                del key
        return self._account

    @property
    def address(self) -> str:
        return self.account.address

    def _from_text(self) -> str:
        return self._account.address if self._account is not None else "the signing account"

    # ----- fees, gas, nonce ---------------------------------------------------------------

    async def _fees(self) -> dict[str, int]:
        cap = int(self.settings.max_fee_gwei * GWEI) if self.settings.max_fee_gwei else None
        block = await self._node.call("eth_getBlockByNumber", "latest", False)
        base = block.get("baseFeePerGas") if isinstance(block, dict) else None
        if base is None:
            price = qty(await self._node.call("eth_gasPrice"))
            if cap is not None and price > cap:
                raise ValidationError(
                    f"{self.target}: gas price {price / GWEI:.3f} gwei is above max_fee_gwei "
                    f"{self.settings.max_fee_gwei}; not sending"
                )
            return {"gasPrice": price}
        base_fee = qty(base)
        try:
            tip = qty(await self._node.rpc("eth_maxPriorityFeePerGas"))
        except RpcError:
            tip = DEFAULT_TIP
        max_fee = 2 * base_fee + tip
        if cap is not None:
            if base_fee + tip > cap:
                raise ValidationError(
                    f"{self.target}: the fee needed now ({(base_fee + tip) / GWEI:.3f} gwei: base "
                    f"{base_fee / GWEI:.3f} + tip {tip / GWEI:.3f}) is above max_fee_gwei "
                    f"{self.settings.max_fee_gwei}; not sending"
                )
            max_fee = min(max_fee, cap)
        return {"maxFeePerGas": max_fee, "maxPriorityFeePerGas": min(tip, max_fee)}

    def _tx_fields(self, digest: bytes) -> tuple[str, bytes]:
        if self.contract:
            return self.contract, encode_anchor_call(
                digest, digest, MEMO, bool(self.settings.persist)
            )
        return self.address, digest

    async def _gas(self, to: str, data: bytes) -> int:
        if self.settings.gas_limit:
            return int(self.settings.gas_limit)
        call = {"from": self.address, "to": to, "value": "0x0", "data": to_hex(data)}
        estimate = qty(await self._node.call("eth_estimateGas", call))
        return int(estimate * GAS_MARGIN)

    @property
    def _signer(self) -> str:
        return f"{self.chain_id}-{self.address.lower()}"

    def _store(self) -> SignerRecord:
        if self.shared is not None:  # several replicas: the record lives in the store
            return self.shared.signer(self._signer)
        return SignerFile(self.data_dir / "evm" / f"{self._signer}.json", "nonce file", ("sent", "outstanding"))

    @contextlib.asynccontextmanager
    async def _lock(self) -> AsyncIterator[None]:
        """This sender's nonces, one user at a time: in this process (an asyncio lock), and
        across replicas when they share a store (a database lock held while signing and
        sending), so two replicas never send two transactions with one nonce."""
        locks = _sender_locks.setdefault(asyncio.get_running_loop(), {})
        key = (self.chain_id, self.address.lower())
        lock = locks.get(key)
        if lock is None:
            lock = locks[key] = asyncio.Lock()
        async with lock:
            if self.shared is None:
                yield
            else:
                async with self.shared.signer_lock(self._signer):
                    yield

    # ----- anchoring ----------------------------------------------------------------------

    async def anchor(
        self, digest: bytes, note: JournalNote, *, policy: str | None = None
    ) -> Attestation:
        if len(digest) != 32:
            raise ValidationError(f"{self.target}: a digest is 32 bytes, got {len(digest)}")
        if policy is not None:
            raise ValidationError(
                f"{self.target}: a chain anchor has no policy (policyOID {policy} applies to "
                "rfc3161 and local targets only)"
            )
        account = self.account  # key problems surface before any network call
        await self._node.check_chain(self.chain_id)
        store = self._store()
        earlier = await self._earlier(digest, note, store)
        if earlier is not None:
            return earlier
        facts = await self._sign_and_send(digest, note, account, store)
        try:
            attestation = await self._resume(facts, wait=True)
        except _TxFailed:
            await self._forget(digest)
            raise
        if attestation is None:  # pragma: no cover - only if another tx took our nonce
            await self._forget(digest)
            raise NetworkError(
                f"{self.target}: transaction {facts['tx_hash']} was replaced before it was mined"
            )
        await self._forget(digest)
        return attestation

    async def _earlier(self, digest: bytes, note: JournalNote, store: SignerRecord) -> Attestation | None:
        """A previous attempt for this digest sent a transaction that was not mined in time:
        wait for that one (or rebroadcast it), never pay twice for one digest. None: there
        was none, or its nonce went to another transaction (sign anew)."""
        async with self._lock():
            earlier = store.load()["outstanding"].get(digest.hex())
        if earlier is None:
            return None
        await _maybe_await(note(dict(earlier)))
        try:
            attestation = await self._resume(earlier, wait=True)
        except _TxFailed:
            await self._forget(digest)
            raise
        await self._forget(digest)
        return attestation

    async def _sign_and_send(
        self, digest: bytes, note: JournalNote, account: LocalAccount, store: SignerRecord
    ) -> dict[str, Any]:
        """Sign the transaction, journal its facts, send it and record it as sent: the facts
        (tx_hash, raw_tx, nonce, from)."""
        async with self._lock():
            signed, nonce = await self._sign(digest, account, store)
            facts: dict[str, Any] = {
                "tx_hash": to_hex(bytes(signed.hash)),
                "raw_tx": to_hex(bytes(signed.raw_transaction)),
                "nonce": nonce,
                "from": account.address,
            }
            # Durable before the transaction exists anywhere but here.
            await _maybe_await(note(facts))
            try:
                await self._send(facts["raw_tx"], facts["tx_hash"])
            except NetworkError:
                # The node may have it anyway: remember it, so the next attempt for this
                # digest looks it up (and rebroadcasts the same bytes) instead of paying twice.
                self._remember(store, digest, facts)
                raise
            if os.environ.get(CRASH_HOOK) == "1":
                os._exit(137)  # test hook (module docstring): die between send and receipt
            self._remember(store, digest, facts)
        return facts

    async def _sign(self, digest: bytes, account: LocalAccount, store: SignerRecord) -> tuple[Any, int]:
        """The signed transaction (fees, gas, a balance that covers them, the next nonce)
        and its nonce; under the sender's lock."""
        fees = await self._fees()
        to, data = self._tx_fields(digest)
        gas = await self._gas(to, data)
        price = fees.get("maxFeePerGas", fees.get("gasPrice", 0))
        balance = qty(await self._node.call("eth_getBalance", account.address, "latest"))
        if balance < gas * price:
            raise ValidationError(
                f"{self.target}: insufficient funds in {account.address}: balance "
                f"{balance} wei, a transaction may cost up to {gas * price} wei "
                f"({gas} gas at {price / GWEI:.3f} gwei)"
            )
        nonce = await self._next_nonce(store.load())
        tx: dict[str, Any] = {
            "chainId": self.chain_id,
            "nonce": nonce,
            "to": to,
            "value": 0,
            "gas": gas,
            "data": data,
            **fees,
        }
        if "maxFeePerGas" in fees:
            tx["type"] = 2
        return account.sign_transaction(tx), nonce

    async def _next_nonce(self, doc: dict[str, Any]) -> int:
        """The node's pending nonce, moved past our own transactions that the node still has.

        `doc["sent"]` ({nonce: tx_hash}, persisted) is the local record that survives
        restarts: a node that lags (or, like ganache with its miner stopped, counts only
        mined transactions) would hand out a nonce we already used. A plain
        max(node, local counter) would instead wedge the signer forever after a reorg that
        drops one of our transactions (every later nonce waits behind the gap); walking
        our record reuses exactly the dropped nonce. Entries below the mined count go.
        """
        sent: dict[str, str] = doc["sent"]
        mined = qty(await self._node.call("eth_getTransactionCount", self.address, "latest"))
        for n in [n for n in sent if int(n) < mined]:
            del sent[n]
        nonce = max(
            mined, qty(await self._node.call("eth_getTransactionCount", self.address, "pending"))
        )
        while (
            str(nonce) in sent
            and await self._node.call("eth_getTransactionByHash", sent[str(nonce)]) is not None
        ):
            nonce += 1
        return nonce

    async def _send(self, raw_tx: str, tx_hash: str) -> None:
        try:
            await self._node.rpc("eth_sendRawTransaction", raw_tx)
        except RpcError as exc:
            text = exc.message.lower()
            if "already known" in text or "known transaction" in text or "already imported" in text:
                return  # the node has it: that is what we wanted
            raise self._node.classify("eth_sendRawTransaction", exc) from None

    @staticmethod
    def _remember(store: SignerRecord, digest: bytes, facts: dict[str, Any]) -> None:
        doc = store.load()
        doc["sent"][str(facts["nonce"])] = facts["tx_hash"]
        doc["outstanding"][digest.hex()] = facts
        store.save(doc)

    async def _forget(self, digest: bytes) -> None:
        store = self._store()
        async with self._lock():
            doc = store.load()
            if doc["outstanding"].pop(digest.hex(), None) is not None:
                store.save(doc)

    async def _resume(self, facts: dict[str, Any], *, wait: bool) -> Attestation | None:
        """The attestation of an already signed transaction: look it up, rebroadcast the same
        bytes if the node does not know it, wait for it to be mined. None if it can never land
        (another transaction used its nonce)."""
        tx_hash = facts["tx_hash"]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.receipt_timeout
        rebroadcast = False
        while True:
            receipt = await self._node.call("eth_getTransactionReceipt", tx_hash)
            if receipt is not None:
                return await self._attestation(receipt, facts)
            known = await self._node.call("eth_getTransactionByHash", tx_hash)
            if known is None:
                mined_nonce = qty(
                    await self._node.call("eth_getTransactionCount", facts["from"], "latest")
                )
                if mined_nonce > int(facts["nonce"]):
                    return None  # the nonce is spent by another transaction: ours never lands
                if not rebroadcast:
                    await self._send(facts["raw_tx"], tx_hash)
                    rebroadcast = True
                    continue
            if not wait or loop.time() >= deadline:
                raise NetworkError(
                    f"{self.target}: transaction {tx_hash} not mined within {self.receipt_timeout:.0f} s; "
                    "the next attempt waits for it again instead of sending another"
                )
            await asyncio.sleep(self.poll_interval)

    async def _attestation(self, receipt: dict[str, Any], facts: dict[str, Any]) -> Attestation:
        if qty(receipt.get("status", "0x1")) != 1:
            raise _TxFailed(
                f"{self.target}: transaction {facts['tx_hash']} was mined but failed (status 0)"
            )
        block_number = qty(receipt["blockNumber"])
        head = qty(await self._node.call("eth_blockNumber"))
        data: dict[str, Any] = {
            "scheme": "eip155",
            "chain_id": self.chain_id,
            "tx_hash": receipt.get("transactionHash", facts["tx_hash"]),
            "block_number": block_number,
            "block_hash": receipt["blockHash"],
            "from": to_checksum_address(facts["from"]),
        }
        if self.contract:
            data["contract"] = self.contract
        return Attestation(data, status="pending", confirmations=max(0, head - block_number + 1))

    async def recover(self, digest: bytes, notes: dict[str, Any]) -> Attestation | None:
        """After a crash: never signs. Look the journalled transaction up; rebroadcast the same
        bytes if the node lost it; None when nothing was signed or its nonce went elsewhere."""
        if not notes.get("tx_hash") or not notes.get("raw_tx"):
            return None  # the crash came before signing: nothing can have been sent
        try:
            attestation = await self._resume(notes, wait=True)
        except _TxFailed:
            attestation = None  # mined but reverted: it anchored nothing, the jobs are due again
        await self._forget(digest)
        return attestation

    # ----- confirmations and verification --------------------------------------------------

    async def confirmations(self, attestation: dict[str, Any]) -> int | None:
        """Depth of the attested transaction now: 0 while pending in the pool, None when the
        node no longer knows it or it sits in another block than attested (a reorg)."""
        receipt = await self._node.call("eth_getTransactionReceipt", attestation["tx_hash"])
        if receipt is None:
            known = await self._node.call("eth_getTransactionByHash", attestation["tx_hash"])
            return None if known is None else 0
        if attestation.get("block_hash") and receipt.get("blockHash") != attestation["block_hash"]:
            return None  # reorged into another block: the receipt's block claim is void
        head = qty(await self._node.call("eth_blockNumber"))
        return max(0, head - qty(receipt["blockNumber"]) + 1)

    async def verify(
        self,
        attestation: dict[str, Any],
        digest: bytes,
        *,
        required: int | None = None,
        policy: str | None = None,
    ) -> datetime | None:
        """On the node: the transaction exists on chain `chain_id`, succeeded, sits in the attested
        block, carries `digest` (calldata, or the anchor(...) call's root), and is at least
        `required` blocks deep (default: the target's `confirmations`). Needs no signing key
        and writes nothing; returns the block's time; fewer blocks deep than required is
        NotFinal (genuine, not final yet); a node that cannot be asked (unreachable, refusing, another
        chain) is CannotVerify, not a verdict on the receipt. A receipt that claims a
        policy is wrong: a chain anchor has none."""
        if policy is not None:
            raise VerificationFailed(
                f"{self.target}: the receipt states policy {policy}, but a chain anchor has no policy"
            )
        need = self.settings.confirmations if required is None else required
        try:
            return await check_transaction(self._node, self.chain_id, attestation, digest, need)
        except (NetworkError, AuthError, ValidationError) as exc:
            raise CannotVerify(
                f"cannot check on the node: {exc}; pass --rpc-url {self.target}=URL of a node "
                "of that chain"
            ) from None

    async def close(self) -> None:
        await self._node.close()


async def _maybe_await(result: Any) -> None:
    """`note` may be the journal's plain Intent.note or an async function."""
    if inspect.isawaitable(result):
        await result
