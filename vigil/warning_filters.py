"""The command line's warning policy: third-party libraries' deprecation and usage warnings are not
the user's to act on, so they are not shown; Vigil's own warnings are.

ibis (under Feast's DuckDB offline store) warns about its own API on every retrieval chunk, and
pandas and pyarrow warn about each other through Feast. A filter matches the module a warning is
attributed to, so a warning that a library raises *about our call* (attributed to a ``vigil``
module by its stack level) stays visible.

Importing Feast calls ``warnings.simplefilter("once", DeprecationWarning)`` in several of its
modules, which puts a catch-all filter in front of ours; :func:`reassert` puts ours back in front
once Feast is imported (``feast_repo.open_store`` calls it).
"""

from __future__ import annotations

import warnings

#: Warnings from any module but ours (``vigil``, ``vigil_*``; ``__main__`` under ``python -m``).
THIRD_PARTY = r"(?!vigil|__main__)"
CATEGORIES: tuple[type[Warning], ...] = (
    DeprecationWarning,
    PendingDeprecationWarning,
    FutureWarning,
    UserWarning,
)

_installed = False


def _add() -> None:
    for category in CATEGORIES:
        warnings.filterwarnings("ignore", category=category, module=THIRD_PARTY)


def quiet_third_party() -> None:
    """Install the policy for this process (the CLI's entry point does, first thing)."""
    global _installed
    _installed = True
    _add()


def reassert() -> None:
    """Put the policy back in front of filters a library added since; a no-op in a process that
    never installed it (a notebook or a test keeps its own warning settings)."""
    if _installed:
        _add()
