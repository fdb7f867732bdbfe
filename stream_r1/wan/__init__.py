"""The Wan2.1 DiT: one model class for the causal student, the bidirectional teacher and the critic."""
from .model import WanModel

__all__ = ["WanModel"]
