"""SGL: a structured generation language and engine for LLMs."""

__version__ = "0.1.0"
