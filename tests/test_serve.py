"""fusionkit serve: real HTTP requests on 127.0.0.1 to a bundle loaded once; bad requests get a
4xx naming the problem; a short bounded concurrent load."""

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from fusionkit.serve import create_app
from tests.serving import running


@pytest.fixture(scope="module")
def server(exported_run):
    app = create_app(exported_run["predictor"], max_body_bytes=2_000_000, max_pixels=40 * 40)
    with running(app) as url:
        yield url, exported_run


def _files(run, sample):
    root = run["ds"].root
    return {
        "image": ("x.png", (root / sample.modalities["image"]).read_bytes(), "image/png"),
        "audio": ("x.wav", (root / sample.modalities["audio"]).read_bytes(), "audio/wav"),
    }


def test_health_info_and_a_prediction_equal_to_fusionkit_predict(server):
    url, run = server
    assert httpx.get(f"{url}/health").json()["status"] == "ok"
    info = httpx.get(f"{url}/info").json()
    assert info["modalities"] == {"audio": "audio", "image": "image", "text": "text"}
    assert info["class_names"] == run["names"] and info["dataset"]["name"] == run["ds"].name
    s = run["ds"].split("test")[0]
    r = httpx.post(f"{url}/predict", files=_files(run, s), data={"text": s.modalities["text"]})
    assert r.status_code == 200, r.text
    i = run["test"].ids.index(s.id)
    got = r.json()
    assert abs(got["probabilities"][run["names"][0]] - float(run["probs"][i, 0])) < 1e-5 and got["missing"] == []
    only_text = httpx.post(f"{url}/predict", json={"caption": s.modalities["text"]} if "caption" in info["modalities"]
                           else {"text": s.modalities["text"]})  # fmt: skip
    assert only_text.status_code == 200 and only_text.json()["missing"] == ["audio", "image"]


def test_bad_requests_get_a_4xx_naming_the_problem(server):
    url, run = server
    s = run["ds"].split("test")[0]
    cases = [
        (dict(files={"image": ("x.jpg", b"not an image", "image/jpeg")}), 422, "field 'image' (x.jpg)"),
        (dict(files={"depth": ("d.png", b"x", "image/png")}), 422, "field 'depth' unknown"),
        (dict(json={"text": "   "}), 422, "empty text"),
        (dict(json={"image": "/etc/passwd"}), 422, "multipart/form-data uploads"),
        (dict(json=[1, 2]), 422, "expected a JSON object"),
        (dict(content=b"{bad", headers={"content-type": "application/json"}), 400, "not valid JSON"),
        (dict(content=b"x", headers={"content-type": "text/plain"}), 415, "content type"),
        (dict(content=b"x" * 2_000_001, headers={"content-type": "application/json"}), 413, "over the limit"),
    ]
    big = run["ds"].root / s.modalities["image"]  # 32x32 images are under the limit; 64x64 is not
    from PIL import Image

    Image.open(big).resize((64, 64)).save(run["tmp"] / "big.png")
    cases.append((dict(files={"image": ("big.png", (run["tmp"] / "big.png").read_bytes(), "image/png")}), 413,
                  "64x64 pixels is over the limit"))  # fmt: skip
    for kw, status, message in cases:
        r = httpx.post(f"{url}/predict", **kw)
        assert r.status_code == status, (kw.keys(), r.text)
        assert message in r.json()["error"] and "Traceback" not in r.text
    assert httpx.get(f"{url}/health").status_code == 200  # still serving


def test_concurrent_clients(server):
    url, run = server
    samples = run["ds"].split("test")
    n_clients, per_client = 4, 3

    def client(k):
        codes = []
        with httpx.Client(timeout=30) as c:
            for j in range(per_client):
                s = samples[(k + j) % len(samples)]
                codes.append(c.post(f"{url}/predict", files=_files(run, s), data={"text": s.modalities["text"]}).status_code)  # fmt: skip
        return codes

    t0 = time.monotonic()
    with ThreadPoolExecutor(n_clients) as ex:
        codes = [c for cs in ex.map(client, range(n_clients)) for c in cs]
    assert codes == [200] * n_clients * per_client and time.monotonic() - t0 < 120
