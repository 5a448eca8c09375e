"""Hooks for one call: registered by the calling thread, acting in it only, removed after.

A served box runs other callers' forwards on the same model meanwhile; a hook that acts only in
the thread that registered it lets each call change its own forward (entry tokens, fed
embeddings, dropout) and leaves the others untouched.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from contextlib import contextmanager


def this_thread(hook: Callable) -> Callable:
    """``hook`` acting only in the thread that wraps it; elsewhere it returns None (no change)."""
    caller = threading.get_ident()

    def wrapped(*args):
        return hook(*args) if threading.get_ident() == caller else None

    return wrapped


@contextmanager
def removed_after(handles: Iterable):
    """Within the block the hooks behind ``handles`` stay registered; after it they are removed."""
    handles = list(handles)
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
