"""Pure statistics behind every gate and canary verdict: arrays in, explained pydantic verdicts out."""

from verification.errors import VerificationError

__all__ = ["VerificationError"]
