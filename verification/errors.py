"""The one exception type the statistics library raises.

Every gate upstream catches a single type and shows its message to the release engineer, so each
message is one line that names the problem and the fix. Subclassing ValueError keeps the library
usable from code that already treats bad arguments as ValueError.
"""


class VerificationError(ValueError):
    """Input that no statistic can be computed from (empty, misaligned, all-NaN, wrong type)."""
