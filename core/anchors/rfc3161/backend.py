"""`rfc3161:<name>`: anchoring against a real RFC 3161 time-stamp authority over HTTP(S).

One anchor is one TimeStampReq POSTed as `application/timestamp-query`:

* the imprint of the 32-byte digest (`hash: sha256`, the default, time-stamps the digest
  itself; `sha512` time-stamps SHA-512 of the 32 bytes, see core/anchors/tsp.py),
* a fresh random nonce (`secrets`), certReq set, the target's `policy_oid` when configured.

The reply is kept only when every check passes (core/anchors/tsp.py `verify_response`):
status granted; imprint; nonce; policy when configured; signature and ESS signing
certificate; the signer chains to the target's `trust_bundle` and carries a critical
timeStamping EKU; gen_time within `max_clock_skew` of our clock. A failed check is a
ValidationError whose message names the check and what was expected.

Error kinds (they decide the backoff multiplier):

    connection refused, DNS failure, timeout, other transport errors, HTTP 5xx -> NetworkError
    HTTP 401 / 403, a credential that cannot be read                           -> AuthError
    other HTTP status, a body that is not a TimeStampResp, a rejection,
    any failed check, a TLS certificate the CA bundle does not trust,
    a target without trust_bundle                                                -> ValidationError

Credentials (basic: username + password_env/password_file; bearer: token_env/token_file)
are read at every call, so a rotated secret is picked up without a reload. They are sent
in the Authorization header only: never logged, never in a receipt or an error message.
A user:password in the URL is sent as basic auth when no `auth` is configured (a
configured `auth` wins). Messages and logs show the URL as scheme://host[:port]
only, since a path or query often holds an API key, and are scrubbed of every secret and
of the URL's path, query and userinfo. Redirects are not followed, so a credential never
leaves for another host.

The trust bundle (PEM, read at every call and at verify) holds the anchors: self-signed
and CA certificates are trust roots (CA certificates that are not self-signed are also
offered as intermediates); end-entity certificates are the TSA's own, used to check tokens
that embed no certificate. `verify()` re-checks a receipt's attestation offline from the
attestation and the trust bundle alone.
"""

from __future__ import annotations

import asyncio
import base64
import os
import ssl
from collections.abc import Mapping
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit, urlunsplit

import httpx

from core.anchors.base import Attestation, JournalNote
from core.anchors.rfc3161.settings import Rfc3161Target
from core.anchors.tokens import load_trust_bundle, verify_token
from core.anchors.tsp import (
    build_request,
    new_nonce,
    token_attestation,
    verify_response,
)
from core.errors import AuthError, NetworkError, ValidationError
from core.text import redact_urls, url_origin

if TYPE_CHECKING:
    from core.clock import Clock

__all__ = ["MAX_REPLY_BYTES", "RFC3161Backend"]

QUERY_TYPE = "application/timestamp-query"
REPLY_TYPE = "application/timestamp-reply"
MAX_REPLY_BYTES = 1024 * 1024  # a TimeStampResp with a full chain is a few KiB
USER_AGENT = "vmsh-scheduler (RFC 3161 client)"


def _settings_model(settings: object) -> Rfc3161Target:
    if isinstance(settings, Rfc3161Target):
        return settings
    if isinstance(settings, Mapping):
        return Rfc3161Target.model_validate(dict(settings))
    raise ValidationError(f"rfc3161 targets need rfc3161 settings, got {type(settings).__name__}")


