"""Errors of the packager, as subclasses of the core hierarchy in :mod:`edgeops.errors`::

    InputError (4)
    ├── DynamicShapeError          dynamic input dims on a static-shapes profile
    ├── CalibrationMissingError    static quantization asked for without calibration data
    ├── NonFiniteOutputError       the built model gives NaN/Inf where the original does not
    ├── ConversionMismatchError    a converted model (ONNX -> TFLite) computes something else than its source
    ├── OpsetConversionError       onnx.version_converter cannot bring the model into the profile's opset range
    └── UnsupportedOperatorError   (edgeops.errors)
        └── CustomOperatorError    a node whose (domain, op) no runtime of the profile has a kernel for
    ConfigError (3)
    └── ToolUnavailableError       a pass needs a package that is not installed or fails

Each message names the input / option / package at fault and the way out.
"""

from __future__ import annotations

from edgeops.errors import ConfigError, InputError, UnsupportedOperatorError


class DynamicShapeError(InputError):
    """The model has dynamic input dimensions and the profile needs static shapes."""


class CalibrationMissingError(InputError):
    """Static or full-integer quantization needs calibration data and none was given."""


class ToolUnavailableError(ConfigError):
    """A pass needs an optional package (e.g. litert-torch) that is missing or unusable."""


class NonFiniteOutputError(InputError):
    """The built model gives NaN/Inf on a validation input where the original model does not."""


class ConversionMismatchError(InputError):
    """A converter's output model does not compute what the source model computes (parity check failed)."""


class OpsetConversionError(InputError):
    """onnx.version_converter cannot convert the model's opset into the profile's range; names the node and op."""


class CustomOperatorError(UnsupportedOperatorError):
    """A node's operator (custom domain, or an op the profile's runtime has no kernel for); names node, op,
    domain and the profiles whose runtime would take it."""


class Int8QuantizationError(InputError):
    """The int8 quantizer (NNCF) cannot quantize the model; names the node or op OpenVINO reports and the way out."""
