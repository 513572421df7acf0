"""Seeds as pure functions of integers, so a resumed run draws what the uninterrupted run would have."""

from __future__ import annotations

import torch


def mix_seed(*values: int) -> int:
    """One 63-bit seed from several integers (an LCG step per value), the same on every machine and Python."""
    seed = 0x9E3779B97F4A7C15
    for value in values:
        seed = (seed * 6364136223846793005 + value + 1442695040888963407) % 2**63
    return seed


def generator(*values: int) -> torch.Generator:
    """A CPU generator seeded with mix_seed(*values)."""
    return torch.Generator().manual_seed(mix_seed(*values))
