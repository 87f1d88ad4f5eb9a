"""PyTorch architectures for the packager corpus: torchvision-style and transformers models.

Each factory builds a real architecture from a transformers config with random weights (seeded,
so every run gives the same model), offline: no hub download (``HF_HUB_OFFLINE=1``), no
pretrained checkpoint. torchvision cannot be installed beside this torch, so the torchvision
classics (ResNet, MobileNetV2, ConvNeXt, ViT) come from transformers' implementations of the
same papers. Each factory returns ``(module, example_inputs)``: what `edgeops build
bench.corpus_torch:NAME` takes (run from the repository root, or with it on PYTHONPATH).

The modules are thin wrappers that return the logits tensor (transformers models return a
``ModelOutput``) and name the inputs as the model card does (``pixel_values``, ``input_ids``,
``attention_mask``).

:data:`ENTRIES` lists them for bench/corpus.py: name, factory, input shape(s) and dtypes, source,
licence, task.
"""

from __future__ import annotations

import os
import sys

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a model hub, even by accident
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

SEED = 0
IMAGE_SHAPE = (1, 3, 224, 224)
TEXT_LENGTH = 32
VOCAB = 30522  # bert-base-uncased's vocabulary size: valid token ids are 0..30521


def _torch():
    import torch

    return torch


class _Logits(_torch().nn.Module):
    """Wraps a transformers image classifier: ``pixel_values`` in, logits out."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return self.model(pixel_values=pixel_values).logits


class _TextLogits(_torch().nn.Module):
    """Wraps a transformers sequence classifier: ``input_ids`` (int64) and ``attention_mask``, logits out."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def calibrate_batchnorm(module, shape, batches: int = 4, batch: int = 8):
    """Set BatchNorm running statistics from random inputs of ``shape`` (C, H, W), then eval mode.

    transformers initializes weights with std 0.02 and BatchNorm statistics to mean 0 / var 1, so
    a deep random-weight conv net shrinks its activations layer after layer (MobileNetV2's logits
    come out near 1e-25): nothing a quantizer can represent. A trained net's BatchNorm keeps each
    layer's output normalized; recomputing the statistics on inputs does the same here, so the
    random-weight net has activations of a realistic scale.
    """
    torch = _torch()
    norms = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return module.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    gen = torch.Generator().manual_seed(SEED + 1)
    module.train()
    with torch.no_grad():
        for _ in range(batches):
            module(torch.randn(batch, *shape, generator=gen))
    return module.eval()


def _image(model_cls, config, shape=IMAGE_SHAPE):
    torch = _torch()
    torch.manual_seed(SEED)
    module = calibrate_batchnorm(_Logits(model_cls(config)), shape[1:])
    example = torch.randn(*shape, generator=torch.Generator().manual_seed(SEED))
    return module, (example,)


def resnet18():
    """ResNet-18 (He et al. 2015; torchvision.models.resnet18's layout): basic blocks [2, 2, 2, 2], 11.7 M parameters."""
    from transformers import ResNetConfig, ResNetForImageClassification

    return _image(ResNetForImageClassification, ResNetConfig(embedding_size=64, hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2],
                                                               layer_type="basic", num_labels=1000))


def resnet101():
    """ResNet-101: bottleneck blocks [3, 4, 23, 3], 44.5 M parameters (178 MB in float32: the corpus's model over 100 MB)."""
    from transformers import ResNetConfig, ResNetForImageClassification

    return _image(ResNetForImageClassification, ResNetConfig(depths=[3, 4, 23, 3], layer_type="bottleneck", num_labels=1000))


def mobilenet_v2():
    """MobileNetV2 1.0 at 224 (Sandler et al. 2018), 3.5 M parameters."""
    from transformers import MobileNetV2Config, MobileNetV2ForImageClassification

    return _image(MobileNetV2ForImageClassification, MobileNetV2Config(num_labels=1000))


