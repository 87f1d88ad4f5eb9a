"""ONNX external data in the bundle: the built model's weights in a file beside ``model.onnx``.

A model that came with its weights in external data files (exporters write them for models near
or over protobuf's 2 GiB limit, and users keep them so) goes into the bundle the same way:
``model/model.onnx`` holds the graph and ``model/model.onnx.data`` every tensor of 1 KiB or more,
both listed with size and sha256 in the manifest like any member. onnxruntime reads the data file
from the model file's folder, so a device that extracts the bundle loads it by the model's path
as usual. Writing is deterministic (tensors in graph order, one file).
"""

from __future__ import annotations

import tempfile
from pathlib import Path, PurePosixPath

DATA_SUFFIX = ".data"
SIZE_THRESHOLD = 1024  # bytes: smaller tensors stay inside model.onnx (as onnx.save does by default)


def artifact_members(data: bytes, artifact_name: str, external: bool) -> dict[str, bytes]:
    """Bundle members for the built model: ``{artifact_name: data}``, or with ``external`` the graph
    and ``<artifact_name>.data`` holding the weights (the graph refers to it by its file name)."""
    if not external:
        return {artifact_name: data}
    import onnx
    from onnx.external_data_helper import convert_model_to_external_data

    model = onnx.load_model_from_string(data)
    location = PurePosixPath(artifact_name).name + DATA_SUFFIX
    convert_model_to_external_data(model, all_tensors_to_one_file=True, location=location, size_threshold=SIZE_THRESHOLD, convert_attribute=True)
    with tempfile.TemporaryDirectory(prefix="edgeops-ext-") as tmp:
        graph = Path(tmp) / PurePosixPath(artifact_name).name
        onnx.save_model(model, str(graph))
        members = {artifact_name: graph.read_bytes()}
        weights = Path(tmp) / location
        if weights.exists():  # no tensor over the threshold: nothing external
            members[str(PurePosixPath(artifact_name).parent / location)] = weights.read_bytes()
    return members
