"""JSON-RPC to an EVM node, its failures as anchor error kinds (core/errors.py).

The RPC URL may carry an API key in its path: messages name only its host (`where`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx

from core.errors import AuthError, NetworkError, ValidationError

__all__ = ["Node", "RpcError", "qty", "rpc_host", "to_hex", "unhex"]


def to_hex(data: bytes) -> str:
    return "0x" + data.hex()


def unhex(text: str) -> bytes:
    return bytes.fromhex(text.removeprefix("0x"))


def qty(value: Any) -> int:
    """A JSON-RPC quantity ("0x1f" or a number) as an int."""
    return int(value, 16) if isinstance(value, str) else int(value)


def rpc_host(url: str) -> str:
    """Only the host:port of an RPC URL: its path or query may hold an API key."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        return f"{host}:{parts.port}" if parts.port else host
    except ValueError:
        return "?"


class RpcError(Exception):
    """A JSON-RPC error object from the node (code, message)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Node:
    """One target's node. `rpc` raises RpcError for the node's error objects; `call` turns
    them into anchor error kinds. `sender()` names the signing account in messages."""

    def __init__(
        self,
        target: str,
        url: str,
        *,
        timeout: float,
        transport: httpx.AsyncBaseTransport | None,
        sender: Callable[[], str],
    ) -> None:
        self.target = target
        self.url = url
        self.where = rpc_host(url)
        self._sender = sender
        self._client = httpx.AsyncClient(timeout=timeout, transport=transport)
        self._ids = 0

    async def rpc(self, method: str, *params: Any) -> Any:
        self._ids += 1
        body = {"jsonrpc": "2.0", "id": self._ids, "method": method, "params": list(params)}
        try:
            response = await self._client.post(self.url, json=body)
        except httpx.TimeoutException:
            raise NetworkError(f"{self.target}: node at {self.where} timed out ({method})") from None
        except httpx.TransportError as exc:
            raise NetworkError(
                f"{self.target}: node at {self.where} unreachable ({method}): {type(exc).__name__}"
            ) from None
        return self._result(response)

    def _result(self, response: httpx.Response) -> Any:
        if response.status_code in (401, 403):
            raise AuthError(f"{self.target}: node at {self.where} refused us: HTTP {response.status_code}")
        if response.status_code == 429 or response.status_code >= 500:
            raise NetworkError(f"{self.target}: node at {self.where} answered HTTP {response.status_code}")
        try:
            reply = response.json()
        except ValueError:
            raise NetworkError(
                f"{self.target}: node at {self.where} sent a non-JSON reply (HTTP {response.status_code})"
            ) from None
        if not isinstance(reply, dict):
            raise NetworkError(f"{self.target}: node at {self.where} sent a malformed JSON-RPC reply")
        error = reply.get("error")
        if error is not None:
            code = error.get("code", 0) if isinstance(error, dict) else 0
            message = str(error.get("message", error) if isinstance(error, dict) else error)
            raise RpcError(int(code) if isinstance(code, int) else 0, message[:300])
        return reply.get("result")

    async def call(self, method: str, *params: Any) -> Any:
        """`rpc` with node errors turned into anchor error kinds."""
        try:
            return await self.rpc(method, *params)
        except RpcError as exc:
            raise self.classify(method, exc) from None

    def classify(self, method: str, exc: RpcError) -> Exception:
        """A node's refusal: our transaction or call is wrong (validation), unless the node
        itself is in trouble (an internal error: network, retried with backoff)."""
        text = exc.message.lower()
        if "insufficient funds" in text:
            return ValidationError(f"{self.target}: insufficient funds in {self._sender()}: {exc.message}")
        if exc.code == -32603 and not any(w in text for w in ("revert", "nonce", "gas", "fee", "invalid")):
            return NetworkError(f"{self.target}: {method} failed on the node: {exc.message}")
        return ValidationError(f"{self.target}: {method} refused: {exc.message}")

    async def check_chain(self, chain_id: int) -> None:
        node = qty(await self.call("eth_chainId"))
        if node != chain_id:
            raise ValidationError(
                f"{self.target}: the node at {self.where} serves chain id {node}, not {chain_id}; "
                "refusing to anchor to the wrong chain"
            )

    async def close(self) -> None:
        await self._client.aclose()