def convnext_tiny():
    """ConvNeXt-T (Liu et al. 2022): depths [3, 3, 9, 3], widths [96, 192, 384, 768], 28.6 M parameters."""
    from transformers import ConvNextConfig, ConvNextForImageClassification

    return _image(ConvNextForImageClassification, ConvNextConfig(num_labels=1000))


def vit_small():
    """ViT-S/16 (Dosovitskiy et al. 2020; DeiT-S sizes): 12 layers, width 384, 6 heads, 22 M parameters."""
    from transformers import ViTConfig, ViTForImageClassification

    return _image(ViTForImageClassification, ViTConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536, num_labels=1000))


def resnet_small():
    """A ResNet-10 at 64x64 (basic blocks [1, 1, 1, 1], widths 32..256), 1.2 M parameters: quick to build, for tests."""
    from transformers import ResNetConfig, ResNetForImageClassification

    return _image(ResNetForImageClassification, ResNetConfig(embedding_size=32, hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 1, 1], layer_type="basic",
                                                               num_labels=10), shape=(1, 3, 64, 64))


DIGITS_CLASSES = 10


def digits_photos(images: np.ndarray, rng) -> np.ndarray:
    """scikit-learn's 8x8 digits (float [N, 1, 8, 8] in [0, 1]) as 224x224 colour photos: each digit
    scaled to 120-200 px at a random place, on a random background level, in a random tint,
    ImageNet-normalized NCHW float32 (what a torchvision-style classifier takes)."""
    torch = _torch()
    n, size = len(images), IMAGE_SHAPE[2]
    out = np.empty((n, 3, size, size), np.float32)
    mean = np.asarray((0.485, 0.456, 0.406), np.float32)[:, None, None]
    std = np.asarray((0.229, 0.224, 0.225), np.float32)[:, None, None]
    with torch.no_grad():
        for i in range(n):
            side = int(rng.integers(120, 201))
            digit = torch.nn.functional.interpolate(torch.from_numpy(images[i : i + 1]), size=(side, side), mode="bilinear", align_corners=False)[0, 0].numpy()
            y, x = rng.integers(0, size - side + 1, 2)
            canvas = np.zeros((size, size), np.float32)
            canvas[y : y + side, x : x + side] = digit
            background, tint = rng.uniform(0.0, 0.3), rng.uniform(0.6, 1.0, 3).astype(np.float32)[:, None, None]
            out[i] = background + (tint - background) * canvas[None]
    return (out - mean) / std


def mobilenet_v2_digits(epochs: int = 3, train_images: int = 768, target_accuracy: float = 0.9, max_epochs: int = 10):
    """MobileNetV2 1.0 at 224 (10 classes) trained here on scikit-learn's digits rendered as 224x224
    colour photos (:func:`digits_photos`): a MobileNetV2 with a trained classifier's confident
    logits, without hub weights. A random-weight MobileNetV2 has near-equal logits, so every int8
    path, peers' included, fails the top-1 agreement gate on it and nothing about int8 speed can be
    shown. Training runs at least ``epochs`` epochs, then until ``target_accuracy`` on 200 training-split
    digits it never trained on (not the validation split the benchmarks score), at most ``max_epochs``:
    a fixed 3 epochs reached 0.745 held-out on one host and 0.23 on another (torch's CPU kernels
    differ, and so does the run). Minutes on 2 cores; the weights are cached in the corpus cache."""
    import hashlib

    from transformers import MobileNetV2Config, MobileNetV2ForImageClassification

    from edgeops.converters.samples import digits_arrays

    torch = _torch()
    config = MobileNetV2Config(num_labels=DIGITS_CLASSES)
    key = hashlib.sha256(f"{config.to_json_string()}|{epochs}|{train_images}|{target_accuracy}|{max_epochs}|{SEED}".encode()).hexdigest()[:12]
    try:
        from corpus import cache_dir  # bench/ on sys.path (bench scripts, the corpus)
    except ImportError:
        from bench.corpus import cache_dir  # `edgeops build bench.corpus_torch:...` from the repository root

    cached = cache_dir() / "models" / f"mobilenet-v2-digits-{key}.pt"
    torch.manual_seed(SEED)
    module = _Logits(MobileNetV2ForImageClassification(config))
    if cached.exists():
        module.load_state_dict(torch.load(cached, weights_only=True))
    else:
        x_train, y_train, _, _, _ = digits_arrays(size=8, seed=SEED)
        rng = np.random.default_rng(SEED)
        opt = torch.optim.AdamW(module.parameters(), lr=2e-3)
        check = x_train[train_images : train_images + 200], y_train[train_images : train_images + 200]
        for epoch in range(1, max_epochs + 1):
            module.train()
            order = rng.permutation(train_images)
            for b in range(0, train_images, 32):
                idx = order[b : b + 32]
                x = torch.from_numpy(digits_photos(x_train[idx], rng))
                loss = torch.nn.functional.cross_entropy(module(x), torch.from_numpy(y_train[idx]))
                opt.zero_grad()
                loss.backward()
                opt.step()
            if epoch >= epochs:
                accuracy = _accuracy(module, *check)
                print(f"mobilenet-v2-digits: epoch {epoch}, accuracy {accuracy:.3f} on 200 unseen training-split digits", file=sys.stderr)
                if accuracy >= target_accuracy:
                    break
        cached.parent.mkdir(parents=True, exist_ok=True)
        torch.save(module.state_dict(), cached)
    module.eval()
    example = torch.from_numpy(digits_photos(digits_arrays(size=8, seed=SEED)[2][:1], np.random.default_rng(SEED)))
    return module, (example,)


