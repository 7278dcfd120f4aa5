"""Deterministic train/val/test assignment from a hash of each record's content and a seed.

A record's split depends only on its own content, so adding records later never moves existing
ones to another split.
"""

from __future__ import annotations

import hashlib

SPLITS = ("train", "val", "test")


def assign_split(key: str, val: float, test: float, seed: int = 0) -> str:
    digest = hashlib.blake2b(f"{seed}\x00{key}".encode(), digest_size=8).digest()
    u = int.from_bytes(digest, "big") / 2**64  # uniform in [0, 1)
    if u < test:
        return "test"
    if u < test + val:
        return "val"
    return "train"


def stratified_split(key: str, label: str, val: float, test: float, seed: int = 0) -> str:
    # Hash-based assignment is stratified in expectation: each label's records are spread by the
    # same uniform draw. Mixing the label in keeps per-label draws independent.
    return assign_split(f"{label}\x00{key}", val, test, seed)
