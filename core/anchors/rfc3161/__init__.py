"""`rfc3161:<name>`: anchoring against a real RFC 3161 time-stamp authority over HTTP(S).

    settings.py   Rfc3161Target (and Rfc3161Auth), the `targets.rfc3161.<name>` model
    scheme.py     RFC3161, its entry in the scheme table (core/anchors/schemes.py)
    backend.py    RFC3161Backend: the request, the HTTP exchange, the reply's checks
    checking.py   verify and verify --explain: a token against --trust-bundle or the
                  target's trust_bundle; check-config's trust bundle check

The RFC 3161 protocol (requests, tokens, their verification) is core/anchors/tsp.py, the
trust bundle and the openssl steps core/anchors/tokens.py: `local:` uses them too.
Importing the package loads the settings and the entry only (pydantic).
"""

from core.anchors.rfc3161.scheme import RFC3161
from core.anchors.rfc3161.settings import Rfc3161Auth, Rfc3161Target

__all__ = ["RFC3161", "Rfc3161Auth", "Rfc3161Target"]
