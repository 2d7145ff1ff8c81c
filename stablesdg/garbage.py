"""Freeing what a run built before the process builds anything else, with a collection that scans only that."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def freeing_what_it_builds() -> Iterator[None]:
    """Run the block, then free what it built that only reference cycles keep alive (a Lightning trainer and its
    module hold each other, and with them their models), so that their memory, a GPU's too, is back before the
    process goes on to a next stage. Python's collector would free them only when it next looks at long-lived
    objects, which may be while that stage has built its own.

    The collection scans only what was made in the block: the objects there before it (the libraries loaded, the
    caller's) are frozen out of it (``gc.freeze``); a full one takes a third of a second once torch and Lightning
    are loaded. They are given back to the collector at the end, unless objects were frozen already (by a pipeline
    whose step this is, or by the caller), which stay frozen for whoever froze them to give back."""
    first_to_freeze = gc.get_freeze_count() == 0
    gc.freeze()
    try:
        yield
    finally:
        gc.collect()
        if first_to_freeze:
            gc.unfreeze()
