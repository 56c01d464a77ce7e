"""Time-stamp authorities served over real HTTP on 127.0.0.1, for the RFC 3161 tests.

* `OpenSSLTSA`: a small threaded `http.server` that pipes each query to
  `openssl ts -reply` (config with a `certs =` chain line, so the reply's certificate SET is
  not DER-sorted). Its paths choose a behaviour, good or bad:

      /tsa           the plain TSA
      /certless      the query's certReq is cleared: the token embeds no certificate
      /untrusted     signed by a TSA under a CA nobody trusts
      /other-digest  the imprint is replaced before signing (a valid reply for another digest)
      /other-nonce   the nonce is replaced before signing
      /other-policy  the requested policy is ignored: the token is under another policy
                     the TSA serves (its config lists several: `default_policy`,
                     `other_policies`)
      /replay        the first reply for an imprint is served again for every later query
      /slow          answers after `slow_seconds` (released at stop)
      /500 /401 /403 /404 /garbage   what their names say
      /auth          401 unless the Authorization header is one of `expected_auth`

* `CertomancerTSA`: certomancer's Animator WSGI app (its TSA service) under Werkzeug's
  threaded server, with a PKI config written to a temporary folder.

Both start on a free port in a daemon thread and stop with `stop()`.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests import pki

Reply = tuple[int, str, bytes]


def free_port() -> int:
    """A port nothing listens on (bound, then closed): connecting to it is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Handler(BaseHTTPRequestHandler):
    server_version = "test-tsa/1"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet test output
        pass

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        app: Callable[[str, bytes, Any], Reply] = self.server.app  # type: ignore[attr-defined]
        try:
            status, ctype, data = app(self.path, body, self.headers)
        except Exception as exc:  # a broken test server answers 500 and says why
            status, ctype, data = 500, "text/plain", f"test server error: {exc}".encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        if status == 401:
            self.send_header("WWW-Authenticate", 'Bearer realm="tsa"')
        self.end_headers()
        try:
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that hang up (timeouts, keep-alive closes) are expected here


class ThreadedHTTP:
    """An http.server on 127.0.0.1:<free port> in a daemon thread, optionally over TLS."""

    def __init__(self, app: Callable[[str, bytes, Any], Reply], tls: ssl.SSLContext | None = None):
        self.httpd = _Server(("127.0.0.1", 0), _Handler)
        self.httpd.app = app  # type: ignore[attr-defined]
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.scheme = "https" if tls is not None else "http"
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def url(self, path: str) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)


class OpenSSLTSA:
    """An OpenSSL TSA (`openssl ts -reply`) behind a threaded HTTP server; see the module doc."""

    def __init__(
        self,
        workdir: Path,
        *,
        slow_seconds: float = 5.0,
        expected_auth: frozenset[str] = frozenset(),
        tls_cert: pki.Issued | None = None,
        tls_chain: bytes = b"",
        chain: tuple[pki.Deviation, pki.Deviation | None] | None = None,
    ) -> None:
        """`chain`: (root, intermediate or None) deviations of a CA as real TSAs ship it
        (tests/pki.py `Deviation`), instead of the textbook root and intermediate."""
        self.workdir = Path(workdir)
        if chain is None:
            self.pki = pki.build_tsa_pki(self.workdir / "pki", "OpenSSL")
        else:
            root, inter = chain
            self.pki = pki.build_deviant_pki(self.workdir / "pki", "Deviant", root=root, intermediate=inter)
        self.untrusted_pki = pki.build_tsa_pki(self.workdir / "untrusted", "Untrusted")
        self.config = pki.write_openssl_ts_config(self.workdir / "pki" / "ts.cnf", self.pki)
        self.untrusted_config = pki.write_openssl_ts_config(
            self.workdir / "untrusted" / "ts.cnf", self.untrusted_pki
        )
        self.slow_seconds = slow_seconds
        self.expected_auth = expected_auth
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self._replayed: dict[bytes, bytes] = {}
        self._lock = threading.Lock()  # openssl rewrites its serial file: one at a time
        self._stopping = threading.Event()
        tls = None
        if tls_cert is not None:
            cert_file = self.workdir / "tls-server.pem"
            key_file = self.workdir / "tls-server.key"
            cert_file.write_bytes(tls_cert.pem + tls_chain)
            key_file.write_bytes(tls_cert.key_pem)
            tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            tls.load_cert_chain(cert_file, key_file)
        self.http = ThreadedHTTP(self.handle, tls)

    def url(self, path: str = "/tsa") -> str:
        return self.http.url(path)

    def reply(self, query: bytes, *, untrusted: bool = False) -> bytes:
        which = self.untrusted_pki if untrusted else self.pki
        config = self.untrusted_config if untrusted else self.config
        with self._lock:
            return pki.openssl_ts_reply(query, config, which, self.workdir / "tmp")

    def handle(self, path: str, body: bytes, headers: Any) -> Reply:
        self.requests.append((path, dict(headers.items()), body))
        ok = "application/timestamp-reply"
        if path == "/tsa":
            return 200, ok, self.reply(body)
        if path == "/certless":
            return 200, ok, self.reply(pki.rewrite_query(body, cert_req=False))
        if path == "/untrusted":
            return 200, ok, self.reply(body, untrusted=True)
        if path == "/other-digest":
            other = hashlib.sha256(b"somebody else's digest").digest()
            fields = pki.query_fields(body)
            if fields["hash"] != "sha256":
                other = hashlib.new(fields["hash"], other).digest()
            return 200, ok, self.reply(pki.rewrite_query(body, hashed_message=other))
        if path == "/other-policy":
            asked = pki.query_fields(body)["policy"]
            policy = next(p for p in (pki.DEFAULT_POLICY, *pki.OTHER_POLICIES) if p != asked)
            return 200, ok, self.reply(pki.rewrite_query(body, req_policy=policy))
        if path == "/other-nonce":
            nonce = pki.query_fields(body)["nonce"]
            return 200, ok, self.reply(pki.rewrite_query(body, nonce=nonce + 1))
        if path == "/replay":
            imprint = pki.query_fields(body)["imprint"]
            if imprint not in self._replayed:
                self._replayed[imprint] = self.reply(body)
            return 200, ok, self._replayed[imprint]
        if path == "/slow":
            self._stopping.wait(self.slow_seconds)
            return 200, ok, self.reply(body)
        if path == "/auth":
            if headers.get("Authorization") not in self.expected_auth:
                return 401, "text/plain", b"unauthorized"
            return 200, ok, self.reply(body)
        if path == "/garbage":
            return 200, "text/html", b"<html><body>TSA maintenance</body></html>"
        if path in ("/500", "/401", "/403"):
            code = int(path[1:])
            return code, "text/plain", f"HTTP {code} from the test TSA".encode()
        return 404, "text/plain", b"no such TSA path"

    def requested_policies(self, since: int = 0) -> list[str | None]:
        """The reqPolicy of each query received (from the `since`-th on), as the TSA read it:
        parsed from the DER body with asn1crypto, None when the query names no policy."""
        from asn1crypto import tsp as asn1tsp

        out: list[str | None] = []
        for _path, _headers, body in self.requests[since:]:
            policy = asn1tsp.TimeStampReq.load(body)["req_policy"]
            out.append(policy.dotted if policy.native is not None else None)
        return out

    def stop(self) -> None:
        self._stopping.set()
        self.http.stop()


