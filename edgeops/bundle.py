"""The bundle: one tar file holding a built model and everything needed to trust and test it.

Layout (members in this order, all regular files, mode 0644, mtime 0, owner 0:0)::

    manifest.json        Manifest: identity, profile, runtime, I/O schema, files, provenance
    golden.json          golden vectors for the on-device self-test
    model/<artifact>     the model (model.onnx, model.tflite, or OpenVINO IR model.xml + model/model.bin)
    model/model.onnx.data  the ONNX model's external data, when its source kept weights external
                         (read by onnxruntime from beside model.onnx; hashed like every member)
    report.json          the validation report written at build time

The manifest lists the sha256 and size of every other member. Bundles are deterministic:
the same inputs give byte-identical files. Reading is safe by construction: only regular
files listed in the manifest are accepted, each checked for size and sha256 while streaming,
with a cap on the total; links, devices, absolute paths and `..` are refused. There is one
reader, the streaming pass in :mod:`edgeops.trust.verify`; :func:`read_bundle` and
:func:`extract_bundle` below are that pass with an in-memory or a folder destination.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Annotated, BinaryIO, Literal

from edgeops.schema import Meta, Schema, SchemaError, field

from edgeops.errors import BundleError
from edgeops.sketch import Reference

BUNDLE_FORMAT = 1
MANIFEST_NAME = "manifest.json"
GOLDEN_NAME = "golden.json"
REPORT_NAME = "report.json"
MAX_MANIFEST_BYTES = 1 << 20
DEFAULT_MAX_TOTAL_BYTES = 4 << 30


class TensorSpec(Schema):
    """One model input or output: name, element type and shape (ints, or strings for dynamic dims)."""

    name: str
    dtype: str
    shape: list[int | str]


class FileEntry(Schema):
    """Hash and size of one bundle member."""

    sha256: Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$")]
    size: Annotated[int, Meta(ge=0)]


class Provenance(Schema):
    """Where the bundle came from, so a build can be reproduced and audited."""

    source_model_sha256: str
    source_format: Literal["onnx", "pytorch", "torchscript", "exported-program", "tflite"]
    calibration_sha256: str | None = None
    validation_sha256: str | None = None
    toolchain: dict[str, str] = field(default_factory=dict)
    git_commit: str | None = None
    options: dict[str, str | int | float | bool | None] = field(default_factory=dict)


class ManifestBudgets(Schema):
    """The profile budgets the device checks during self-test and probation."""

    latency_p95_ms: float
    max_memory_mb: float | None = None


class Manifest(Schema):
    """manifest.json of a bundle.

    ``release`` is the monotonic release counter (devices refuse a lower one); ``artifact``
    the path of the model file inside the bundle.
    """

    format: Literal[1] = BUNDLE_FORMAT
    name: Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    version: Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9.+_-]{0,63}$")]
    release: Annotated[int, Meta(ge=0)]
    profile: str
    profile_sha256: str = ""
    runtime: Literal["onnxruntime", "litert", "openvino"]
    providers: list[str]
    artifact: str
    # How the device must run the model where the profile leaves it to the packager: for OpenVINO
    # the device, the inference precision the validation used (f32 / bf16) and the performance hint.
    runtime_options: dict[str, str] = field(default_factory=dict)
    quantization: str
    task: Literal["classifier", "generic"] = "generic"
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    budgets: ManifestBudgets
    files: dict[str, FileEntry]
    provenance: Provenance
    # Drift reference (edgeops.sketch): sketches of each input and output from the validation
    # data. Left out of the JSON when absent, so bundles without one read as before.
    monitoring: Reference | None = None

    def to_json_bytes(self) -> bytes:
        """Deterministic JSON encoding."""
        doc = self.to_dict()
        if doc.get("monitoring") is None:
            doc.pop("monitoring", None)
        return json.dumps(doc, sort_keys=True, indent=2).encode() + b"\n"

    @classmethod
    def from_json_bytes(cls, raw: bytes, source: str = "manifest.json") -> "Manifest":
        """Parse and validate manifest bytes; errors name the field."""
        try:
            return cls.parse_json(raw)
        except SchemaError as e:
            raise BundleError(f"{source}: invalid manifest field '{e.key}': {e.message}") from e


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of bytes."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _tar_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def write_bundle(out_path: str | Path, manifest: Manifest, payload: dict[str, bytes]) -> Path:
    """Write a bundle atomically. ``payload`` maps member paths to bytes; the manifest's
    ``files`` must already describe them exactly (see :func:`describe_files`)."""
    expected = describe_files(payload)
    if manifest.files != expected:
        raise BundleError("manifest.files does not match the payload; build it with describe_files()")
    for name in payload:
        _check_member_name(name)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    order = [GOLDEN_NAME] if GOLDEN_NAME in payload else []
    order += sorted(n for n in payload if n != GOLDEN_NAME)
    with open(tmp, "wb") as raw:
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            mbytes = manifest.to_json_bytes()
            tar.addfile(_tar_info(MANIFEST_NAME, len(mbytes)), io.BytesIO(mbytes))
            for name in order:
                tar.addfile(_tar_info(name, len(payload[name])), io.BytesIO(payload[name]))
        raw.flush()
        os.fsync(raw.fileno())
    os.replace(tmp, out_path)
    return out_path


def describe_files(payload: dict[str, bytes]) -> dict[str, FileEntry]:
    """The manifest's ``files`` for a payload: sha256 and size of every member."""
    return {name: FileEntry(sha256=sha256_bytes(data), size=len(data)) for name, data in sorted(payload.items())}


def _check_member_name(name: str) -> None:
    p = PurePosixPath(name)
    if not name or p.is_absolute() or ".." in p.parts or "\\" in name or name != str(p) or "\x00" in name:
        raise BundleError(f"bundle member name {name!r} is not a plain relative path")


@dataclass
class BundleContents:
    """A bundle read into memory or extracted: its manifest and the files it holds."""

    manifest: Manifest
    files: dict[str, bytes]


def read_bundle(source: str | Path | BinaryIO, max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES) -> BundleContents:
    """Read and check a bundle in memory (for inspect and small bundles).

    The same one-pass reader the device installs with (:mod:`edgeops.trust.verify`): every
    member is checked against the manifest while it streams; BundleError names what is wrong.
    """
    from edgeops.trust.verify import MemorySink, read_verified

    sink = MemorySink()
    verdict = read_verified(source, sink=sink, max_total_bytes=max_total_bytes)
    return BundleContents(manifest=verdict.manifest, files=sink.files)


def extract_bundle(source: str | Path | BinaryIO, dest: str | Path, max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES) -> Manifest:
    """Safely extract a bundle into ``dest`` (created; must not exist yet), verifying every file.

    Only regular files listed in the manifest are written, each checked for size and sha256
    while streaming (the one reader, :func:`edgeops.trust.verify.extract_verified`), into
    ``<dest>.partial`` that becomes ``dest`` with one rename. On any error nothing is left at
    ``dest``.
    """
    from edgeops.trust.verify import extract_verified

    dest = Path(dest)
    if dest.exists():
        raise BundleError(f"{dest}: extraction target already exists")
    staging = dest.with_name(dest.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    manifest = extract_verified(source, staging, max_total_bytes=max_total_bytes).manifest
    try:
        os.replace(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest
