"""``sgl.backtrack``: keep a model without logits (an API model, any ``fn(str) -> str``)
inside a grammar by letting it write and repairing where it errs.

The public name of `sgl.decode.backtrack`: ``guide`` runs the model with repairs by a
small local draft model; ``obtain_correction_pairs`` gives the longest valid prefix of a
text and the lexemes allowed after it.
"""

from sgl.decode.backtrack import (
    BacktrackError,
    Candidate,
    GuideResult,
    guide,
    obtain_correction_pairs,
)
from sgl.decode.correction_log import Correction, CorrectionLog

__all__ = [
    "BacktrackError",
    "Candidate",
    "Correction",
    "CorrectionLog",
    "GuideResult",
    "guide",
    "obtain_correction_pairs",
]
