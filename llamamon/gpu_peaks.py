"""Peak dense BF16/FP16 tensor TFLOPs of common GPUs, by the name NVML gives them: the denominator of MFU.

Dense means without 2:4 structured sparsity: datasheets headline the sparse figure (twice the dense one),
which no LLM training step reaches. For the GeForce and workstation cards the figure is the one with FP32
accumulation, as mixed-precision training runs (GeForce cards do FP16 accumulation at twice the rate).
A GPU that is not here has no MFU: a wrong peak would be worse than none.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Peak:
    model: str
    tflops: float  # dense BF16 (or FP16 where the GPU has no BF16) tensor TFLOPs
    source: str


# First match wins, so the more specific names come first (H100 NVL and PCIe before the SXM part, which NVML
# names "NVIDIA H100 80GB HBM3"). Patterns are matched case-insensitively against the NVML name.
PEAKS: tuple[tuple[str, Peak], ...] = (
    # NVIDIA B200 datasheet (DGX B200 / HGX B200): FP16/BF16 4.5 PFLOPS with sparsity per GPU.
    (r"\bB200\b", Peak("B200", 2250.0, "NVIDIA HGX B200 datasheet: 4.5 PFLOPS sparse BF16, halved")),
    # NVIDIA H200 datasheet: SXM 1,979 TFLOPS, NVL 1,671 TFLOPS BF16 with sparsity.
    (r"\bH200 NVL\b", Peak("H200 NVL", 835.5, "NVIDIA H200 datasheet: 1,671 TFLOPS sparse BF16, halved")),
    (r"\bH200\b", Peak("H200 SXM", 989.5, "NVIDIA H200 datasheet: 1,979 TFLOPS sparse BF16, halved")),
    # NVIDIA H100 datasheet: SXM 1,979, NVL 1,671, PCIe 1,513 TFLOPS BF16 with sparsity.
    (r"\bH100 NVL\b", Peak("H100 NVL", 835.5, "NVIDIA H100 datasheet: 1,671 TFLOPS sparse BF16, halved")),
    (r"\bH100\b.*PCIe", Peak("H100 PCIe", 756.5, "NVIDIA H100 datasheet: 1,513 TFLOPS sparse BF16, halved")),
    (r"\bH100\b", Peak("H100 SXM", 989.5, "NVIDIA H100 datasheet: 1,979 TFLOPS sparse BF16, halved")),
    # NVIDIA A100 datasheet: BF16 tensor 312 TFLOPS dense (624 sparse), SXM and PCIe alike.
    (r"\bA100\b.*PCIe", Peak("A100 PCIe", 312.0, "NVIDIA A100 datasheet: 312 TFLOPS dense BF16")),
    (r"\bA100\b", Peak("A100 SXM", 312.0, "NVIDIA A100 datasheet: 312 TFLOPS dense BF16")),
    # NVIDIA L40S datasheet: BF16 tensor 362.05 TFLOPS dense (733 with sparsity).
    (r"\bL40S\b", Peak("L40S", 362.05, "NVIDIA L40S datasheet: 362.05 TFLOPS dense BF16")),
    # NVIDIA L4 datasheet: BF16 tensor 242 TFLOPS with sparsity.
    (r"\bL4\b", Peak("L4", 121.0, "NVIDIA L4 datasheet: 242 TFLOPS sparse BF16, halved")),
    # NVIDIA A10 datasheet: BF16 tensor 125 TFLOPS dense (250 sparse). Not the A10G, a different part.
    (r"\bA10\b", Peak("A10", 125.0, "NVIDIA A10 datasheet: 125 TFLOPS dense BF16")),
    # NVIDIA Ada Lovelace architecture whitepaper: RTX 6000 Ada 364.2, RTX 4090 165.2 TFLOPS dense BF16 (FP32 acc.).
    (r"RTX 6000 Ada", Peak("RTX 6000 Ada", 364.2, "NVIDIA Ada Lovelace whitepaper: 364.2 TFLOPS dense BF16")),
    (r"RTX 4090", Peak("RTX 4090", 165.2, "NVIDIA Ada Lovelace whitepaper: 165.2 TFLOPS dense BF16, FP32 acc.")),
    # NVIDIA Ampere GA102 whitepaper: RTX A6000 154.8, RTX 3090 71 TFLOPS dense BF16 (FP32 accumulation).
    (r"RTX A6000", Peak("RTX A6000", 154.8, "NVIDIA RTX A6000 datasheet: 309.7 TFLOPS sparse, halved")),
    (r"RTX 3090", Peak("RTX 3090", 71.0, "NVIDIA Ampere GA102 whitepaper: 71 TFLOPS dense FP16, FP32 acc.")),
    # NVIDIA V100 datasheet: FP16 tensor 125 (SXM2), 112 (PCIe), 130 (V100S) TFLOPS; no BF16.
    (r"V100S", Peak("V100S", 130.0, "NVIDIA V100 datasheet: 130 TFLOPS FP16 tensor")),
    (r"V100.*PCIE", Peak("V100 PCIe", 112.0, "NVIDIA V100 datasheet: 112 TFLOPS FP16 tensor")),
    (r"V100", Peak("V100 SXM2", 125.0, "NVIDIA V100 datasheet: 125 TFLOPS FP16 tensor")),
    # NVIDIA T4 datasheet: 65 TFLOPS FP16 mixed precision; no BF16.
    (r"\bT4\b", Peak("T4", 65.0, "NVIDIA T4 datasheet: 65 TFLOPS FP16 tensor")),
)

_COMPILED = tuple((re.compile(pattern, re.IGNORECASE), peak) for pattern, peak in PEAKS)


def peak_for(nvml_name: str) -> Peak | None:
    """The peak of the GPU NVML calls ``nvml_name`` ("NVIDIA H100 80GB HBM3"), or None if not in the table."""
    for pattern, peak in _COMPILED:
        if pattern.search(nvml_name):
            return peak
    return None
