"""`btc:<name>`: anchor a digest in the OP_RETURN output of a Bitcoin transaction the
scheduler builds and signs itself (core/anchors/btc/tx.py), sent over the node's JSON-RPC.

Each anchor spends one coin of the signer's script into `OP_RETURN <digest>` (output 0)
and the change (output 1); the next anchor spends that change: a chain the backend
tracks itself in its coin record (`<data_dir>/btc/<network>-<script hash>.json`, or the
store's signer record in cluster mode: {"coin": {txid, vout}, "ours": [facts of our latest
transactions], "outstanding": {digest hex: facts}}), so it works the same on bcoin and on Bitcoin Core
(no wallet on the node). The first coin is the target's `funding` outpoint.

Sending, under a per-signer lock (asyncio, and the store's lock across replicas):

1. the node's genesis block must be the one of the target's `network`;
2. the coin must exist (gettxout, mempool included); one that our own transaction spent is
   followed to its change, and a transaction of ours the node lost (a reorg on bcoin) is
   sent again first;
3. fee rate: `fee_rate`, else the node's estimatesmartfee (Core's `feerate`; bcoin gives
   -1), else `fallback_fee_rate`; above `max_fee_rate` is a ValidationError, nothing signed;
4. sign, `note({"tx_hash", "raw_tx", "spent", "sent_height"})` (durable in the intent
   journal), then sendrawtransaction. bcoin answers with the txid even for an invalid or
   double-spending transaction (and before its mempool checked it), so the mempool is asked
   (getmempoolentry, for up to `accept_wait` seconds): a transaction not there is kept as
   outstanding (the next attempt looks for it before signing anew) and the attempt fails
   with a NetworkError; one the node refuses outright is a ValidationError.

At most one anchor per signer is unmined at a time (in this process). The backend says
`one_at_a_time`, so the engine starts one group per target at a time: jobs due while its
transaction is unmined wait (not in flight, never dropped) and the pass after it is mined
folds them all into ONE next transaction (core/engine/anchoring.py). Another group that
reaches the backend meanwhile (another target with the same key, a recovery) still waits
here for the unmined one before it signs (`_one_unmined`), and across replicas (or after an
attempt that gave up waiting) the signer's latest transaction in the record, found still in
the mempool under the signer lock, is waited for (`receipt_timeout`) before signing: one
unmined anchor per key in the whole cluster. Each attempt
waits for its transaction to be mined (`receipt_timeout`: `mineTimeout`), scanning the blocks
after the height it was sent at (no txindex needed), and returns a `pending` Attestation:
{scheme, network, tx_hash, vout, block_hash, block_number, raw_tx, txoutproof}. A
transaction not mined in time stays outstanding: the next attempt for that digest waits
for it again instead of paying twice. Confirmations are the depth of the attested block,
None once getblockhash(block_number) is another block (a reorg: the tracker queues the job
again).

`wallet` is the signer's balance after our last send (the change's value) and how many
more anchors it pays at that transaction's fee (core/observe/wallets.py watches it).

After a crash `recover` never signs: it looks the journalled txid up (mempool, blocks
since it was sent), sends the same bytes again if the node does not know them, and gives
None when its coin was spent by another transaction.

Test hooks: `VMSH_TEST_CRASH_AFTER_SEND=1` exits with status 137 right after the send
(as for eip155), between the broadcast and the receipt; `VMSH_TEST_CRASH_BEFORE_SEND=1`
right after the journal note, before the broadcast. They do nothing unless set.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import os
import weakref
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from core.anchors.base import (
    Attestation,
    CannotVerify,
    JournalNote,
    SharedRecords,
    SignerFile,
    SignerRecord,
    VerificationFailed,
    Wallet,
)
from core.anchors.btc.proof import check_attestation, check_on_node
from core.anchors.btc.settings import BtcTarget
from core.anchors.btc.tx import DUST, KeyProblem, Outpoint, build_anchor, parse_key, signer_script
from core.anchors.evm.rpc import Node, RpcError
from core.anchors.keysource import read_key
from core.errors import AuthError, NetworkError, ValidationError

if TYPE_CHECKING:
    from embit.ec import PrivateKey

    from core.clock import Clock

__all__ = ["CRASH_BEFORE_SEND", "CRASH_HOOK", "GENESIS", "BtcBackend"]

CRASH_HOOK = "VMSH_TEST_CRASH_AFTER_SEND"
CRASH_BEFORE_SEND = "VMSH_TEST_CRASH_BEFORE_SEND"
GENESIS = {
    "main": "000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f",
    "mainnet": "000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f",
    "testnet": "000000000933ea01ad0ee984209779baaec3ced90fa3f408719526f8d77f4943",
    "signet": "00000008819873e925422c1ff0f99f7cc9bbb232af63a077a480a3633bee1ef6",
    "regtest": "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206",
}
SAT = 100_000_000
SENT_KEPT = 25  # our latest transactions in the coin record (a mempool chain is at most 25 long)


class _NotHeld(ValidationError):
    """The node answered a send but never showed the transaction in its mempool or chain."""


class _Unmined(Exception):
    """The signer's latest transaction (this replica's or another's) is still unmined."""

