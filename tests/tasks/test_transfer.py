"""Transfer learning for retrieval: torchvision v2 augmentation, decoding that reproduces the
encoder's own preprocessing, fine-tuning only the last blocks, and resume from a checkpoint
that ends exactly where an uninterrupted run ends."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fusionkit.encoders import build_encoder
from fusionkit.tasks import retrieval as R
from fusionkit.tasks import transfer as T


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """24 small images, 3 captions each (caption features: a noisy function of the image)."""
    root = tmp_path_factory.mktemp("transfer")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(24):
        a = np.zeros((80, 96, 3), dtype=np.uint8)
        a[..., i % 3] = 40 + 8 * i  # a colour per image, plus texture
        a += rng.integers(0, 60, size=a.shape, dtype=np.uint8)
        p = root / f"im{i}.png"
        Image.fromarray(a).save(p)
        paths.append(str(p))
    return paths


def _encoder():
    torch.manual_seed(0)
    return build_encoder("image", "efficientnet_lite0", weights=None, image_size=64, seed=0)


def _split(enc, paths, n_img, g):
    imgs = T.decode_for_training(enc, paths)
    t2i = torch.arange(n_img).repeat_interleave(3)
    feats = T.encode_images(enc, imgs)
    text = feats[t2i] @ torch.randn(feats.shape[1], 16, generator=g) + 0.1 * torch.randn(len(t2i), 16, generator=g)
    return imgs, text, t2i


def test_augmentation_is_random_and_keeps_size_and_dtype():
    aug = T.image_augmentation(32)
    x = torch.randint(0, 256, (3, 48, 48), dtype=torch.uint8)
    torch.manual_seed(0)
    a, b = aug(x), aug(x)
    assert a.shape == (3, 32, 32) and a.dtype == torch.uint8
    assert not torch.equal(a, b)
    torch.manual_seed(0)
    assert torch.equal(aug(x), a)  # seeded: reproducible


def test_decoded_centre_crop_is_the_encoders_own_preprocessing(images):
    enc = _encoder()
    imgs = T.decode_for_training(enc, images[:4])
    assert imgs.dtype == torch.uint8 and imgs.shape == (4, 3, enc.resize_size, enc.resize_size)
    direct = enc.encode(images[:4])["pooled"]
    assert torch.allclose(T.encode_images(enc, imgs), direct, atol=1e-5)


def _run(images, tmp_path=None, fail_after=None, resume=False, epochs=3):
    g = torch.Generator().manual_seed(0)
    enc = _encoder()
    tr_i, tr_t, tr_m = _split(enc, images[:16], 16, g)
    va_i, va_t, va_m = _split(enc, images[16:], 8, g)
    torch.manual_seed(0)
    dual = R.DualEncoder(1280, 16, embed_dim=16, hidden=None, input_dropout=0.2)
    cfg = T.FinetuneConfig(image_blocks=1, epochs=epochs, batch_size=8, patience=10, seed=0)

    def log(rec):
        if fail_after is not None and rec["epoch"] == fail_after:
            raise KeyboardInterrupt

    ckpt = None if tmp_path is None else tmp_path / "ft.pt"
    res = T.finetune_dual_encoder(
        dual, enc, tr_i, tr_t, tr_m, va_i, va_t, va_m, cfg, checkpoint=ckpt, resume=resume, log_fn=log
    )
    return dual, enc, res


def test_only_the_last_block_and_the_heads_train(images):
    before = _encoder().state_dict()
    dual, enc, res = _run(images, epochs=2)
    last = enc.block_names()[-1]
    changed = {k for k, v in enc.state_dict().items() if v.dtype.is_floating_point and not torch.equal(v, before[k])}
    assert changed, "the unfrozen block did not train"
    assert all(any(k.startswith(p + ".") for p in last) for k in changed), sorted(changed)[:5]
    assert res.epochs_run == 2 and len(res.history) == 2 and 0 <= res.best_epoch < 2
    assert res.best_rsum == max(h["val_rsum"] for h in res.history)
    assert not enc.training and not dual.training


def test_resume_ends_where_an_uninterrupted_run_ends(images, tmp_path):
    full_dual, full_enc, full_res = _run(images)
    with pytest.raises(KeyboardInterrupt):
        _run(images, tmp_path, fail_after=0)
    assert (tmp_path / "ft.pt").is_file() and not list(tmp_path.glob(".ft.pt.tmp*"))
    dual, enc, res = _run(images, tmp_path, resume=True)
    assert [h["epoch"] for h in res.history] == [0, 1, 2]
    assert [h["val_rsum"] for h in res.history] == [h["val_rsum"] for h in full_res.history]
    for a, b in ((dual, full_dual), (enc, full_enc)):
        sa, sb = a.state_dict(), b.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_bad_arguments(images):
    enc = _encoder()
    imgs = T.decode_for_training(enc, images[:4])
    t2i = torch.arange(4)
    dual = R.DualEncoder(1280, 8, hidden=None)
    with pytest.raises(ValueError, match="text_encoder"):
        T.finetune_dual_encoder(dual, enc, imgs, ["a"] * 4, t2i, imgs, ["a"] * 4, t2i, T.FinetuneConfig(text_blocks=1))
    with pytest.raises(TypeError, match="uint8"):
        T.finetune_dual_encoder(dual, enc, imgs.float(), torch.zeros(4, 8), t2i, imgs, torch.zeros(4, 8), t2i)


def test_the_loop_trains_on_train_rows_only_and_restores_the_best_epoch(images):
    """``finetune_on_images``, the loop every task uses: batches hold only ``train_rows``, each
    image once per epoch; the state of the epoch with the best monitored value comes back."""
    enc = _encoder()
    imgs = T.decode_for_training(enc, images[:12])
    torch.manual_seed(0)
    head = torch.nn.Linear(1280, 1)
    seen, weights = [], []

    def batch_loss(feats, rows, gen):
        seen.extend(rows.tolist())
        assert feats["pooled"].shape[0] == feats["grid"].shape[0] == len(rows)
        return (head(feats["pooled"]) - 1).pow(2).mean(), len(rows)

    scores = iter([0.1, 0.5, 0.3])

    def validate(feats):
        assert feats["pooled"].shape[0] == 4  # the validation images, re-encoded
        weights.append(head.weight.detach().clone())
        return {"score": next(scores)}

    cfg = T.FinetuneConfig(image_blocks=1, epochs=3, batch_size=3, patience=5, lr=1e-2)
    res = T.finetune_on_images(head, enc, imgs, imgs[:4], batch_loss, validate, cfg, monitor="score",
                               train_rows=torch.tensor([1, 3, 5, 7]))  # fmt: skip
    assert sorted(seen) == sorted([1, 3, 5, 7] * 3)
    assert res.best_epoch == 1 and res.best_value == 0.5 and res.epochs_run == 3
    assert not torch.equal(weights[1], weights[2])
    assert torch.equal(head.weight, weights[1])  # the best epoch's state, not the last
    with pytest.raises(KeyError, match="no 'acc'"):
        T.finetune_on_images(head, enc, imgs, imgs[:4], batch_loss, lambda f: {"score": 1.0},
                             T.FinetuneConfig(epochs=1), monitor="acc")  # fmt: skip


def test_decode_for_training_names_an_image_over_the_decompression_bomb_limit(images, monkeypatch):
    from fusionkit.encoders.base import InputError

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 80 x 96 = 7,680 pixels: over twice the limit
    with pytest.raises(InputError, match="decompression bomb refused") as e:
        T.decode_for_training(_encoder(), images[2:4])
    assert e.value.path == images[2]
