"""The one "did you mean" helper of the project's error messages.

    raise ValueError(f"unknown key {key!r}.{did_you_mean(key, valid)}")   # ... Did you mean 'lr'?

Standard library only, and it lives in model/ because the model registry needs it and model/ imports
nothing of the harness (docs/contracts.md, Layers); harness/ and analysis/ import it from here
without pulling in torch (model/__init__.py imports nothing).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(name: object, options: Iterable[object], *, list_valid: bool = False) -> str:
    """ " Did you mean 'x'?" naming the option closest to `name` (difflib ratio >= 0.5); when none is
    that close: "", or with list_valid " Valid keys: a, b." (meant to follow a sentence's full stop)."""
    options = [str(o) for o in options]
    close = difflib.get_close_matches(str(name), options, n=1, cutoff=0.5)
    if close:
        return f" Did you mean {close[0]!r}?"
    return f" Valid keys: {', '.join(options)}." if list_valid else ""
