"""Who a service key is (`Principal`) and how keys are kept (`hash_key`).

Service API keys (jobs/store.py) and deployment tokens (serve/deployments.py) are stored as hashes; a presented
secret is hashed and looked up. Its own module so that serve/ and jobs/, which are siblings, share these without
importing each other.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Principal:
    """Who is calling: the owner name every job and dataset is filed under, and whether they see everything."""

    owner: str
    key_id: int
    is_admin: bool


def hash_key(key: str) -> str:
    # Keys are 256-bit random tokens, so a fast hash is enough: there is nothing to brute-force (unlike passwords).
    return hashlib.sha256(key.encode()).hexdigest()