_signer_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Lock]] = (
    weakref.WeakKeyDictionary()
)
_unmined_gates: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Lock]] = (
    weakref.WeakKeyDictionary()
)


def _ours(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The facts of our latest transactions, oldest first."""
    ours = doc.get("ours")
    return list(ours) if isinstance(ours, list) else []


def _doc(store: SignerRecord) -> dict[str, Any]:
    doc = store.load()
    doc.setdefault("outstanding", {})
    return doc


class BtcBackend:
    """Backend for `btc:<name>` targets (implements core.anchors.base.Backend)."""

    one_at_a_time = True  # the engine folds jobs due meanwhile into the next call

    def __init__(
        self,
        target: str,
        settings: BtcTarget,
        clock: Clock,
        data_dir: Path | str,
        *,
        receipt_timeout: float = 120.0,
        poll_interval: float = 0.5,
        rpc_timeout: float = 30.0,
        accept_wait: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
        shared: SharedRecords | None = None,
    ) -> None:
        if not target.startswith("btc:"):
            raise ValidationError(f"{target!r} is not a btc:<name> target")
        self.target = target
        self.settings = settings
        self.clock = clock
        self.data_dir = Path(data_dir)
        self.receipt_timeout = receipt_timeout
        self.poll_interval = poll_interval
        self.accept_wait = accept_wait  # how long the mempool may take to show a sent transaction
        self.shared = shared
        self._key: PrivateKey | None = None
        self._script: bytes | None = None
        self._node = Node(
            target, settings.rpc_url, timeout=rpc_timeout, transport=transport, sender=lambda: "the signer"
        )
        self._checked_network = False
        self.wallet: Wallet | None = None  # the signer's coin after our last send

    def __repr__(self) -> str:
        return f"BtcBackend({self.target!r}, rpc={self._node.where!r})"

    # ----- key and records -------------------------------------------------------------------

    @property
    def key(self) -> PrivateKey:
        if self._key is None:
            text = read_key(self.target, self.settings)
            try:
                self._key = parse_key(text)
            except KeyProblem as exc:
                raise ValidationError(f"{self.target}: the configured signing key is {exc}") from None
            finally:
                del text
            self._script = signer_script(self._key, self.settings.script_type)[0]
        return self._key

    @property
    def script(self) -> bytes:
        """The signer's output script (raw)."""
        self.key  # noqa: B018 - loads the key and its script
        assert self._script is not None
        return self._script

    @property
    def _signer(self) -> str:
        return f"btc-{self.settings.network}-{hashlib.sha256(self.script).hexdigest()[:16]}"

    def _store(self) -> SignerRecord:
        if self.shared is not None:
            return self.shared.signer(self._signer)
        return SignerFile(self.data_dir / "btc" / f"{self._signer}.json", "coin record")

    @contextlib.asynccontextmanager
    async def _lock(self) -> AsyncIterator[None]:
        locks = _signer_locks.setdefault(asyncio.get_running_loop(), {})
        lock = locks.setdefault(self._signer, asyncio.Lock())
        async with lock:
            if self.shared is None:
                yield
            else:
                async with self.shared.signer_lock(self._signer):
                    yield

    @contextlib.asynccontextmanager
    async def _one_unmined(self) -> AsyncIterator[None]:
        """At most one unmined anchor per signer in this process: another group waits here,
        its jobs in flight (never dropped), and signs once the first is mined (a chain of
        unconfirmed transactions would hit the mempool's limits, and bcoin has no RBF)."""
        gates = _unmined_gates.setdefault(asyncio.get_running_loop(), {})
        async with gates.setdefault(self._signer, asyncio.Lock()):
            yield

    # ----- the node ---------------------------------------------------------------------------

    async def _check_network(self) -> None:
        if self._checked_network:
            return
        expected = GENESIS.get(self.settings.network)
        if expected is not None:
            genesis = await self._node.call("getblockhash", 0)
            if genesis != expected:
                raise ValidationError(
                    f"{self.target}: the node at {self._node.where} is not on {self.settings.network} "
                    f"(genesis {genesis}); refusing to anchor to the wrong chain"
                )
        self._checked_network = True

    async def _fee_rate(self) -> float:
        s = self.settings
        rate = s.fee_rate
        if rate is None:
            try:
                estimate = await self._node.rpc("estimatesmartfee", 2)
            except RpcError:
                estimate = None
            per_kvb = estimate.get("feerate") if isinstance(estimate, dict) else None
            rate = float(per_kvb) * SAT / 1000 if isinstance(per_kvb, int | float) and per_kvb > 0 else None
        rate = s.fallback_fee_rate if rate is None else rate
        if rate > s.max_fee_rate:
            raise ValidationError(
                f"{self.target}: the fee rate needed now ({rate:.1f} sat/vB) is above maxFeeRate "
                f"{s.max_fee_rate}; not sending"
            )
        return rate

    async def _coin(self, doc: dict[str, Any]) -> Outpoint:
        """The coin to spend next, present on the node. A coin one of our own transactions
        spent (a send whose acceptance we did not see, a crash before the record was saved)
        is followed to that transaction's change; a transaction of ours the node lost (a
        reorg on bcoin) is sent again first."""
        coin = doc.get("coin")
        if coin is None:
            if not self.settings.funding:
                raise ValidationError(
                    f"{self.target}: no coin to spend: set funding (txid:vout of an output "
                    f"paying {self.script.hex()})"
                )
            txid, _, vout = self.settings.funding.partition(":")
            coin = {"txid": txid.lower(), "vout": int(vout)}
        for _ in range(SENT_KEPT + 1):
            out = await self._node.call("gettxout", coin["txid"], coin["vout"], True)
            lost = [f for f in _ours(doc) if f.get("tx_hash") == coin["txid"]]
            if out is None and lost and not await self._in_mempool(coin["txid"]):
                await self._held_or_sent(lost[-1])  # the node lost our transaction: send it again
                out = await self._node.call("gettxout", coin["txid"], coin["vout"], True)
            if out is not None:
                break
            ours = [f for f in _ours(doc) if f.get("spent") == f"{coin['txid']}:{coin['vout']}"]
            if not ours or not await self._held_or_sent(ours[-1]):
                raise ValidationError(
                    f"{self.target}: the coin {coin['txid']}:{coin['vout']} is spent or unknown to the node"
                )
            coin = {"txid": ours[-1]["tx_hash"], "vout": 1}
        else:  # pragma: no cover - a chain longer than the record keeps
            raise ValidationError(f"{self.target}: cannot find an unspent coin of the signer's chain")
        if out.get("scriptPubKey", {}).get("hex") != self.script.hex():
            raise ValidationError(
                f"{self.target}: the coin {coin['txid']}:{coin['vout']} does not pay the signer's "
                f"script {self.script.hex()}"
            )
        doc["coin"] = coin
        return Outpoint(coin["txid"], int(coin["vout"]), round(float(out["value"]) * SAT))

    async def _held_or_sent(self, facts: dict[str, Any]) -> bool:
        """Our transaction is in the node's mempool or chain, or is once sent again."""
        if await self._held(facts["tx_hash"]):
            return True
        try:
            await self._broadcast(facts["raw_tx"], facts["tx_hash"])
        except ValidationError:
            return False
        return True

    async def _held(self, txid: str) -> bool:
        """In the mempool, or mined with its change unspent."""
        return await self._in_mempool(txid) or await self._node.call("gettxout", txid, 1, True) is not None

    async def _broadcast(self, raw_tx: str, txid: str) -> None:
        """Send, then make sure the node kept it: bcoin answers with the txid even for an
        invalid or double-spending transaction, and before its mempool checked it (so the
        mempool is asked for up to `accept_wait` seconds). _NotHeld when it never shows."""
        try:
            await self._node.rpc("sendrawtransaction", raw_tx)
        except RpcError as exc:
            text = exc.message.lower()
            if "already" not in text and "known" not in text:
                raise ValidationError(f"{self.target}: the node refused transaction {txid}: {exc.message}") from None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.accept_wait
        while True:
            if await self._held(txid):
                return
            if loop.time() >= deadline:
                break
            await asyncio.sleep(0.05)
        raise _NotHeld(
            f"{self.target}: the node answered sendrawtransaction for {txid} but does not hold it "
            f"after {self.accept_wait:.0f} s (invalid, or its coin is spent)"
        )

    async def _in_mempool(self, txid: str) -> bool:
        try:
            return await self._node.rpc("getmempoolentry", txid) is not None
        except RpcError:
            return False

    # ----- anchoring --------------------------------------------------------------------------

    async def anchor(self, digest: bytes, note: JournalNote, *, policy: str | None = None) -> Attestation:
        if len(digest) != 32:
            raise ValidationError(f"{self.target}: a digest is 32 bytes, got {len(digest)}")
        if policy is not None:
            raise ValidationError(
                f"{self.target}: a chain anchor has no policy (policyOID {policy} applies to "
                "rfc3161 and local targets only)"
            )
        key = self.key  # key problems surface before any network call
        await self._check_network()
        store = self._store()
        async with self._one_unmined():
            async with self._lock():
                earlier = _doc(store)["outstanding"].get(digest.hex())
            if earlier is None:
                earlier = await self._sign_when_mined(digest, note, key, store)
            else:
                await _maybe_await(note(dict(earlier)))
            attestation = await self._resume(earlier, wait=True)
            await self._forget(digest)
        if attestation is None:
            raise NetworkError(f"{self.target}: transaction {earlier['tx_hash']} was dropped before it was mined")
        return attestation

    async def _sign_when_mined(
        self, digest: bytes, note: JournalNote, key: PrivateKey, store: SignerRecord
    ) -> dict[str, Any]:
        """`_sign_and_send` once the signer's latest transaction is mined: at most one unmined
        anchor per key across replicas (another replica's, or one of ours whose attempt
        gave up waiting), so the next one spends a mined change."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.receipt_timeout
        while True:
            try:
                return await self._sign_and_send(digest, note, key, store)
            except _Unmined as busy:
                if loop.time() >= deadline:
                    raise NetworkError(
                        f"{self.target}: the signer's transaction {busy} is not mined within "
                        f"{self.receipt_timeout:.0f} s; not signing another on top of it"
                    ) from None
            await asyncio.sleep(self.poll_interval)

    async def _sign_and_send(
        self, digest: bytes, note: JournalNote, key: PrivateKey, store: SignerRecord
    ) -> dict[str, Any]:
        async with self._lock():
            doc = _doc(store)
            latest = _ours(doc)[-1:]
            if latest and await self._in_mempool(latest[0]["tx_hash"]):
                raise _Unmined(latest[0]["tx_hash"])  # checked under the lock every replica takes
            coin = await self._coin(doc)
            try:
                tx = build_anchor(key, self.settings.script_type, coin, digest, await self._fee_rate())
            except ValueError as exc:
                raise ValidationError(f"{self.target}: {exc}") from None
            facts: dict[str, Any] = {
                "tx_hash": tx.txid,
                "raw_tx": tx.raw.hex(),
                "spent": f"{coin.txid}:{coin.vout}",
                "sent_height": int(await self._node.call("getblockcount")),
            }
            await _maybe_await(note(facts))  # durable before the transaction exists elsewhere
            doc["ours"] = [*_ours(doc), facts][-SENT_KEPT:]
            store.save(doc)  # a coin this spends is followed to its change (_coin)
            if os.environ.get(CRASH_BEFORE_SEND) == "1":
                os._exit(137)  # test hook (module docstring)
            try:
                await self._broadcast(facts["raw_tx"], tx.txid)
            except _NotHeld as exc:
                # It may still land: the next attempt for this digest looks for it first.
                doc["outstanding"][digest.hex()] = facts
                store.save(doc)
                raise NetworkError(f"{exc}; the next attempt looks for it again") from None
            if os.environ.get(CRASH_HOOK) == "1":
                os._exit(137)  # test hook (module docstring)
            doc["coin"] = {"txid": tx.txid, "vout": 1}
            doc["outstanding"][digest.hex()] = facts
            store.save(doc)
            self.wallet = Wallet(
                tx.change.value, max(0, tx.change.value - DUST) // max(1, tx.fee), self.settings.low_balance_anchors
            )
        return facts

    async def _forget(self, digest: bytes) -> None:
        store = self._store()
        async with self._lock():
            doc = _doc(store)
            if doc["outstanding"].pop(digest.hex(), None) is not None:
                store.save(doc)

    async def _find_block(self, txid: str, since: int) -> tuple[int, str] | None:
        """(height, hash) of the block after `since` that holds `txid`, or None."""
        top = int(await self._node.call("getblockcount"))
        for height in range(max(since, 0) + 1, top + 1):
            block_hash = await self._node.call("getblockhash", height)
            block = await self._node.call("getblock", block_hash, True)
            if txid in block.get("tx", []):
                return height, str(block_hash)
        return None

    async def _resume(self, facts: dict[str, Any], *, wait: bool) -> Attestation | None:
        """The attestation of a signed transaction once mined; the same bytes sent again if the
        node does not know them; None when it can never be mined (its coin went elsewhere)."""
        txid = facts["tx_hash"]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.receipt_timeout
        while True:
            found = await self._find_block(txid, int(facts.get("sent_height", 0)))
            if found is not None:
                return await self._attestation(facts, *found)
            if not await self._in_mempool(txid):
                try:
                    await self._broadcast(facts["raw_tx"], txid)
                except ValidationError:
                    return None
            if not wait or loop.time() >= deadline:
                raise NetworkError(
                    f"{self.target}: transaction {txid} not mined within {self.receipt_timeout:.0f} s; "
                    "the next attempt waits for it again instead of sending another"
                )
            await asyncio.sleep(self.poll_interval)

    async def _attestation(self, facts: dict[str, Any], height: int, block_hash: str) -> Attestation:
        proof = await self._node.call("gettxoutproof", [facts["tx_hash"]], block_hash)
        top = int(await self._node.call("getblockcount"))
        data = {
            "scheme": "btc",
            "network": self.settings.network,
            "tx_hash": facts["tx_hash"],
            "vout": 0,
            "block_hash": block_hash,
            "block_number": height,
            "raw_tx": facts["raw_tx"],
            "txoutproof": proof,
        }
        return Attestation(data, status="pending", confirmations=max(0, top - height + 1))

    async def recover(self, digest: bytes, notes: dict[str, Any]) -> Attestation | None:
        """After a crash: never signs. The journalled transaction, looked up or sent again."""
        if not notes.get("tx_hash") or not notes.get("raw_tx"):
            return None
        await self._check_network()
        store = self._store()
        async with self._lock():  # a crash before the record was saved: remember the transaction
            doc = _doc(store)
            if all(f.get("tx_hash") != notes["tx_hash"] for f in _ours(doc)):
                facts = {k: notes[k] for k in ("tx_hash", "raw_tx", "spent", "sent_height") if k in notes}
                doc["ours"] = [*_ours(doc), facts][-SENT_KEPT:]
                store.save(doc)
        attestation = await self._resume(notes, wait=True)
        await self._forget(digest)
        return attestation

    # ----- confirmations and verification -----------------------------------------------------

    async def confirmations(self, attestation: dict[str, Any]) -> int | None:
        """Depth of the attested block; None when the node's block at that height is another
        (a reorg dropped it)."""
        height = int(attestation["block_number"])
        top = int(await self._node.call("getblockcount"))
        if height > top:
            return None
        if await self._node.call("getblockhash", height) != attestation["block_hash"]:
            return None
        return top - height + 1

    async def verify(
        self,
        attestation: dict[str, Any],
        digest: bytes,
        *,
        required: int | None = None,
        policy: str | None = None,
    ) -> None:
        """Offline: the transaction's OP_RETURN carries `digest`, its Merkle branch reaches the
        header's root, the header hashes to the attested block and meets its nBits. On the
        node: that block is on the best chain at its height, `required` deep."""
        if policy is not None:
            raise VerificationFailed(
                f"{self.target}: the receipt states policy {policy}, but a chain anchor has no policy"
            )
        check_attestation(attestation, digest)
        need = self.settings.confirmations if required is None else required
        try:
            await check_on_node(self._node, attestation, need)
        except (NetworkError, AuthError, ValidationError) as exc:
            raise CannotVerify(
                f"cannot check on the node: {exc}; pass --rpc-url {self.target}=URL of a node of that chain"
            ) from None

    async def close(self) -> None:
        await self._node.close()


async def _maybe_await(result: Any) -> None:
    if inspect.isawaitable(result):
        await result
