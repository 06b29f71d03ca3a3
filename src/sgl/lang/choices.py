"""SGLang's ``sglang.lang.choices`` names, for programs that import them from here.

The methods live in ``sgl.backends.choices``: backends score choices with them, and the
language layer sits above the backends.
"""

from sgl.backends.choices import (
    METHOD_NAMES,
    METHODS,
    ChoicesDecision,
    ChoicesSamplingMethod,
    GreedyTokenSelection,
    TokenLengthNormalized,
    UnconditionalLikelihoodNormalized,
    get_method,
    greedy_token_selection,
    method_name,
    token_length_normalized,
    unconditional_likelihood_normalized,
)

__all__ = [
    "METHODS",
    "METHOD_NAMES",
    "ChoicesDecision",
    "ChoicesSamplingMethod",
    "GreedyTokenSelection",
    "TokenLengthNormalized",
    "UnconditionalLikelihoodNormalized",
    "get_method",
    "greedy_token_selection",
    "method_name",
    "token_length_normalized",
    "unconditional_likelihood_normalized",
]
