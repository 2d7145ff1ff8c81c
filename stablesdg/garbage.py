"""Python's cyclic collector around a run: the libraries a run loads are not scanned while they load, and what it
built is freed before the process builds anything else, with a collection that scans only that."""

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


@contextmanager
def loading_uncollected() -> Iterator[None]:
    """Run the block, the imports of a run's libraries, with Python's collector paused, then leave what exists out of
    its later collections (``gc.freeze``; ``freeing_what_it_builds``, around the run, gives it back). torch and
    Lightning (which imports torchmetrics, and so torchvision, scipy and transformers) make half a million objects as
    they load, and the collector, which scans the long-lived ones each time they have grown by a quarter, would
    scan them again and again: 1.3 of the 5.6 s that loading Lightning takes. Cheap where they are loaded already."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if collecting:
            gc.enable()
