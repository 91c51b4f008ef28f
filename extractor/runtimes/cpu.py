"""What the CPU offers for int8 inference, read from /proc/cpuinfo (Linux; elsewhere: unknown).

int8 convolutions multiply uint8 activations by int8 weights. On x86-64 with VNNI
(`avx512_vnni`, `avx_vnni`) or AMX the products are summed in 32 bits; without them (AVX2-only
CPUs such as Zen 2/3 and older Xeons) onnxruntime sums pairs of u8 x s8 products in 16 bits
(VPMADDUBSW), which saturates with 8-bit weights. onnxruntime's ARM64 kernels widen before they
add (with or without the dot-product instructions `asimddp` and `i8mm`), so they do not
saturate. `extractor.runtimes.int8` picks the model's weight formats from `CpuInfo.family`.

x86-64 Linux lists `flags`; ARM64 Linux lists `Features` (and usually no `model name`); macOS,
Windows and some containers have no /proc/cpuinfo, and the family is then "unknown".
"""

from __future__ import annotations

import dataclasses
import functools
import os
import platform
from pathlib import Path

#: x86 flags that give 32-bit accumulation of int8 products.
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
#: ARM64 features that speed int8 up (dot products, 8-bit matrix multiply).
ARM_DOT_FLAGS = ("asimddp", "i8mm")
#: Flags worth recording beside them.
REPORTED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8",
                  "asimd", "asimddp", "i8mm")
#: The families `CpuInfo.family` names.
FAMILIES = ("x86-vnni", "x86-avx2", "x86", "arm64-dot", "arm64", "unknown")


@dataclasses.dataclass(frozen=True)
class CpuInfo:
    model: str
    flags: frozenset[str]
    #: "x86_64", "aarch64" or "" when nothing says.
    arch: str = ""

    @property
    def vnni(self) -> bool:
        """Whether int8 products are summed in 32 bits on x86 (no saturation with 8-bit
        weights)."""
        return any(f in self.flags for f in VNNI_FLAGS)

    @property
    def family(self) -> str:
        """One of `FAMILIES`: what decides how int8 is computed here."""
        if self.arch == "aarch64" or "asimd" in self.flags:
            return "arm64-dot" if any(f in self.flags for f in ARM_DOT_FLAGS) else "arm64"
        if self.vnni:
            return "x86-vnni"
        if "avx2" in self.flags:
            return "x86-avx2"
        if self.arch == "x86_64" or "sse2" in self.flags:
            return "x86"
        return "unknown"

    def describe(self) -> str:
        shown = [f for f in REPORTED_FLAGS if f in self.flags]
        return (f"{self.model} ({', '.join(shown) or 'no AVX2/AVX-512/VNNI/AMX/ASIMD flags'}; "
                f"family {self.family})")


def _arch_of(machine: str) -> str:
    machine = machine.lower()
    if machine in ("x86_64", "amd64"):
        return "x86_64"
    if machine in ("aarch64", "arm64"):
        return "aarch64"
    return ""


def parse_cpuinfo(text: str, machine: str = "") -> CpuInfo:
    """The model name and flags of the first processor in a /proc/cpuinfo text (x86's `flags`
    or ARM's `Features`); `machine` is `platform.machine()`'s answer where known."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        key = key.strip()
        if not sep:
            if not line.strip() and ("flags" in fields or "features" in fields):
                break  # the first processor's block is complete
            continue
        fields.setdefault(key.lower(), value.strip())
    flags = frozenset((fields.get("flags") or fields.get("features") or "").split())
    arch = _arch_of(machine)
    if not arch and "features" in fields and "flags" not in fields:
        arch = "aarch64"
    model = (fields.get("model name") or fields.get("hardware") or fields.get("model")
             or (f"ARM CPU part {fields['cpu part']}" if "cpu part" in fields else "")
             or platform.processor() or "unknown CPU")
    return CpuInfo(model, flags, arch)


@functools.cache
def detect(path: str = "/proc/cpuinfo") -> CpuInfo:
    """This machine's CPU; flags are empty where /proc/cpuinfo does not exist (macOS, Windows,
    some containers), and the family then comes from the architecture alone."""
    machine = platform.machine()
    try:
        return parse_cpuinfo(Path(path).read_text(errors="replace"), machine)
    except OSError:
        return CpuInfo(platform.processor() or machine or "unknown CPU", frozenset(),
                       _arch_of(machine))


def cpu_threads() -> int:
    """CPUs this process may run on (cgroup/affinity aware where the OS says so)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)
