"""glibc's malloc in a process that scores images: keep freed memory for the next image.

Each image allocates the same few large buffers again (the decoded pixels, the detector's pyramid
and crops, the networks' activations, the chips' statistics), from 100 KB to tens of MB each.
glibc serves such a request with mmap at first, and later from its heap, whose free top it
hands back to the kernel as soon as it passes twice the largest buffer seen so far: the next
image gets fresh pages, which the kernel faults in and zeroes one 4 KB page at a time. Measured
on 60 group photos in one process: 320,000 page faults and 0.66 s of system time (~11 ms an
image) by default, 69,000 and 0.19 s with the thresholds below; a batch of 20 group photos in
two processes 165,000-185,000 faults against 123,000-127,000. (By default the count depends on
the process's history: a process that happened to free a large enough buffer early keeps its
memory too. With the thresholds it does not depend on luck.) Scores are unchanged: only where
memory comes from changes.

The thresholds keep buffers up to MMAP_THRESHOLD in the heap and its free top up to
TRIM_THRESHOLD, the most glibc's own adaptive policy would keep (32 MB and 2 x 32 MB on 64-bit),
fixed from the start instead of reached after the first frees. A larger request (an image over
3200 px, reduced on decoding) is still mapped and unmapped on its own.

`keep_freed_memory` sets them with `mallopt`; where there is no glibc (macOS, musl), it does
nothing. Called once in each process that scores: a `ScoringPool`'s processes, the CLI's
in-process scorer (`pipeline.LocalScorer`: `score`, `batch --jobs 1`) and the ML services; a
user's MALLOC_* or GLIBC_TUNABLES settings are respected.
"""
from __future__ import annotations

import os

MMAP_THRESHOLD = 32 * 1024 * 1024
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD
# mallopt's parameter numbers (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds for this process; True when they were set (False:
    not glibc, or the user tuned malloc through the environment)."""
    if any(name in os.environ for name in USER_SETTINGS):
        return False
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # no C library by that name, or one without mallopt
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    # The mmap threshold first: setting either one stops glibc adapting the other.
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
