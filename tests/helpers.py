"""Small shared test inputs (fixtures live in conftest.py)."""
import torch


def tiny_context(seed: int = 0, n: int = 9, width: int = 32) -> torch.Tensor:
    """A seeded [1, n, width] text context for the tiny model (text_dim 32)."""
    return torch.randn(1, n, width, generator=torch.Generator().manual_seed(seed))
