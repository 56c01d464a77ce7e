"""`local:<name>`: the embedded RFC 3161 time-stamp authority, for development only.

    settings.py   LocalTarget, the `targets.local.<name>` model
    scheme.py     LOCAL, its entry in the scheme table (core/anchors/schemes.py)
    backend.py    LocalTSA, the TSA itself (key, certificate, serials, tokens)
    checking.py   verify and verify --explain: its tokens against the data dir's certificate

Importing the package loads the settings and the entry only (pydantic): the backend and
its cryptography are loaded on first use.
"""

from core.anchors.local.scheme import LOCAL
from core.anchors.local.settings import LocalTarget

__all__ = ["LOCAL", "LocalTarget"]
