"""Image encoders: decoding of every awkward input, preprocessing, outputs, offline weights."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fusionkit.encoders import EncoderUnavailableError, InputError, build_encoder
from fusionkit.encoders import image as image_mod
from fusionkit.encoders.image import decode_image, decode_image_tensor, resize_crop


def png_bytes(width: int, height: int, bit_depth: int, color_type: int, raw_rows: bytes | None) -> bytes:
    """A PNG written by hand (16-bit RGB, or a header claiming absurd dimensions)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    idat = zlib.compress(raw_rows if raw_rows is not None else b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def tiny_enc():
    """Random-init EfficientNet-Lite0 at 32 px: fast, same code path as the real one."""
    return build_encoder("image", "efficientnet_lite0", weights=None, image_size=32)


# ------------------------------------------------------------------------------- decoding
def test_grayscale_becomes_equal_rgb_channels(tmp_path):
    p = tmp_path / "g.png"
    Image.fromarray(np.full((10, 12), 77, np.uint8), "L").save(p)
    a = np.asarray(decode_image(p))
    assert a.shape == (10, 12, 3) and (a == 77).all()


def test_alpha_is_composited_on_white_not_dropped(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)  # black, fully transparent...
    rgba[:, 4:] = (0, 0, 0, 255)  # ...left half; right half opaque black
    rgba[0, 0] = (200, 0, 0, 128)  # half-transparent red
    p = tmp_path / "a.png"
    Image.fromarray(rgba, "RGBA").save(p)
    a = np.asarray(decode_image(p)).astype(int)
    assert (a[1:, :4] == 255).all(), "transparent pixels must be white, not their stored black"
    assert (a[:, 4:] == 0).all()
    assert abs(a[0, 0, 0] - (200 * 128 + 255 * 127) / 255) <= 1 and abs(a[0, 0, 1] - 127) <= 1


def test_palette_with_transparency_and_la(tmp_path):
    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    pal.info["transparency"] = 1
    pal.save(tmp_path / "p.png", transparency=1)
    assert (np.asarray(decode_image(tmp_path / "p.png")) == 255).all()
    Image.fromarray(np.dstack([np.full((4, 4), 50, np.uint8), np.full((4, 4), 255, np.uint8)]), "LA").save(
        tmp_path / "la.png"
    )
    assert (np.asarray(decode_image(tmp_path / "la.png")) == 50).all()


def test_cmyk_jpeg_converts_to_rgb(tmp_path):
    p = tmp_path / "c.jpg"
    Image.new("CMYK", (16, 16), (255, 0, 0, 0)).save(p, quality=100)  # pure cyan
    r, g, b = np.asarray(decode_image(p))[8, 8].astype(int)
    assert r < 30 and g > 225 and b > 225


def test_16bit_grayscale_png_is_scaled_not_clipped(tmp_path):
    a16 = np.array([[0, 257, 32896, 65535]], np.uint16)
    p = tmp_path / "g16.png"
    Image.fromarray(a16).save(p)
    assert Image.open(p).mode.startswith("I")
    out = np.asarray(decode_image(p))[0, :, 0]
    assert out.tolist() == [0, 1, 128, 255]  # PIL's own convert("L") would give [0, 255, 255, 255]


def test_16bit_rgb_png(tmp_path):
    px = np.array([[[65535, 0, 32768], [257, 65535, 0]]], dtype=">u2")  # 1 x 2 pixels
    rows = b"".join(b"\0" + row.tobytes() for row in px)
    p = tmp_path / "rgb16.png"
    p.write_bytes(png_bytes(2, 1, 16, 2, rows))
    out = np.asarray(decode_image(p))
    assert out.tolist() == [[[255, 0, 128], [1, 255, 0]]]


@pytest.mark.parametrize("decode", [decode_image, decode_image_tensor])
@pytest.mark.parametrize(
    "name, content, expected",
    [
        ("garbage.jpg", b"this is not an image at all", "not a readable image"),
        ("fake.jpg", b"\xff\xd8\xff\xe0 not really a jpeg", "not a readable image|corrupt"),
        ("empty.png", b"", "not a readable image"),
        ("empty.jpg", b"", "not a readable image"),
        ("missing.jpg", None, "not found"),
    ],
)
def test_unreadable_images_name_the_file(tmp_path, decode, name, content, expected):
    p = tmp_path / name
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(InputError, match=expected) as e:
        decode(p)
    assert str(p) in str(e.value)


def test_truncated_jpeg_is_reported(tmp_path):
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    p = tmp_path / "cut.jpg"
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(InputError, match="truncated") as e:
        decode_image(p)
    assert str(p) in str(e.value)


def test_decompression_bomb_is_refused(tmp_path):
    p = tmp_path / "bomb.png"
    p.write_bytes(png_bytes(100_000, 100_000, 8, 0, None))  # 10 gigapixels claimed by a tiny file
    with pytest.raises(InputError, match="decompression bomb") as e:
        decode_image(p)
    assert str(p) in str(e.value)


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (20, 10), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 on display
    img.save(tmp_path / "o.jpg", exif=exif.tobytes())
    assert decode_image(tmp_path / "o.jpg").size == (10, 20)


def test_large_jpeg_draft_keeps_at_least_the_resize_size(tmp_path):
    p = tmp_path / "big.jpg"
    Image.new("RGB", (2000, 1500), (10, 200, 30)).save(p)
    img = decode_image(p, resize_size=256)
    assert min(img.size) >= 256 and img.size[0] < 2000


@pytest.mark.parametrize("size", [(150, 200), (500, 375), (224, 224), (100, 60)])
@pytest.mark.parametrize("interp", ["bilinear", "bicubic"])
def test_resize_crop_matches_torchvision_on_pil(size, interp):
    """The tensor resize gives what torchvision's Resize + CenterCrop give on the PIL image."""
    from torchvision.transforms import v2

    rng = np.random.default_rng(1)
    a = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
    ours = resize_crop(torch.from_numpy(a).permute(2, 0, 1), 256, 224, interp).permute(1, 2, 0).numpy().astype(int)
    mode = v2.InterpolationMode.BILINEAR if interp == "bilinear" else v2.InterpolationMode.BICUBIC
    ref = np.asarray(v2.CenterCrop(224)(v2.Resize(256, interpolation=mode)(Image.fromarray(a)))).astype(int)
    assert ours.shape == ref.shape == (224, 224, 3)
    assert np.abs(ours - ref).max() <= 2 and np.abs(ours - ref).mean() < 0.05  # rounding only


@pytest.mark.parametrize("size", [(150, 200), (375, 500), (60, 100), (10, 20)])
@pytest.mark.parametrize("interp", ["bilinear", "bicubic"])
@pytest.mark.parametrize("hwc", [True, False])
def test_resize_crop_is_torchvisions_tensor_resize_and_crop(size, interp, hwc):
    from torchvision.transforms import v2

    rng = np.random.default_rng(4)
    a = torch.from_numpy(rng.integers(0, 255, (*size, 3), dtype=np.uint8))
    x = a.permute(2, 0, 1) if hwc else a.permute(2, 0, 1).contiguous()
    mode = v2.InterpolationMode.BILINEAR if interp == "bilinear" else v2.InterpolationMode.BICUBIC
    for crop in (28, 40):  # 40: larger than the resized image's shorter side, zero-padded
        ref = v2.functional.center_crop(v2.functional.resize(x, 32, interpolation=mode, antialias=True), [crop, crop])
        out = resize_crop(x, 32, crop, interp)
        assert out.shape == ref.shape == (3, crop, crop) and out.dtype == torch.uint8
        assert torch.equal(out, ref)


def test_resize_crop_pads_when_the_crop_is_larger():
    x = torch.full((3, 10, 20), 200, dtype=torch.uint8)
    out = resize_crop(x, 16, 24, "bilinear")  # 16x32 after resizing, 24x24 crop: 4 rows of padding each side
    assert out.shape == (3, 24, 24)
    assert (out[:, :4] == 0).all() and (out[:, -4:] == 0).all() and (out[:, 4:20] == 200).all()


def _jpeg(path: Path, arr: np.ndarray, **save) -> Path:
    Image.fromarray(arr).save(path, "JPEG", quality=90, **save)
    return path


@pytest.mark.parametrize("kind", ["rgb", "gray", "progressive", "exif_rotated", "cmyk", "large", "png", "rgba_png"])
def test_tensor_decode_gives_the_pil_pixels(tmp_path, monkeypatch, kind):
    """Plain JPEGs take libjpeg-turbo through torchvision, the rest PIL: the pixels are the same."""
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)
    if kind == "rgb":
        p = _jpeg(tmp_path / "a.jpg", rgb)
    elif kind == "gray":
        p = _jpeg(tmp_path / "a.jpg", rgb[..., 0])
    elif kind == "progressive":
        p = _jpeg(tmp_path / "a.jpg", rgb, progressive=True)
    elif kind == "exif_rotated":
        exif = Image.Exif()
        exif[0x0112] = 6
        p = _jpeg(tmp_path / "a.jpg", rgb, exif=exif.tobytes())
    elif kind == "cmyk":
        p = tmp_path / "a.jpg"
        Image.fromarray(rgb).convert("CMYK").save(p, "JPEG")
    elif kind == "large":
        p = _jpeg(tmp_path / "a.jpg", np.kron(rgb, np.ones((30, 30, 1), np.uint8)))  # 2400x1800
    elif kind == "png":
        p = tmp_path / "a.png"
        Image.fromarray(rgb).save(p)
    else:
        p = tmp_path / "a.png"
        Image.fromarray(np.dstack([rgb, rng.integers(0, 255, (60, 80), dtype=np.uint8)]), "RGBA").save(p)
    fast = kind in ("rgb", "gray", "progressive", "exif_rotated")
    decoder, calls = image_mod._jpeg_decoder(), []
    assert decoder is not None, "TorchCodec is a pinned dependency"
    monkeypatch.setattr(image_mod, "_JPEG_DECODER", [lambda *a, **k: calls.append(1) or decoder(*a, **k)])
    got = decode_image_tensor(p, 256)
    assert len(calls) == fast
    ref = torch.from_numpy(np.array(decode_image(p, 256))).permute(2, 0, 1)
    assert got.dtype == torch.uint8 and got.shape == ref.shape
    assert torch.equal(got, ref)
    if kind == "exif_rotated":
        assert got.shape[1:] == (80, 60)
    if kind == "large":
        assert min(got.shape[1:]) >= 256 and got.shape[2] < 2400  # PIL's DCT scaling


