"""Run an iterator in a background thread, a few items ahead (Parquet reads overlap training)."""

from __future__ import annotations

import queue
import threading
from typing import Iterator

_END = object()
JOIN_TIMEOUT_S = 60.0


def background(items: Iterator, depth: int) -> Iterator:
    """Run the iterator ``items`` in a daemon thread, ``depth`` items ahead; its errors re-raise here.

    Closing the returned generator (or dropping it) stops the thread at its next item and
    waits for it.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work():
        try:
            for item in items:
                if not put(item):
                    if hasattr(items, "close"):
                        items.close()  # lets a generator run its own clean-up (its inner threads stop too)
                    return
            put(_END)
        except BaseException as err:  # handed to the consumer and re-raised there
            put(err)

    def consume():
        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        try:
            while (item := q.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            # Wait for the thread to finish its current item: a daemon thread still inside
            # pyarrow or torch when the interpreter exits aborts the process
            # ("terminate called without an active exception").
            stop.set()
            thread.join(timeout=JOIN_TIMEOUT_S)

    return consume()
