"""The disk cache of extracted vocabularies (numpy ``.npz`` files, written atomically)."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- disk cache
def cache_dir() -> Path:
    """Where vocabulary caches live: ``$SGL_CACHE_DIR/vocab`` (default ``~/.cache/sgl/vocab``)."""
    root = os.environ.get("SGL_CACHE_DIR")
    base = Path(root) if root else Path.home() / ".cache" / "sgl"
    return base / "vocab"


def _atomic_savez(path: Path, **arrays: np.ndarray) -> None:
    """Write an .npz so that readers never see a half-written file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
            os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache may be shared
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as exc:  # a read-only or full cache must not break decoding
        log.warning("could not write vocabulary cache %s: %s", path, exc)


def _load_npz(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, KeyError) as exc:
        if path.exists():
            log.warning("ignoring unreadable vocabulary cache %s: %s", path, exc)
        return None


def _pack_lengths(token_bytes: Sequence[bytes | None]) -> np.ndarray:
    """Token lengths, -1 for None."""
    return np.fromiter(
        (-1 if t is None else len(t) for t in token_bytes), dtype=np.int32, count=len(token_bytes)
    )


def _pack(token_bytes: Sequence[bytes | None]) -> tuple[np.ndarray, bytes]:
    """Lengths (-1 for None) and the concatenation of all token bytes."""
    return _pack_lengths(token_bytes), b"".join(t for t in token_bytes if t is not None)


def _unpack(lengths: np.ndarray, flat: bytes) -> list[bytes | None]:
    ends = np.cumsum(np.maximum(lengths, 0)).tolist()
    return [None if n < 0 else flat[end - n:end] for n, end in zip(lengths.tolist(), ends, strict=True)]