def test_tensor_decode_without_torchcodec_falls_back_to_pil(tmp_path, monkeypatch):
    p = _jpeg(tmp_path / "a.jpg", np.random.default_rng(3).integers(0, 255, (40, 50, 3), dtype=np.uint8))
    fast = decode_image_tensor(p, 256)
    monkeypatch.setattr(image_mod, "_JPEG_DECODER", [None])
    assert torch.equal(decode_image_tensor(p, 256), fast)


@pytest.mark.parametrize("cut", [0.5, 0.9])
def test_tensor_decode_reports_truncated_and_corrupt_jpegs(tmp_path, cut):
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    data = buf.getvalue()
    p = tmp_path / "cut.jpg"
    p.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(InputError, match="truncated") as e:
        decode_image_tensor(p, 256)
    assert str(p) in str(e.value)
    q = tmp_path / "garbled.jpg"  # a valid header, then noise where the scan data should be
    head = data.index(b"\xff\xda") + 20
    q.write_bytes(data[:head] + rng.integers(0, 255, len(data) - head, dtype=np.uint8).tobytes()[:-2] + b"\xff\xd9")
    try:
        out = decode_image_tensor(q, 256)  # libjpeg recovers from some corruption, as PIL does...
        assert out.shape == (3, 64, 64)
    except InputError as err:  # ...or it is reported with the file
        assert str(q) in str(err)


