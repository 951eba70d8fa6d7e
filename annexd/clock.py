# -*- test-case-name: tests.test_cluster -*-
"""
The gateway's monotonic clock, as git-annex reads it for GETTIMESTAMP.
"""

import time

_CLOCK = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)


def monotonicSeconds():
    """
    Whole seconds of the host's monotonic clock (CLOCK_BOOTTIME where
    there is one, like git-annex).
    """
    return int(time.clock_gettime(_CLOCK))