# --- certomancer ---------------------------------------------------------------------------------

CERTOMANCER_ARCH = "vmsh"
CERTOMANCER_TSA = "tsa"

_CERTOMANCER_CONFIG = """\
keysets:
  vmsh:
    path-prefix: {keys}
    keys:
      root:
        path: root.key.pem
      tsa:
        path: tsa.key.pem
pki-architectures:
  vmsh:
    keyset: vmsh
    entity-defaults:
      country-name: BE
      organization-name: Certomancer test PKI
    entities:
      root:
        common-name: Certomancer Root CA
      tsa:
        common-name: Certomancer TSA
    certs:
      root:
        subject: root
        issuer: root
        validity:
          valid-from: "2000-01-01T00:00:00+0000"
          valid-to: "2100-01-01T00:00:00+0000"
        extensions:
          - id: basic_constraints
            critical: true
            value:
              ca: true
          - id: key_usage
            critical: true
            smart-value:
              schema: key-usage
              params: [digital_signature, key_cert_sign, crl_sign]
      tsa:
        issuer: root
        validity:
          valid-from: "2000-01-01T00:00:00+0000"
          valid-to: "2100-01-01T00:00:00+0000"
        extensions:
          - id: key_usage
            critical: true
            smart-value:
              schema: key-usage
              params: [digital_signature]
          - id: extended_key_usage
            critical: true
            value: [time_stamping]
    services:
      time-stamping:
        tsa:
          signing-key: tsa
          signing-cert: tsa
"""


class CertomancerTSA:
    """certomancer's TSA service: its Animator WSGI app on Werkzeug, on 127.0.0.1:<free port>."""

    def __init__(self, workdir: Path) -> None:
        from certomancer.integrations.animator import Animator, AnimatorArchStore
        from certomancer.registry import ArchLabel, CertLabel, CertomancerConfig
        from werkzeug.serving import WSGIRequestHandler, make_server

        class QuietHandler(WSGIRequestHandler):
            def log_request(self, *args: Any, **kwargs: Any) -> None:
                pass

        self.workdir = Path(workdir)
        keys = self.workdir / "keys"
        keys.mkdir(parents=True, exist_ok=True)
        for label in ("root", "tsa"):
            (keys / f"{label}.key.pem").write_bytes(pki.key_pem(pki.new_key("ec")))
        config_file = self.workdir / "certomancer.yml"
        config_file.write_text(_CERTOMANCER_CONFIG.format(keys=keys))
        cfg = CertomancerConfig.from_file(str(config_file), key_search_dir=str(self.workdir))
        arch = cfg.get_pki_arch(ArchLabel(CERTOMANCER_ARCH))
        self.root_pem = _pem(arch.get_cert(CertLabel("root")).dump())
        self.tsa_der = arch.get_cert(CertLabel("tsa")).dump()
        self.bundle = self.workdir / "certomancer-root.pem"
        self.bundle.write_bytes(self.root_pem)
        app = Animator(AnimatorArchStore(cfg.pki_archs), with_web_ui=False)
        self.httpd = make_server("127.0.0.1", 0, app, threaded=True, request_handler=QuietHandler)
        self.port = self.httpd.server_port
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{CERTOMANCER_ARCH}/tsa/{CERTOMANCER_TSA}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)


def _pem(der: bytes) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    return x509.load_der_x509_certificate(der).public_bytes(Encoding.PEM)
