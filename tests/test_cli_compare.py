"""``fusionkit fusion compare``: the comparison notebook 03 runs, from the command line, with the
same options (search, executor, Ray address)."""

import pandas as pd
import pytest

from fusionkit.cli import main
from fusionkit.data import shapes
from fusionkit.index import FeatureIndex


@pytest.fixture(scope="module")
def index_path(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    ds = shapes.generate(tmp / "shapes", n=60, image_size=32, progress=False)
    path = tmp / "features.json"
    FeatureIndex.build(ds, {"audio": "logmel"}, tmp / "cache",
                       ["pooled"], path=path, progress=False)  # fmt: skip
    return path


def test_compare_searches_and_writes_the_tuned_and_untuned_ranking(index_path, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["fusion", "compare", "--features-index", str(index_path), "--methods", "concat", "--seeds", "2",
               "--epochs", "3", "--search-trials", "2", "--executor", "serial", "--target", "tone", "--out", str(out)])  # fmt: skip
    assert rc == 0
    trials = pd.read_csv(out / "search_trials.csv")
    assert trials.groupby("method").size().to_dict() == {"concat": 2, "unimodal:audio": 2}
    rankings = pd.read_csv(out / "rankings.csv")
    assert {"untuned_rank", "tuned_rank", "config"} <= set(rankings.columns)
    assert (out / "search_curves.png").stat().st_size > 0
    assert "written to" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--ray-address", "127.0.0.1:9"], "ray_address '127.0.0.1:9': no Ray cluster reachable"),
        (["--methods", "nope"], "unknown fusion method 'nope'"),
        (
            ["--search-trials", "2", "--search-space", '{"lrr": [0.1]}', "--executor", "serial"],
            "unknown key(s) ['lrr']",
        ),
    ],
)
def test_bad_options_fail_with_one_line_naming_what_is_wrong(index_path, tmp_path, capsys, args, message):
    rc = main(["fusion", "compare", "--features-index", str(index_path), "--methods", "concat", "--seeds", "1",
               "--epochs", "1", "--target", "tone", "--out", str(tmp_path), *args])  # fmt: skip
    assert rc == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("fusionkit: error:")


@pytest.fixture(scope="module")
def regression_index(tmp_path_factory):
    """A manifest of tones whose pitch is a continuous score (detected: non-integer numbers)."""
    import numpy as np
    import soundfile as sf

    from fusionkit.data import registry

    tmp = tmp_path_factory.mktemp("cli_regression")
    src = tmp / "tones"
    (src / "clips").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = ["id,audio,score,split"]
    for i in range(90):
        score = round(float(rng.uniform(0, 1)), 3)
        t = np.arange(4000) / 16000
        sf.write(src / "clips" / f"c{i}.wav", 0.3 * np.sin(2 * np.pi * (300 + 2000 * score) * t), 16000)
        rows.append(f"c{i},clips/c{i}.wav,{score},{['train', 'train', 'train', 'val', 'test'][i % 5]}")
    (src / "manifest.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    ds = registry.prepare("manifest", tmp / "ds", source_dir=src, progress=False)
    assert ds.target_kind("score") == "regression"
    path = tmp / "features.json"
    FeatureIndex.build(ds, {"audio": "logmel"}, tmp / "cache", ["pooled"], path=path, progress=False)
    return path


def test_compare_on_a_regression_target_reports_mse_mae_r2(regression_index, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["fusion", "compare", "--features-index", str(regression_index), "--methods", "concat", "--seeds", "2",
               "--epochs", "30", "--search-trials", "2", "--executor", "serial", "--target", "score",
               "--out", str(out)])  # fmt: skip
    assert rc == 0
    summary = pd.read_csv(out / "comparison_summary.csv").set_index("method")
    assert {"test_mse_mean", "test_mae_ci95", "test_r2_mean", "val_mse_mean"} <= set(summary.columns)
    assert summary.loc["concat", "test_r2_mean"] > 0.5  # the pitch carries the score
    trials = pd.read_csv(out / "search_trials.csv")
    chosen = trials[trials.is_best & (trials.method == "concat")]
    assert chosen.val_mse.iloc[0] == trials[trials.method == "concat"].val_mse.min()  # minimised
    printed = capsys.readouterr().out
    assert "test_mse_mean" in printed and "test_r2_mean" in printed