def test_tensor_decode_refuses_a_decompression_bomb_jpeg(tmp_path, monkeypatch):
    p = _jpeg(tmp_path / "bomb.jpg", np.zeros((100, 100, 3), np.uint8))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 10,000 pixels > 2x the limit: an error
    with pytest.raises(InputError, match="decompression bomb") as e:
        decode_image_tensor(p, 256)
    assert str(p) in str(e.value)


# ------------------------------------------------------------------------------- encoder
def test_load_collate_forward_shapes(tiny_enc, tmp_path):
    for i, size in enumerate([(40, 30), (30, 50)]):
        Image.new("RGB", size, (i * 50, 20, 30)).save(tmp_path / f"{i}.jpg")
    items = [tiny_enc.load(f"{i}.jpg", tmp_path) for i in range(2)]
    assert items[0].shape == (3, 32, 32) and items[0].dtype == torch.uint8
    batch = tiny_enc.collate(items)
    assert batch.is_contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        out = tiny_enc(batch)
    assert out["pooled"].shape == (2, 1280)
    assert out["grid"].shape == (2, 1, 1280)  # 32 px -> 1x1 feature map
    assert torch.allclose(out["pooled"], out["grid"].mean(1))
    # uint8 and float [0, 1] inputs are the same input
    with torch.inference_mode():
        out_f = tiny_enc(batch.float() / 255)
    assert torch.allclose(out["pooled"], out_f["pooled"], atol=1e-5)


