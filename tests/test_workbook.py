"""The notebook helpers of fusionkit.workbook that draw or tabulate a dataset."""

from __future__ import annotations

import pytest
from PIL import Image

from fusionkit import workbook as wb
from fusionkit.data.base import DatasetError, Sample, load_dataset, write_dataset


def test_plot_examples_names_an_image_over_the_decompression_bomb_limit(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    samples = []
    for i in range(3):
        Image.new("RGB", (16, 16) if i else (64, 64), (60 * i, 20, 20)).save(tmp_path / f"im{i}.png")
        samples.append(Sample(f"s{i}", "train", {"image": f"im{i}.png", "text": f"photo {i}"}, {"y": i % 2}))
    ds = load_dataset(write_dataset(tmp_path / "ds", "imgs", {"image": "image", "text": "text"}, {"y": ["a", "b"]},
                                    samples, media_root=tmp_path))  # fmt: skip
    fig = wb.plot_examples(ds, n=3)
    assert sorted(a.get_title().split("\n")[0] for a in fig.axes if a.get_title()) == ["s0", "s1", "s2"]
    plt.close(fig)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # im0: 4,096 pixels, over twice the limit
    with pytest.raises(DatasetError, match=r"im0\.png \(id 's0'\): refused as a possible decompression bomb"):
        wb.plot_examples(ds, n=3)