def _accuracy(module, images: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of ``module`` (eval mode) on ``images`` rendered as photos with a fixed seed."""
    torch = _torch()
    module.eval()
    photos = digits_photos(images, np.random.default_rng(SEED + 2))
    with torch.no_grad():
        predicted = np.concatenate([module(torch.from_numpy(photos[i : i + 50])).argmax(1).numpy() for i in range(0, len(photos), 50)])
    return float(np.mean(predicted == labels))


def digits_photo_data(count: int, rng) -> dict:
    """``count`` held-out digits (never trained on) as :func:`digits_photos`, with their labels."""
    from edgeops.converters.samples import digits_arrays

    _, _, x_val, y_val, _ = digits_arrays(size=8, seed=SEED)
    idx = rng.integers(0, len(x_val), count)
    return {"pixel_values": digits_photos(x_val[idx], rng), "labels": y_val[idx]}


def mobilenet_v2_small():
    """MobileNetV2 0.35 at 96x96 (a size the MobileNetV2 paper evaluates), 0.4 M parameters: quick to build, for tests."""
    from transformers import MobileNetV2Config, MobileNetV2ForImageClassification

    return _image(MobileNetV2ForImageClassification, MobileNetV2Config(depth_multiplier=0.35, image_size=96, num_labels=10), shape=(1, 3, 96, 96))


def _bert(hidden: int, layers: int, heads: int, intermediate: int, vocab: int = VOCAB):
    from transformers import BertConfig, BertForSequenceClassification

    torch = _torch()
    torch.manual_seed(SEED)
    config = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=intermediate,
                        num_labels=2, attn_implementation="eager")
    module = _TextLogits(BertForSequenceClassification(config)).eval()
    gen = torch.Generator().manual_seed(SEED)
    input_ids = torch.randint(0, vocab, (1, TEXT_LENGTH), generator=gen, dtype=torch.int64)
    attention_mask = torch.ones(1, TEXT_LENGTH, dtype=torch.int64)
    attention_mask[:, TEXT_LENGTH * 3 // 4:] = 0  # a padded tail, as a real batch has
    return module, (input_ids, attention_mask)


def bert_mini():
    """BERT-mini (Turc et al. 2019 sizes): 4 layers, width 256, 4 heads, bert-base's 30522-token vocabulary, 11 M parameters."""
    return _bert(256, 4, 4, 1024)


def bert_tiny():
    """BERT-tiny (Turc et al. 2019 sizes): 2 layers, width 128, 2 heads, bert-base's vocabulary, 4.4 M parameters: quick to build, for tests."""
    return _bert(128, 2, 2, 512)


def bert_base():
    """BERT-base (Devlin et al. 2018): 12 layers, width 768, 12 heads, 110 M parameters (438 MB in float32)."""
    return _bert(768, 12, 12, 3072)


_HF = "transformers (Hugging Face) implementation, random weights from the config, no download"
_IMAGE_INPUT = [{"name": "pixel_values", "shape": list(IMAGE_SHAPE), "dtype": "float32", "what": "RGB image, ImageNet-normalized, NCHW"}]
_TEXT_INPUTS = [
    {"name": "input_ids", "shape": [1, TEXT_LENGTH], "dtype": "int64", "what": f"token ids in 0..{VOCAB - 1}"},
    {"name": "attention_mask", "shape": [1, TEXT_LENGTH], "dtype": "int64", "what": "1 for tokens, 0 for padding"},
]

ENTRIES: list[dict] = [
    {"name": "resnet18", "factory": "bench.corpus_torch:resnet18", "input_shape": list(IMAGE_SHAPE), "inputs": _IMAGE_INPUT,
     "source": f"ResNet-18 architecture (torchvision layout), {_HF}", "licence": "Apache-2.0 (transformers)", "task": "image classification", "conv_net": True},
    {"name": "resnet101", "factory": "bench.corpus_torch:resnet101", "input_shape": list(IMAGE_SHAPE), "inputs": _IMAGE_INPUT,
     "source": f"ResNet-101 architecture, {_HF}; 178 MB", "licence": "Apache-2.0 (transformers)", "task": "image classification", "conv_net": True},
    {"name": "mobilenet-v2", "factory": "bench.corpus_torch:mobilenet_v2", "input_shape": list(IMAGE_SHAPE), "inputs": _IMAGE_INPUT,
     "source": f"MobileNetV2 1.0/224, {_HF}", "licence": "Apache-2.0 (transformers)", "task": "image classification", "conv_net": True},
    {"name": "mobilenet-v2-digits", "factory": "bench.corpus_torch:mobilenet_v2_digits", "input_shape": list(IMAGE_SHAPE), "inputs": _IMAGE_INPUT,
     "data": "digits_photo", "source": "MobileNetV2 1.0/224 (transformers implementation), 10 classes, trained here (3 to 10 epochs, until 0.9 top-1 on unseen digits) on 768 of scikit-learn's digits "
     "rendered as 224x224 colour photos (no download)", "licence": "Apache-2.0 (transformers); digits: BSD-3-Clause (scikit-learn)",
     "task": "image classification (10 digits)", "conv_net": True, "notes": "trained by bench/corpus_torch.py, weights cached in the corpus cache"},
    {"name": "convnext-tiny", "factory": "bench.corpus_torch:convnext_tiny", "input_shape": list(IMAGE_SHAPE), "inputs": _IMAGE_INPUT,
     "source": f"ConvNeXt-T, {_HF}", "licence": "Apache-2.0 (transformers)", "task": "image classification", "conv_net": True},
    {"name": "vit-small", "factory": "bench.corpus_torch:vit_small", "input_shape": list(IMAGE_SHAPE), "inputs": _IMAGE_INPUT,
     "source": f"ViT-S/16, {_HF}", "licence": "Apache-2.0 (transformers)", "task": "image classification", "conv_net": False},
    {"name": "bert-mini", "factory": "bench.corpus_torch:bert_mini", "input_shape": [1, TEXT_LENGTH], "inputs": _TEXT_INPUTS,
     "source": f"BERT-mini sizes, {_HF}", "licence": "Apache-2.0 (transformers)", "task": "text classification (2 labels)", "conv_net": False},
    {"name": "bert-base", "factory": "bench.corpus_torch:bert_base", "input_shape": [1, TEXT_LENGTH], "inputs": _TEXT_INPUTS,
     "source": f"BERT-base, {_HF}; 438 MB", "licence": "Apache-2.0 (transformers)", "task": "text classification (2 labels)", "conv_net": False},
]