def test_channels_last_gives_the_same_features(tiny_enc, tmp_path):
    x = torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8)
    with torch.inference_mode():
        a = tiny_enc(x)["pooled"]
    tiny_enc.set_memory_format(torch.channels_last)
    with torch.inference_mode():
        b = tiny_enc(x)["pooled"]
    tiny_enc.set_memory_format(torch.contiguous_format)
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


def test_identity_is_stable_and_tracks_weights():
    a = build_encoder("image", "efficientnet_lite0", weights=None, image_size=32, seed=0)
    b = build_encoder("image", "efficientnet_lite0", weights=None, image_size=32, seed=0)
    c = build_encoder("image", "efficientnet_lite0", weights=None, image_size=32, seed=1)
    assert a.identity() == b.identity() and a.identity_hash() != c.identity_hash()
    assert torch.equal(a.net._conv_stem.weight, b.net._conv_stem.weight)
    a.to(memory_format=torch.channels_last)  # moving is not modifying
    assert a.identity_hash() == b.identity_hash()
    with torch.no_grad():
        a.net._conv_head.weight.mul_(1.01)  # as an optimiser step would
    assert a.identity()["weights"].startswith("state:") and a.identity_hash() != b.identity_hash()


def test_freeze_unfreeze_last_blocks():
    enc = build_encoder("image", "efficientnet_lite0", weights=None, image_size=32)
    enc.freeze()
    assert enc.frozen
    enc.train()
    assert not any(m.training for m in enc.modules()), "a frozen encoder stays in eval mode"
    enc.unfreeze(last_n_blocks=2)
    trainable = {n for n, p in enc.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("net._conv_head", "net._bn1", "net._blocks.15.")) for n in trainable)
    enc.train()
    assert enc.net._bn1.training and not enc.net._bn0.training and not enc.net._blocks[0]._bn1.training
    x = torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8)
    enc(x)["pooled"].sum().backward()
    assert enc.net._conv_head.weight.grad is not None and enc.net._conv_stem.weight.grad is None
    enc.unfreeze()
    assert all(p.requires_grad for p in enc.parameters())
    enc.train()
    assert enc.net._bn0.training
    with pytest.raises(ValueError, match="blocks"):
        enc.unfreeze(last_n_blocks=99)


# ------------------------------------------------------------------------------- torchvision
@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    return hub


def test_torchvision_weights_missing_offline_says_how_to_get_them(empty_hub):
    with pytest.raises(EncoderUnavailableError) as e:
        build_encoder("image", "resnet18")
    msg = str(e.value)
    assert "resnet18" in msg and str(empty_hub) in msg and "weights=None" in msg and "never downloads" in msg


