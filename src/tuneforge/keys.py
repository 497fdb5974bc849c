"""Hashing of bearer secrets: service API keys (jobs/store.py) and deployment tokens (serve/deployments.py).

Only the hash is stored; a presented secret is hashed and looked up. Its own module so that serve/ and jobs/, which
are siblings, share it without importing each other.
"""

from __future__ import annotations

import hashlib


def hash_key(key: str) -> str:
    # Keys are 256-bit random tokens, so a fast hash is enough: there is nothing to brute-force (unlike passwords).
    return hashlib.sha256(key.encode()).hexdigest()
