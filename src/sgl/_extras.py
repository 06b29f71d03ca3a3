"""Optional parts of SGL and the pip extra that installs each.

The core (the language, the constraint engine, the HTTP backends) needs no torch.
The local engine, the server and the integrations check their packages on import with
`require`, so a missing one is an error that names the command to run, not a bare
``ModuleNotFoundError`` from deep inside.
"""

from __future__ import annotations

import importlib.util


class MissingExtraError(ImportError):
    """A part of SGL was used without the pip extra that installs its packages."""

    def __init__(self, feature: str, extra: str, missing: list[str]) -> None:
        self.feature, self.extra, self.missing = feature, extra, missing
        super().__init__(
            f"{feature} needs {', '.join(missing)}, "
            f"{'which is' if len(missing) == 1 else 'which are'} not installed: "
            f"pip install 'sgl[{extra}]'",
            name=missing[0],
        )


def require(feature: str, extra: str, *modules: str) -> None:
    """Raise `MissingExtraError` unless every module in ``modules`` can be imported.

    Only looks the modules up (``find_spec``), it does not import them.
    """
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingExtraError(feature, extra, missing)
