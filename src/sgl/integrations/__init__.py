"""SGL's constraint engine inside other inference stacks.

* `sgl.integrations.transformers`: a ``LogitsProcessor`` for ``model.generate``
  (``pip install 'sgl[transformers]'``).
* `sgl.integrations.vllm`: a vLLM structured-output backend and a logits processor.
* `sgl.integrations.sglang`: a grammar backend for SGLang.
* `sgl.integrations.prefetch`: a helper of the processors
  (masks computed one token ahead).

Each module imports its framework (and torch) only when imported itself: ``import sgl``
and this package stay torch-free.
"""
