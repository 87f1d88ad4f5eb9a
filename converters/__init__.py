"""edgeops.converters: turn a trained model into a validated bundle for a hardware profile.

The packager is a pipeline of passes (see :mod:`edgeops.converters.passes`): export
(PyTorch -> ONNX), pre-processing / graph optimization, quantization (onnxruntime) and the
LiteRT path (PyTorch -> .tflite with litert-torch, ai-edge-quantizer). The pipeline
(:mod:`edgeops.converters.pipeline`) picks passes per profile and per model, validates the
result against the original in the real runtime and writes the bundle.

Nothing here imports torch, onnx or onnxruntime at module import time; each pass imports what
it needs inside its functions, so `edgeops --help` stays fast.
"""
