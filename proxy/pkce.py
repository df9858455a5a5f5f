"""PKCE (RFC 7636), used on both sides: our authorization server checks it, our upstream client sends it."""

from __future__ import annotations

import base64
import hashlib


def s256(verifier: str) -> str:
    """The PKCE S256 code challenge of a verifier (RFC 7636 §4.2)."""
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
