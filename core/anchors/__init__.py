"""Anchoring: one package per target scheme, each registered with one line in schemes.py.

    base.py       the Backend protocol every scheme's backend implements; Attestation
    spec.py       SchemeSpec: what a scheme package tells the rest of the program
    schemes.py    SCHEMES, the table (one line per scheme); the config's Targets model
    registry.py   Backends: one backend per target id, built by its scheme's spec
    tsp.py        the RFC 3161 protocol (requests, tokens, their checks)
    tokens.py     what local and rfc3161 share outside the backend (trust bundles, openssl steps)
    local/ rfc3161/ evm/    the schemes: settings.py, scheme.py, backend.py, checking.py
    btc.py        a scheme with settings and no backend yet

A new scheme: docs/architecture.md, "Adding a target scheme".
"""
