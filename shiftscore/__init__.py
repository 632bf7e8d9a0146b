"""ShiftScore: translation-robustness sweeps as a service. The client needs only `requests`."""

from shiftscore.client import (
    AuthError,
    Client,
    Conflict,
    ConnectionFailed,
    EvaluationFailed,
    ModelInvalid,
    NotFound,
    Results,
    ServerError,
    ShiftScoreError,
    ValidationError,
    WaitTimeout,
)

__all__ = [
    "AuthError", "Client", "Conflict", "ConnectionFailed", "EvaluationFailed", "ModelInvalid", "NotFound",
    "Results", "ServerError", "ShiftScoreError", "ValidationError", "WaitTimeout",
]
