"""Finite automata: regexes (``regex_ast`` nodes) to minimal byte DFAs, and back.

``compiler`` (``to_dfa``) with its subset construction ``determinize``; ``dfa`` (the DFA
types, UTF-8 lowering, minimisation); ``derivatives`` (boolean string expressions);
``numbers`` (number lexemes by a position automaton) and ``ranges`` (their regexes).
"""
