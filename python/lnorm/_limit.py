"""The copy limit that lnorm's speed is measured against, and the CPU it was measured on: shared by
``python -m lnorm``, bench/bench.py and bench/copy_ratio.py (private; not part of the API).

A normalization reads x once and writes y once, so its limit is the fastest copy of the same bytes at
the same thread count. ``np.copyto`` is not that copy: it runs on one thread, and on some CPUs (AMD
Zen 4) at half the speed of a copy with streaming stores. ``copy_rows`` runs lnorm/copy.hpp's copies
on lnorm's threads, the rows split as lnorm's calls split them; the limit is the fastest kind.

    >>> dst = np.empty_like(x)
    >>> for kind in COPY_KINDS:
    ...     copy_rows(x, dst, kind)
"""

from __future__ import annotations

import os
import platform

from ._lnorm import copy_rows

__all__ = ["COPY_KINDS", "copy_rows", "cpu_description", "cpu_info"]

#: The stores of lnorm/copy.hpp's copies: plain vector stores, streaming (non-temporal) vector stores,
#: and the C library's memcpy (which picks its own by size).
COPY_KINDS = ("plain", "streaming", "memcpy")

#: The instruction-set flags that decide lnorm's kernels and copies, when /proc/cpuinfo lists them.
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16")


def cpu_info() -> dict:
    """The CPU as /proc/cpuinfo names it (its first processor): model name, vendor, family, model,
    which of CPU_FLAGS it has, and the logical cores. Off Linux, what :mod:`platform` knows.

    >>> cpu_info()["flags"]
    ['avx2', 'avx512f', 'avx512_bf16']
    """
    info = {"model name": platform.processor() or platform.machine(), "vendor": "", "family": "", "model": "",
            "flags": [], "logical cores": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read().split("\n\n", 1)[0]
    except OSError:
        return info
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    info["model name"] = fields.get("model name") or info["model name"]
    info["vendor"] = fields.get("vendor_id", "")
    info["family"] = fields.get("cpu family", "")
    info["model"] = fields.get("model", "")
    flags = set(fields.get("flags", "").split())
    info["flags"] = [f for f in CPU_FLAGS if f in flags]
    return info


def cpu_description() -> str:
    """One line for a results header: model name (vendor, family/model; flags), logical cores.

    >>> cpu_description()
    'AMD EPYC (AuthenticAMD, family 25 model 17; avx2 avx512f avx512_bf16), 2 logical cores'
    """
    info = cpu_info()
    details = ", ".join(part for part in (
        info["vendor"], f"family {info['family']} model {info['model']}" if info["family"] else "") if part)
    flags = " ".join(info["flags"]) or "none of " + " ".join(CPU_FLAGS)
    inside = f"{details}; {flags}" if details else flags
    return f"{info['model name']} ({inside}), {info['logical cores']} logical cores"
