"""A small cache of large output buffers, so that repeated allocating calls skip the page faults.

An allocating call of 32 MiB or more gets fresh pages from the kernel (glibc maps and unmaps blocks
that large), and faulting them in costs as much as the normalization itself. lnorm keeps the large
outputs it made: each is a view of a cached buffer, and once the caller drops every view, the buffer
is free for the next output of the same size. The cache holds at most ``limit`` bytes (512 MiB by
default; ``LNORM_BUFFER_CACHE`` or :func:`lnorm.set_buffer_cache` change it, 0 turns it off).

A buffer is free when nothing but the cache refers to it: NumPy views (and tensors made from them
through DLPack or ``torch.from_numpy``) all hold a reference to it, so its reference count says so.
"""

from __future__ import annotations

import os
import sys
import threading
from math import prod

import numpy as np

from ._checks import env_count

# Below this size malloc keeps freed blocks mapped, and the page faults do not recur.
MIN_BYTES = 16 << 20
DEFAULT_LIMIT = 512 << 20
_UINT8 = np.dtype(np.uint8)


def _limit_from_environment() -> int:
    value = env_count("LNORM_BUFFER_CACHE", 0, None)
    return DEFAULT_LIMIT if value is None else value


# Reference counts are a sound test only with the GIL; a free-threaded build gets no cache.
_HAS_GIL = getattr(sys, "_is_gil_enabled", lambda: True)()
_buffers: list = []  # least recently used first
# Every look at or change of _buffers and limit holds this lock: calls from several threads, and
# set_buffer_cache, race otherwise (a thread switch can fall between any two bytecodes).
_lock = threading.Lock()
limit = _limit_from_environment() if _HAS_GIL else 0
# Outputs this large go through empty(); the native fast path allocates the smaller ones itself.
fast_max_bytes = MIN_BYTES if limit else sys.maxsize


def _new_lock_in_child() -> None:
    # A fork can happen while another thread holds the lock; the child has no such thread.
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_lock_in_child)


def empty(shape, dtype: np.dtype) -> np.ndarray:
    """An uninitialized C-contiguous array, from the cache when it is large enough to be cached."""
    nbytes = prod(shape) * dtype.itemsize
    if nbytes < MIN_BYTES or nbytes > limit:
        return np.empty(shape, dtype)
    with _lock:
        if nbytes > limit:  # set_buffer_cache lowered it meanwhile
            return np.empty(shape, dtype)
        buffers = _buffers
        for i in range(len(buffers)):
            buf = buffers[i]
            # References: the list, `buf`, getrefcount's argument. Any view out there adds one, and
            # no view of a cached buffer is made outside this lock.
            if buf.nbytes == nbytes and sys.getrefcount(buf) == 3:
                del buffers[i]
                buffers.append(buf)
                return buf.view(dtype).reshape(shape)
        buf = np.empty(nbytes, _UINT8)
        if _make_room(nbytes):
            buffers.append(buf)
        return buf.view(dtype).reshape(shape)


def _make_room(nbytes: int) -> bool:
    """Forgets buffers, least recently used first, until nbytes more fit under the limit (a buffer
    still in use stays alive through its views; the cache just stops tracking it). Holds _lock."""
    total = sum(b.nbytes for b in _buffers)
    while _buffers and total + nbytes > limit:
        total -= _buffers.pop(0).nbytes
    return total + nbytes <= limit


def set_limit(nbytes: int) -> None:
    global limit, fast_max_bytes
    with _lock:
        limit = nbytes if _HAS_GIL else 0
        fast_max_bytes = MIN_BYTES if limit else sys.maxsize
        _make_room(0)


def cached_bytes() -> int:
    """Bytes the cache holds (in use by the caller or free)."""
    with _lock:
        return sum(b.nbytes for b in _buffers)
