"""The constraint engine: regex, JSON Schema, grammars and choices to token masks.

Usable on its own (it imports nothing else from ``sgl``)::

    vocab = Vocabulary.from_tokenizer("tokenizer.json")
    m = Matcher(compile_json_schema(schema, vocab))
    bitmask = allocate_bitmask(1, vocab.n_vocab)
    m.fill_bitmask(bitmask)        # bit set = token allowed
    m.advance(token_id)
"""

from .api import compile_choices, compile_grammar, compile_json_schema, compile_regex, compile_spec
from .bitmask import allocate_bitmask, fill_next_token_bitmasks
from .compiled import CompileBudget, CompiledGrammar, compile_ir
from .errors import CompileBudgetExceeded, ConstraintError
from .grammar import Grammar, Rule, Terminal
from .matcher import Matcher
from .torch_utils import apply_bitmask
from .vocab import Vocabulary

__all__ = [
    "CompileBudget",
    "CompileBudgetExceeded",
    "CompiledGrammar",
    "ConstraintError",
    "Grammar",
    "Matcher",
    "Rule",
    "Terminal",
    "Vocabulary",
    "allocate_bitmask",
    "apply_bitmask",
    "compile_choices",
    "compile_grammar",
    "compile_ir",
    "compile_json_schema",
    "compile_regex",
    "compile_spec",
    "fill_next_token_bitmasks",
]