def _without_userinfo(url: str) -> str:
    """The URL as requested: its user:password goes into our own Authorization header, so
    httpx never builds one from it behind our back."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, parts.query, ""))


def _url_parts_to_scrub(url: str) -> list[str]:
    """The pieces of a URL that may carry secrets: userinfo, path segments, query."""
    parts = urlsplit(url)
    pieces = [parts.password or "", parts.query, parts.fragment]
    if parts.path not in ("", "/"):
        pieces.append(parts.path)
        pieces += [seg for seg in parts.path.split("/") if len(seg) >= 8]  # key-sized pieces
    return sorted({p for p in pieces if p}, key=len, reverse=True)  # longest first


@lru_cache(maxsize=16)
def _tls_context(cafile: str, mtime_ns: int) -> ssl.SSLContext:
    """One TLS context per CA bundle file and version, shared by every backend: loading a
    bundle costs ~30 ms of blocking CPU, too much to pay on every call."""
    del mtime_ns  # part of the cache key only: an edited bundle is loaded again
    return ssl.create_default_context(cafile=cafile)


class RFC3161Backend:
    """A real time-stamp authority behind `rfc3161:<name>` (implements core.anchors.base.Backend)."""

    def __init__(self, target: str, settings: Rfc3161Target | Mapping[str, Any], clock: Clock) -> None:
        self.target = target
        self.settings = _settings_model(settings)
        self._clock = clock
        self._url = self.settings.url
        self.url = url_origin(self._url)  # all that messages and logs ever show
        scheme = self.url.partition("://")[0] if "://" in self.url else ""
        if scheme not in ("http", "https"):
            raise ValidationError(f"{target}: url must be http:// or https://, got {self.url!r}")
        self._request_url = _without_userinfo(self._url)
        self._ssl: ssl.SSLContext | None = None

    # --- Backend ---------------------------------------------------------------------------

    async def anchor(
        self, digest: bytes, note: JournalNote, *, policy: str | None = None
    ) -> Attestation:
        if len(digest) != 32:
            raise ValidationError(
                f"{self.target}: anchors 32-byte digests, got {len(digest)} bytes"
            )
        s = self.settings
        bundle = load_trust_bundle(s.trust_bundle, self.target)  # before anything is sent
        nonce = new_nonce()
        policy = policy or s.policy_oid  # the cadence's policyOID, else the target's
        request = build_request(
            digest, hash_name=s.hash, nonce=nonce, policy_oid=policy, cert_req=True
        )
        reply, content_type = await self._post(request)
        try:
            info = verify_response(
                reply,
                digest=digest,
                nonce=nonce,
                policy_oid=policy,
                trust_roots=bundle.roots,
                now=self._clock.now(),
                max_clock_skew=s.max_clock_skew,
                hash_name=s.hash,
                signer_certs=bundle.signers,
                intermediates=bundle.intermediates,
            )
        except ValidationError as exc:
            message = f"{self.target} ({self.url}): {exc}"
            if "parse check failed" in message and content_type:
                message += f" (the HTTP reply was {content_type})"
            raise ValidationError(message) from None
        return Attestation(data=token_attestation(info, nonce), status="confirmed", confirmations=0)

    async def recover(self, digest: bytes, notes: dict[str, Any]) -> Attestation | None:
        # A TSA keeps nothing we could look up: an interrupted call simply never landed.
        return None

    async def verify(
        self,
        attestation: dict[str, Any],
        digest: bytes,
        *,
        required: int | None = None,
        policy: str | None = None,
    ) -> datetime | None:
        return verify_token(
            attestation, digest, target=self.target, policy=policy,
            bundle=lambda: load_trust_bundle(self.settings.trust_bundle, self.target),
        )

    async def close(self) -> None:
        return None  # one HTTP client per call: nothing stays open

    # --- HTTP ------------------------------------------------------------------------------

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            cafile: Path | str | None = self.settings.ca_bundle
            if cafile is None:
                import certifi  # httpx's own default bundle

                cafile = certifi.where()
            try:
                self._ssl = _tls_context(str(cafile), os.stat(cafile).st_mtime_ns)
            except (OSError, ssl.SSLError) as exc:
                raise ValidationError(
                    f"{self.target}: cannot load ca_bundle {cafile}: {exc}"
                ) from None
        return self._ssl

    def _secret_file(self, path: Path, what: str) -> str:
        try:
            value = Path(path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            raise AuthError(
                f"{self.target}: cannot read the {what} file {path}: {reason}"
            ) from None
        if not value:
            raise AuthError(f"{self.target}: the {what} file {path} is empty")
        return value

    def _secret_env(self, name: str, what: str) -> str:
        value = os.environ.get(name, "").strip()
        if not value:
            raise AuthError(f"{self.target}: the {what} environment variable {name} is not set")
        return value

    def _credentials(self) -> tuple[dict[str, str], list[str], str]:
        """The Authorization header (read now from env or file), the secrets to scrub, and
        what was sent, in words, for a 401/403 message."""
        auth = self.settings.auth
        secrets_ = _url_parts_to_scrub(self._url)
        parts = urlsplit(self._url)
        if auth is None:
            if parts.username is None and parts.password is None:
                return {}, secrets_, "no credentials sent (no auth configured, no user:password in the url)"
            userinfo = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
            userpass = base64.b64encode(userinfo.encode()).decode("ascii")
            secrets_.append(userpass)
            return {"Authorization": f"Basic {userpass}"}, secrets_, "sent basic auth from the url's user:password"
        ignored = "" if parts.username is None else "; the url's user:password is not used"
        if auth.type == "basic":
            if not auth.username:
                raise AuthError(f"{self.target}: basic auth needs a username")
            if auth.password_env:
                password = self._secret_env(auth.password_env, "password")
            elif auth.password_file:
                password = self._secret_file(auth.password_file, "password")
            else:
                raise AuthError(f"{self.target}: basic auth needs password_env or password_file")
            secrets_.append(password)
            if ":" in auth.username:
                raise AuthError(f"{self.target}: a basic-auth username cannot contain ':'")
            userpass = base64.b64encode(f"{auth.username}:{password}".encode()).decode("ascii")
            secrets_.append(userpass)
            source = f"env {auth.password_env}" if auth.password_env else f"file {auth.password_file}"
            sent = f"sent basic auth (auth.type basic, password from {source}){ignored}"
            return {"Authorization": f"Basic {userpass}"}, secrets_, sent
        if auth.token_env:
            token = self._secret_env(auth.token_env, "token")
        elif auth.token_file:
            token = self._secret_file(auth.token_file, "token")
        else:
            raise AuthError(f"{self.target}: bearer auth needs token_env or token_file")
        secrets_.append(token)
        source = f"env {auth.token_env}" if auth.token_env else f"file {auth.token_file}"
        sent = f"sent a bearer token (auth.type bearer, token from {source}){ignored}"
        return {"Authorization": f"Bearer {token}"}, secrets_, sent

    async def _post(self, request: bytes) -> tuple[bytes, str]:
        """POST the query; the reply body and its content type, or a typed AnchorError."""
        headers, secrets_, sent = self._credentials()
        headers.update({"Content-Type": QUERY_TYPE, "Accept": REPLY_TYPE, "User-Agent": USER_AGENT})
        timeout = self.settings.timeout
        where = f"{self.target} ({self.url})"
        try:
            async with asyncio.timeout(timeout):  # the whole exchange, not each read
                async with httpx.AsyncClient(
                    timeout=httpx.Timeout(timeout),
                    verify=self._ssl_context(),
                    follow_redirects=False,
                    trust_env=False,
                ) as client:
                    async with client.stream(
                        "POST", self._request_url, content=request, headers=headers
                    ) as response:
                        body, content_type = await self._read_reply(response, where, sent)
        except (AuthError, NetworkError, ValidationError):
            raise
        except TimeoutError:
            raise NetworkError(f"{where}: timed out after {timeout:g}s") from None
        except (httpx.TransportError, httpx.InvalidURL, ssl.SSLError) as exc:
            raise self._transport_error(exc, where, secrets_) from None
        if not body:
            raise ValidationError(f"{where}: empty reply body; expected a TimeStampResp")
        return body, content_type.split(";")[0].strip()

    async def _read_reply(self, response: httpx.Response, where: str, sent: str) -> tuple[bytes, str]:
        """The body of a 200 reply (at most MAX_REPLY_BYTES) and its content type; the
        status as an anchor error kind otherwise."""
        status = response.status_code
        if status in (401, 403):
            raise AuthError(
                f"{self.target}: HTTP {status} {response.reason_phrase} "
                f"from {self.url}: {sent}"
            )
        if status >= 500:
            raise NetworkError(f"{where}: HTTP {status} {response.reason_phrase}")
        if status != 200:
            raise ValidationError(
                f"{where}: HTTP {status} {response.reason_phrase}; expected 200 "
                "with an application/timestamp-reply body"
            )
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > MAX_REPLY_BYTES:
                raise ValidationError(
                    f"{where}: the reply exceeds {MAX_REPLY_BYTES} bytes; "
                    "expected a TimeStampResp"
                )
        return bytes(body), response.headers.get("content-type", "")

    def _transport_error(self, exc: Exception, where: str, secrets_: list[str]) -> Exception:
        """A failed exchange as an anchor error kind, scrubbed of every secret."""

        def scrub(text: str) -> str:
            text = redact_urls(text)
            for secret in secrets_:
                if secret:
                    text = text.replace(secret, "***")
            return text

        timeout = self.settings.timeout
        if isinstance(exc, httpx.TimeoutException):
            return NetworkError(f"{where}: timed out after {timeout:g}s ({type(exc).__name__})")
        if isinstance(exc, httpx.ConnectError):
            text = scrub(str(exc)) or type(exc).__name__
            if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
                return ValidationError(
                    f"{where}: TLS certificate check failed: {text}; expected a server "
                    "certificate trusted by "
                    + (
                        f"ca_bundle {self.settings.ca_bundle}"
                        if self.settings.ca_bundle
                        else "the system CA bundle"
                    )
                )
            return NetworkError(f"{where}: cannot connect: {text}")
        if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
            return ValidationError(f"{where}: bad url: {scrub(str(exc))}")
        if isinstance(exc, httpx.TransportError):
            text = scrub(str(exc)) or type(exc).__name__
            return NetworkError(f"{where}: {type(exc).__name__}: {text}")
        return ValidationError(f"{where}: TLS error: {scrub(str(exc))}")
