"""`--quantize auto`: the scheme per profile AND per model, with the reason in words.

Rules (the profile's ``quantization`` section holds the per-target preferences):

* conv nets get ``quantization.scheme`` (static int8 on CPU profiles: on an AVX-512-VNNI Xeon
  static QDQ int8 ran the digits CNN of bench/packager.py ~2.7x faster than fp32 in onnxruntime
  1.32, while dynamic int8 was ~6x slower than fp32);
* Linear/MatMul-heavy models (transformers) get ``quantization.transformer_scheme`` (dynamic
  int8 on CPU profiles: no calibration, activations ranges found per input, MatMul weights int8);
* Edge TPU profiles are full-int8 whatever the model (the TPU runs only integer tensors);
* models dominated by neither stay float32 ("none");
* CUDA profiles (Jetson) are fp16 (tensor cores; int8 on TensorRT needs its own calibration cache);
* a model that is already quantized (QDQ, QOperator or dynamic quantization ops present) is not
  quantized again: "none", whatever the profile. ``--quantize SCHEME`` still forces a scheme.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgeops.converters.graph import ModelKind, describe_quantization


@dataclass(frozen=True)
class Choice:
    scheme: str
    reason: str


def choose_scheme(requested: str, kind: ModelKind, profile) -> Choice:
    """The scheme to use: ``requested`` unless it is 'auto'."""
    if requested != "auto":
        return Choice(requested, f"--quantize {requested} given")
    if kind.quantized:
        # Quantizing quantized weights again compounds the rounding and adds Q/DQ pairs; the model's
        # own quantization was calibrated by its authors on their data.
        return Choice("none", f"model is already quantized ({describe_quantization(kind.quantized)}): packaged without re-quantizing; pass --quantize SCHEME to force one")
    q = profile.quantization
    features = set(profile.device.cpu_features)
    if profile.device.accelerator == "edgetpu" or "EdgeTpuDelegate" in profile.runtime.providers:
        return Choice("full-int8", f"profile '{profile.name}' targets the Edge TPU, which runs only fully integer models")
    if profile.device.accelerator == "cuda":
        scheme = (q.transformer_scheme or q.scheme) if kind.kind in ("transformer", "linear") else q.scheme
        return Choice(scheme, f"profile '{profile.name}' runs on a CUDA GPU ({', '.join(profile.runtime.providers[:1])}): {scheme} uses the tensor cores")
    if profile.runtime.name == "openvino" and kind.kind in ("transformer", "linear", "conv"):
        scheme = (q.transformer_scheme or q.scheme) if kind.kind != "conv" else q.scheme
        why = ("NNCF int8 post-training quantization on the calibration data: OpenVINO runs int8 convolutions and MatMuls with requantization "
               "and the element-wise ops after them fused into the kernel") if scheme == "static-int8" else f"the profile's scheme is {scheme}"
        return Choice(scheme, f"model is {kind.describe()}: {why}")
    if kind.kind in ("transformer", "linear"):
        scheme = q.transformer_scheme or q.scheme
        why = ("dynamic int8 quantizes the MatMul/Gemm weights ahead of time and each activation per input, no calibration needed; "
               "self-attention blocks are fused into one int8 QAttention kernel first") if scheme == "dynamic-int8" else f"the profile's transformer scheme is {scheme}"
        return Choice(scheme, f"model is {kind.describe()}: {why}")
    if kind.kind == "conv":
        scheme = q.scheme
        if scheme == "static-int8":
            hw = "VNNI int8 dot products" if "avx512_vnni" in features or "avx_vnni" in features else ("dot-product instructions" if "dotprod" in features else "int8 kernels")
            why = (f"static QDQ int8 ({q.activation_type} activations, {q.weight_type} {'per-channel' if q.per_channel else 'per-tensor'} weights) uses the CPU's {hw}; "
                   "measured on an AVX-512-VNNI Xeon: ~2.7x faster than fp32 for a CNN, while dynamic int8 is slower than fp32 for conv nets")
        else:
            why = f"the profile's scheme for conv nets is {scheme}"
        return Choice(scheme, f"model is {kind.describe()}: {why}")
    # No Conv/MatMul weights to speak of: int8 would add Quantize/Dequantize work and save nothing.
    return Choice("none", f"model is {kind.describe()}: neither conv- nor MatMul-dominated, so quantization would not pay off; kept float32 (pass --quantize to force a scheme)")
