"""The receipts of one anchor, built from what they share (core.receipts.AnchorReceipts, as
the engine's commit builds them), and the job's state a success leaves: the same bytes and
values as before that sharing."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from types import MappingProxyType
from typing import Any

import pytest

from core import merkle
from core.engine.commit import commit_chunks
from core.engine.record import succeeded
from core.fsutil import dumps_json
from core.jobs import JobState, safe_name, unsafe_name
from core.receipts import AnchorReceipts, Attested, BatchRef, Confirmations, Receipt, build_receipt

AT = 1767225600.1239
NAMES = ["dao:ns0", "dao:é/ü", 'q"uote\\x', "\u2028line", "tab\there"]
# sha256 and length of the 15 receipt files below, as written before AnchorReceipts (the
# build_receipt of commit fda00f5, one call a receipt)
BEFORE = ("e84ca4799c2dcb7ef5ab4335121500b4e08db8ee024dd5c603af29382caf194d", 15237)
ANCHORS: list[tuple[str, int, str | None, dict[str, Any]]] = [
    ("confirmed", 0, None, {"token": "AAAA", "n": 7, "x": None, "u": "é\u2028"}),
    ("pending", 2, "1.2.3.4", {"tx_hash": "0xab", "block_number": 7, "ok": True, "nested": {"a": [1, "b"]}}),
    ("confirmed", 1, None, {}),  # a redundant anchor's (version 3)
]
REDUNDANT = {
    "receipt_version": 3, "least": 2, "target": "2 of local:a,local:b", "attestations": (
        Attested("local:a", {"token": "A"}, "confirmed", Confirmations(0, 0)),
        Attested("local:b", {"token": "B", "n": 1}, "pending", Confirmations(2, 1)),
    ),
}


def test_the_receipts_of_one_anchor_are_written_byte_for_byte_as_before() -> None:
    roots = [hashlib.sha256(f"batch-{i}".encode()).digest() for i in range(5)]
    leaves = [hashlib.sha256(b"leaf" + r).digest() for r in roots]
    digest = merkle.tree_hash(leaves)
    proofs = [merkle.audit_path(i, leaves) for i in range(5)]
    files = []
    built = []
    for status, observed, policy, given in ANCHORS:
        token = dict(given)
        shared = REDUNDANT if not token else {"target": "local:dev"}
        make = AnchorReceipts(
            anchored_root=digest, tree_size=5, attestation=token, status=status,
            confirmations_observed=observed, anchored_at=AT, version="0.1.0", config_hash="cafe", policy=policy,
            **shared,
        )
        for i in range(5):
            # digests and texts (upper case too) mixed, as journals and trees hand them over
            proof = ["sha256:" + p.hex().upper() if i % 2 else p for p in proofs[i]]
            job = dict(
                namespace=NAMES[i], cadence="fast" if i else "slow", batch_id=f"{i:06d}",
                batch_root=roots[i] if i % 2 else "sha256:" + roots[i].hex(), proof=proof, leaf_index=i,
                confirmations_required=i % 3,
            )
            receipt = make.receipt(**job)  # type: ignore[arg-type]
            alone = build_receipt(
                **job, **shared, anchored_root=digest, tree_size=5, attestation=token, status=status,
                confirmations_observed=observed, anchored_at=AT, version="0.1.0", config_hash="cafe", policy=policy,
            )
            assert receipt == alone
            built.append(receipt)
            files.append(dumps_json(receipt.to_json()))
        token["later"] = "a change to the caller's dict"  # the receipts keep their copy
    data = b"".join(files)
    assert (hashlib.sha256(data).hexdigest(), len(data)) == BEFORE
    assert b"later" not in data
    # one copy of the token for all the receipts of an anchor, read-only
    assert built[0].attestation is built[4].attestation
    with pytest.raises(TypeError):
        built[0].attestation["token"] = "BBBB"  # type: ignore[index]


def test_a_success_sets_what_it_is_about_and_keeps_every_other_field_of_the_state() -> None:
    # every field given a value of its own, so a field added to JobState later and not
    # carried over by `succeeded` fails here
    values: dict[str, Any] = {}
    for n, f in enumerate(dataclasses.fields(JobState)):
        values[f.name] = object() if f.name == "row" else f"value {n}"
    before = JobState(**values)
    after = succeeded(before, "sha256:" + "ab" * 32, None, 123.0)
    about = {
        "last_anchored_at": 123.0, "last_root": "sha256:" + "ab" * 32, "failures": 0, "backoff_level": 0,
        "next_attempt": None, "last_error_kind": None, "last_error": None, "last_receipt": None,
        "last_attempt_at": 123.0, "current_at": 123.0,
    }
    for f in dataclasses.fields(JobState):
        expected = about[f.name] if f.name in about else values[f.name]
        assert getattr(after, f.name) is expected or getattr(after, f.name) == expected, f.name
    assert after.row is before.row


def _text(rng: random.Random) -> str:
    """A string of what JSON escapes and what it leaves: quotes, backslashes, control
    characters, U+2028, DEL, accents, a non-BMP character."""
    return "".join(rng.choice(['"', "\\", "\n", "\t", "\x00", "\x1f", "\x7f", "\u2028", "é", "𝄞", "a", "/", " "])
                   for _ in range(rng.randrange(1, 12)))


def _free(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(8 if depth < 2 else 5)
    if kind == 5:
        return {_text(rng): _free(rng, depth + 1) for _ in range(rng.randrange(3))}
    if kind == 6:
        return [_free(rng, depth + 1) for _ in range(rng.randrange(3))]
    return [None, True, rng.randrange(-10**20, 10**20), _text(rng), rng.random() * 10**rng.randrange(-5, 25), 0, 0,
            {}][kind]


def test_a_receipts_bytes_are_its_documents_json_whatever_it_holds() -> None:
    # what the store wrote (dumps_json of to_json), byte for byte: every field's text, a
    # token with floats (encoded by json, not pydantic_core), version 3's attestations,
    # receipts read back from a file, a one-leaf group's empty proof
    rng = random.Random(24)
    for n in range(300):
        version = rng.choice([1, 2, 3])
        token = {"token": _text(rng), **{_text(rng): _free(rng) for _ in range(rng.randrange(4))}}
        shared: dict[str, Any] = {"target": _text(rng), **({"receipt_version": 1} if version == 1 else {})}
        if version == 3:
            shared = {"target": "2 of local:a,local:b", "receipt_version": 3, "least": 2, "attestations": (
                Attested("local:a", MappingProxyType(token), "confirmed", Confirmations(0, 0)),
                Attested("local:b", {"n": _free(rng)}, "pending", Confirmations(2, rng.randrange(9))),
            )}
        make = AnchorReceipts(
            anchored_root=bytes(rng.randrange(256) for _ in range(32)), tree_size=5,
            attestation={} if version == 3 else token, status=rng.choice(["pending", "confirmed"]),
            confirmations_observed=rng.randrange(99), anchored_at=rng.random() * 2e9, version=_text(rng),
            config_hash=_text(rng), policy=rng.choice([None, "1.2.3", _text(rng)]),
            **shared,
        )
        for _ in range(3):
            receipt = make.receipt(
                namespace=_text(rng), cadence=_text(rng), batch_id=rng.choice(["", _text(rng)]),
                batch_root=bytes(32), proof=[bytes([i]) * 32 for i in range(rng.randrange(4))],
                leaf_index=rng.randrange(5), confirmations_required=rng.randrange(-1, 9),
            )
            expected = dumps_json(receipt.to_json())
            assert receipt.to_bytes() == expected, n
            assert Receipt.from_json(json.loads(expected)).to_bytes() == expected, n
            odd = dataclasses.replace(receipt, proof=("sha256:" + "0" * 64, _text(rng)))  # not a root's text
            assert odd.to_bytes() == dumps_json(odd.to_json()), n
    # made by hand with fields not of their types: still what dumps_json writes of it
    for changes in ({"leaf_index": True}, {"batch": BatchRef(7, "sha256:" + "0" * 64)}, {"namespace": None}):  # type: ignore[arg-type]
        odd = dataclasses.replace(receipt, **changes)
        assert odd.to_bytes() == dumps_json(odd.to_json())



def test_a_namespace_folder_name_is_each_unsafe_byte_escaped_and_reads_back() -> None:
    # a receipt's folder: receipts/<safe_name(namespace)>/, the name older data dirs have
    cases = {
        "dao:vaultmesh": "dao%3Avaultmesh", ".hidden": "%2Ehidden", "a~b c/d%": "a%7Eb%20c%2Fd%25",
        "é": "%C3%A9", "x.y-z_0": "x.y-z_0", "\x00\x7f": "%00%7F", "a:é.": "a%3A%C3%A9.", "": "",
    }
    assert {name: safe_name(name) for name in cases} == cases
    rng = random.Random(7)
    alphabet = [chr(n) for n in range(128)] + ["é", "𝄞", "\u2028"]
    for _ in range(3000):
        name = "".join(rng.choice(alphabet) for _ in range(rng.randrange(12)))
        safe = safe_name(name)
        assert unsafe_name(safe) == name
        assert set(safe) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-%")
        assert not safe.startswith(".")


def test_a_big_pass_is_committed_in_chunks_that_start_and_end_small() -> None:
    """The writer's first chunk is a small one (the first receipts, and the pipeline of
    writes and applies, sooner) and so is the last (what the loop applies after the last
    write); every job once, in order; small chunk sizes (tests) cut evenly."""

    jobs = list(range(10_000))
    chunks = commit_chunks(jobs, 1024)
    assert [len(c) for c in chunks[:4]] == [128, 256, 512, 1024]
    assert len(chunks[-1]) == 128 and max(len(c) for c in chunks) == 1024
    assert [j for c in chunks for j in c] == jobs
    assert [len(c) for c in commit_chunks(jobs[:7], 2)] == [2, 2, 2, 1]
    assert commit_chunks(jobs[:1000], 1024) == [jobs[:1000]]
