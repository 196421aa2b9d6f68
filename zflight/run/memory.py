"""Host memory settings (no dependencies beyond the standard library)."""

from __future__ import annotations

import ctypes
import sys


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed heap memory for reuse instead of returning it to the system.

    By default glibc serves every allocation above a threshold (at most 32 MiB) with a fresh
    ``mmap`` and unmaps it on free, so every batch's activations and gradients fault in new,
    zeroed pages. Keeping them makes a CPU training step about 10% faster here (ZFNet width 0.25,
    64 px, batch 64: 54 -> 47 ms); the price is that the process keeps its peak heap. Returns
    whether the setting took (False off glibc).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(
            libc.mallopt(m_mmap_threshold, 1 << 30) and libc.mallopt(m_trim_threshold, 2**31 - 1)
        )
    except (OSError, AttributeError):
        return False
