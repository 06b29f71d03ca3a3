"""Which checkpoint architectures the local engine runs, and the check at load time.

A model whose architecture the engine does not implement must never load and quietly
compute wrong logits: ``config.json``'s ``architectures`` and ``model_type`` (or a GGUF
file's ``general.architecture``) are checked against this table first, and anything
else is refused with a `ValueError` naming it and listing what is supported. Config
features of a supported architecture that the engine does not reproduce exactly are
refused in `sgl.engine.llama.LlamaConfig.from_hf`, and checkpoint tensors that no part
of the forward pass reads are refused in `sgl.engine.llama.Llama` (an unknown bias or
norm would otherwise be dropped silently).
"""

from __future__ import annotations

from typing import Any

# Hugging Face model class -> the config.json model_type it goes with.
ARCHITECTURES: dict[str, str] = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "Gemma2ForCausalLM": "gemma2",
    "Gemma3ForCausalLM": "gemma3_text",
    "Phi3ForCausalLM": "phi3",
    "Olmo2ForCausalLM": "olmo2",
}

# GGUF general.architecture -> the Hugging Face class its converted folder uses.
# llama.cpp writes Mistral as "llama" and has no sliding window there; OLMo 2 is not
# mapped (its tensor conventions are not checked against transformers here).
GGUF_ARCHITECTURES: dict[str, str] = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gemma3": "Gemma3ForCausalLM",
    "phi3": "Phi3ForCausalLM",
}


def supported_list() -> str:
    """The supported architectures, for error messages."""
    return ", ".join(f"{cls} ({mt})" for cls, mt in ARCHITECTURES.items())


def check_architecture(config: dict[str, Any]) -> str:
    """The ``model_type`` of a ``config.json`` dictionary the engine implements.

    Raises ValueError when the architecture is unknown, when ``architectures`` and
    ``model_type`` disagree, or when the config names no architecture at all.
    """
    model_type = config.get("model_type")
    archs = config.get("architectures") or []
    if isinstance(archs, str):
        archs = [archs]
    if not archs and model_type is None:
        raise ValueError(
            "config.json names no architecture (neither 'architectures' nor 'model_type'); "
            f"the local engine supports: {supported_list()}")
    for arch in archs:
        if arch not in ARCHITECTURES:
            raise ValueError(
                f"architecture {arch!r} (model_type {model_type!r}) is not supported by the local engine; "
                f"supported: {supported_list()}")
    if not archs:
        if model_type not in ARCHITECTURES.values():
            raise ValueError(
                f"model_type {model_type!r} is not supported by the local engine; supported: {supported_list()}")
        return model_type
    expected = ARCHITECTURES[archs[0]]
    if model_type is not None and model_type != expected:
        raise ValueError(
            f"config.json says architecture {archs[0]!r} but model_type {model_type!r} "
            f"(expected {expected!r}); refusing an ambiguous checkpoint")
    return expected


def check_gguf_architecture(arch: str) -> str:
    """The Hugging Face class for a GGUF ``general.architecture`` (ValueError if unsupported)."""
    if arch not in GGUF_ARCHITECTURES:
        raise ValueError(
            f"GGUF architecture {arch!r} is not supported by the local engine; "
            f"supported GGUF architectures: {', '.join(GGUF_ARCHITECTURES)}")
    return GGUF_ARCHITECTURES[arch]
