"""Which Keras precision policy to train with, from what the hardware runs natively.

``train.precision: auto`` picks:

- ``mixed_bfloat16`` on a GPU with bfloat16 tensor cores (compute capability 8.0
  or newer: Ampere, Hopper, ...), and on a CPU whose flags include
  ``avx512_bf16`` or ``amx_bf16`` (Intel Cooper Lake, Sapphire Rapids and later;
  AMD Zen 4 and later), where oneDNN runs bfloat16 convolutions in hardware;
- ``mixed_float16`` on an older GPU;
- ``float32`` everywhere else. A CPU without those flags emulates bfloat16 and
  float16 in software, and trains about ten times slower than in float32.

Forcing a half precision on such a CPU is allowed, with a warning that names
the slowdown. The detection reads ``/proc/cpuinfo`` (Linux) and asks
TensorFlow for the GPUs' compute capability: it detects, never assumes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
#: Compute capability from which NVIDIA GPUs have bfloat16 tensor cores (Ampere).
GPU_BF16_CAPABILITY = (8, 0)
CPUINFO = Path("/proc/cpuinfo")
HALF_PRECISIONS = frozenset({"mixed_float16", "mixed_bfloat16"})
#: ``requested`` of a resumed model: Keras saves each layer's policy with its weights.
SAVED = "saved"


@dataclass(frozen=True)
class Hardware:
    """What the precision choice depends on."""

    gpu_capabilities: tuple[tuple[int, int], ...]
    """Compute capability of each visible GPU; empty without a GPU."""
    cpu_bf16_flags: tuple[str, ...]
    """Which of :data:`CPU_BF16_FLAGS` the CPU reports."""


@dataclass(frozen=True)
class PrecisionChoice:
    """The policy to train with, why it was chosen, and a warning when it will be slow."""

    policy: str
    requested: str
    reason: str
    warning: str | None = None

    def describe(self) -> str:
        """``mixed_bfloat16 (auto: CPU with native bfloat16: avx512_bf16)``."""
        how = {"auto": "auto", SAVED: "as saved in the model"}.get(self.requested, "requested")
        return f"{self.policy} ({how}: {self.reason})"


def cpu_bf16_flags(cpuinfo: str | None = None) -> tuple[str, ...]:
    """The bfloat16 flags in ``cpuinfo`` (default: this machine's ``/proc/cpuinfo``)."""
    if cpuinfo is None:
        try:
            cpuinfo = CPUINFO.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ()
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return tuple(flag for flag in CPU_BF16_FLAGS if flag in flags)


def choose_precision(requested: str, hardware: Hardware) -> PrecisionChoice:
    """The policy for ``requested`` (``auto`` or an explicit policy) on ``hardware``."""
    gpus = hardware.gpu_capabilities
    native_bf16 = _native_bf16(hardware)
    if requested != "auto":
        return PrecisionChoice(
            requested,
            requested,
            _hardware_summary(hardware),
            _emulation_warning(requested, hardware),
        )
    if gpus:
        if native_bf16:
            return PrecisionChoice("mixed_bfloat16", requested, "GPU with bfloat16 tensor cores")
        return PrecisionChoice("mixed_float16", requested, "GPU without bfloat16 tensor cores")
    if native_bf16:
        return PrecisionChoice(
            "mixed_bfloat16",
            requested,
            f"CPU with native bfloat16: {', '.join(hardware.cpu_bf16_flags)}",
        )
    return PrecisionChoice("float32", requested, "CPU without native bfloat16")


def saved_precision(policy: str, hardware: Hardware) -> PrecisionChoice:
    """The policy a loaded model keeps (its layers carry it), warning where it is emulated."""
    return PrecisionChoice(
        policy, SAVED, _hardware_summary(hardware), _emulation_warning(policy, hardware)
    )


def _emulation_warning(policy: str, hardware: Hardware) -> str | None:
    """A warning when ``policy`` is a half precision that this CPU-only machine emulates."""
    if hardware.gpu_capabilities or policy not in HALF_PRECISIONS:
        return None
    if policy == "mixed_bfloat16":
        if hardware.cpu_bf16_flags:
            return None
        missing = f"without native bfloat16 ({' or '.join(CPU_BF16_FLAGS)})"
    else:
        missing = "without float16 arithmetic"
    return (
        f"{policy} on a CPU {missing} is emulated: expect training about 10x slower "
        "than float32; use train.precision auto or float32"
    )


def _native_bf16(hardware: Hardware) -> bool:
    if hardware.gpu_capabilities:
        return all(capability >= GPU_BF16_CAPABILITY for capability in hardware.gpu_capabilities)
    return bool(hardware.cpu_bf16_flags)


def _hardware_summary(hardware: Hardware) -> str:
    if hardware.gpu_capabilities:
        return "GPU " + ", ".join(
            f"sm_{major}{minor}" for major, minor in hardware.gpu_capabilities
        )
    flags = ", ".join(hardware.cpu_bf16_flags) or "no native bfloat16"
    return f"CPU, {flags}"


def detect_hardware(gpu_details: Sequence[dict[str, object]] | None = None) -> Hardware:
    """This machine's GPUs (through TensorFlow) and CPU bfloat16 flags.

    ``gpu_details`` (``tf.config.experimental.get_device_details`` of each GPU)
    is asked of TensorFlow when not given. A GPU that does not report its
    compute capability counts as one without bfloat16.
    """
    if gpu_details is None:
        from mritumor.core.environment import import_tensorflow

        tf = import_tensorflow()
        gpu_details = [
            tf.config.experimental.get_device_details(gpu)
            for gpu in tf.config.list_physical_devices("GPU")
        ]
    capabilities = []
    for details in gpu_details:
        capability = details.get("compute_capability")
        if isinstance(capability, tuple) and len(capability) == 2:
            capabilities.append((int(capability[0]), int(capability[1])))
        else:
            capabilities.append((0, 0))
    return Hardware(tuple(capabilities), cpu_bf16_flags())


def resolve_precision(requested: str) -> PrecisionChoice:
    """:func:`choose_precision` on this machine."""
    return choose_precision(requested, detect_hardware())