def test_torchvision_weights_from_local_cache(empty_hub, monkeypatch):
    import torchvision

    w = torchvision.models.ResNet18_Weights.DEFAULT
    ref = torchvision.models.resnet18(weights=None)
    path = empty_hub / "checkpoints" / Path(w.url).name
    path.parent.mkdir(parents=True)
    torch.save(ref.state_dict(), path)
    with pytest.raises(EncoderUnavailableError, match="does not match"):  # hash in the file name checked
        build_encoder("image", "resnet18")
    prefix = path.name.rsplit("-", 1)[1].split(".")[0]
    monkeypatch.setattr(image_mod, "file_sha256", lambda p: prefix + "0" * 56)
    enc = build_encoder("image", "resnet18")
    assert torch.equal(enc.net.conv1.weight, ref.conv1.weight)
    assert enc.identity()["weights"].startswith(f"{w}:sha256:{prefix}")


@pytest.mark.parametrize(
    "name, crop, grid_len, dim, mean0",
    [
        ("resnet18", 224, 49, 512, 0.485),
        ("resnet50", 224, 49, 2048, 0.485),
        ("mobilenet_v3_small", 224, 49, 576, 0.485),
        ("mobilenet_v3_large", 224, 49, 960, 0.485),
        ("inception_v3", 299, 64, 2048, 0.5),
        ("vit_b_16", 224, 196, 768, 0.485),
    ],
)
def test_torchvision_random_init(name, crop, grid_len, dim, mean0):
    enc = build_encoder("image", name, weights=None, seed=0)
    assert enc.crop_size == crop and enc.preprocessing()["mean"][0] == mean0
    assert enc.identity()["weights"].startswith("random:0")
    assert enc.dims == {"pooled": dim, "grid": dim}
    x = torch.randint(0, 255, (1, 3, crop, crop), dtype=torch.uint8)
    with torch.inference_mode():
        out = enc(x)
    assert out["pooled"].shape == (1, dim) and out["grid"].shape == (1, grid_len, dim)
    assert torch.isfinite(out["pooled"]).all()
    assert len(enc.block_names()) >= 5


def test_efficientnet_inference_module_folds_batchnorm_and_keeps_the_features():
    from torch import nn

    enc = build_encoder("image", "efficientnet_lite0", weights=None, image_size=64, seed=0).eval()
    g = torch.Generator().manual_seed(0)
    for m in enc.modules():  # non-trivial statistics, so that folding has something to fold
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    folded = enc.inference_module()
    assert folded is not enc and not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in enc.modules()) == 49  # the original is untouched
    assert all(torch.equal(v, before[k]) for k, v in enc.state_dict().items())
    x = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8, generator=g)
    with torch.inference_mode():
        a, b = enc(x), folded(x)
    for k in ("pooled", "grid"):
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-4), (k, (a[k] - b[k]).abs().max())
    assert not torch.equal(a["pooled"], torch.zeros_like(a["pooled"]))


def test_color_histogram_counts_each_regions_colours(tmp_path):
    enc = build_encoder("image", "color_histogram", bins=4, image_size=64, cells=2)
    img = np.full((64, 64, 3), 240, np.uint8)  # light background
    img[:16, :32] = (215, 35, 35)  # red: an eighth of the image, half of its top-left region
    Image.fromarray(img).save(tmp_path / "a.png")
    out = enc(enc.collate([enc.load("a.png", tmp_path)]))
    red, light = (3 * 4 + 0) * 4 + 0, (3 * 4 + 3) * 4 + 3
    assert out["pooled"].shape == (1, 64) and out["grid"].shape == (1, 4, 64)
    # square roots of the fractions (the Hellinger map)
    assert out["pooled"][0, red] == pytest.approx(0.125**0.5) and (out["pooled"][0] ** 2).sum() == pytest.approx(1.0)
    assert out["grid"][0, :, red].tolist() == pytest.approx([0.5**0.5, 0.0, 0.0, 0.0])  # the top-left region only
    assert out["pooled"][0, light] == pytest.approx(0.875**0.5)
    assert enc.identity() != build_encoder("image", "color_histogram", bins=8, image_size=64, cells=2).identity()
    with pytest.raises(ValueError, match="cells = 5; expected a divisor"):
        build_encoder("image", "color_histogram", image_size=64, cells=5)
