"""The bundle's drift reference: sketches of every input and output of the built model.

Made at build time from the validation data (the calibration data when the build has no
validation data; none when it has neither, since generated random inputs are no reference for
what a camera will see), with the inputs as the built model takes them and the outputs the
built model gives. The layouts and states come from :mod:`edgeops.sketch`, which the agent
and the console use too; the manifest records the data's sha256 and the sketch parameters.
Deterministic: the same feeds give the same bytes.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np

from edgeops.bundle import TensorSpec
from edgeops.sketch import MAX_TENSORS, Reference, build_reference, channel_axis_for

MAX_REFERENCE_BYTES = 256 * 1024  # of the manifest's 1 MiB (edgeops.bundle.MAX_MANIFEST_BYTES); a larger reference is left out with a warning


def make_reference(
    source: str,
    data_sha256: str | None,
    input_feeds: list[dict[str, np.ndarray]],
    output_feeds: list[dict[str, np.ndarray]],
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    classifier: bool,
    warn: Callable[[str], None],
) -> Reference | None:
    """The reference of ``input_feeds`` (named as the built model's inputs) and the built
    model's ``output_feeds`` on them; None (with a warning) when nothing can be sketched."""
    if not input_feeds:
        return None
    # only numeric tensors are sketched: a string or bool input has no histogram
    def numeric(name: str, feeds: list[dict[str, np.ndarray]]) -> bool:
        return all(name in f and np.asarray(f[name]).dtype.kind in "iuf" for f in feeds)

    ins = {s.name: [np.asarray(f[s.name]) for f in input_feeds] for s in inputs if numeric(s.name, input_feeds)}
    outs = {s.name: [np.asarray(f[s.name]) for f in output_feeds] for s in outputs if numeric(s.name, output_feeds)}
    if len(ins) + len(outs) > MAX_TENSORS:
        # a telemetry batch carries at most MAX_TENSORS sketches: the inputs first, then outputs
        warn(f"drift reference: {len(ins) + len(outs)} tensors, sketching the first {MAX_TENSORS} (inputs first)")
        ins = dict(list(ins.items())[:MAX_TENSORS])
        outs = dict(list(outs.items())[: MAX_TENSORS - len(ins)])
    classes = {}
    if classifier and len(outputs) == 1 and isinstance(outputs[0].shape[-1], int):
        classes[outputs[0].name] = int(outputs[0].shape[-1])
    axes = {s.name: channel_axis_for(s.shape) for s in inputs}
    reference = build_reference(source, ins, outs, classifier_outputs=classes, channel_axes=axes, data_sha256=data_sha256)  # type: ignore[arg-type]
    # as the manifest writes it (indented: a list of counts takes a line per count)
    size = len(json.dumps(reference.to_dict(), sort_keys=True, indent=2))
    if size > MAX_REFERENCE_BYTES:
        warn(f"drift reference left out of the manifest: {size} bytes of sketches (more than {MAX_REFERENCE_BYTES}); the console cannot score drift for this bundle")
        return None
    return reference
