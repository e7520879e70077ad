"""Conditioning: the typed Conditioning object and the encoders that produce it (paper §3.3)."""

from ldmkit.conditioning.types import Conditioning

__all__ = ["Conditioning"]
