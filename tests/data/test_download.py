"""Downloads against a local HTTP server on 127.0.0.1 (never any other address), and --from PATH.

The server (a thread, random port) serves small archives built in tmp from ../shared/data and can
misbehave on purpose: drop the connection mid-way, ignore Range, send fewer bytes, answer 500."""

from __future__ import annotations

import hashlib
import io
import socket
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from fusionkit import cli
from fusionkit.data import download as dl
from fusionkit.data import registry
from fusionkit.data.download import DownloadError, Remote, fetch

pytestmark = pytest.mark.shared_data


class Handler(BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    modes: dict[str, str] = {}
    log: list[tuple[str, str | None]] = []
    served: dict[str, int] = {}

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        path = self.path.split("?")[0]
        rng = self.headers.get("Range")
        self.log.append((path, rng))
        n = self.served[path] = self.served.get(path, 0) + 1
        mode = self.modes.get(path, "ok")
        if path not in self.files:
            self.send_error(404)
            return
        if mode == "error500":
            self.send_error(500, "Internal Server Error")
            return
        data = self.files[path]
        start = 0
        if rng and mode not in ("norange_drop",) and rng.startswith("bytes="):
            start = int(rng[6:].split("-")[0])
        body = data[start:]
        if start:
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        drop = mode == "norange_drop" or (mode == "drop_once" and n == 1)
        if drop:  # send part of the body, then cut the connection
            self.wfile.write(body[: len(body) // 3])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def server():
    Handler.files, Handler.modes, Handler.log, Handler.served = {}, {}, [], {}
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", Handler
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def fsdd_archive(shared_data_module) -> bytes:
    """A tar.gz laid out like the FSDD release: <top>/recordings/*.wav (takes 0-1) + README."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for p in sorted((shared_data_module / "fsdd" / "recordings").glob("*_[01].wav")):
            tf.add(p, arcname=f"free-spoken-digit-dataset-1.0.9/recordings/{p.name}")
        readme = b"Free Spoken Digit Dataset (test archive)\n"
        info = tarfile.TarInfo("free-spoken-digit-dataset-1.0.9/README.md")
        info.size = len(readme)
        tf.addfile(info, io.BytesIO(readme))
    return buf.getvalue()


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def test_fetch_verifies_and_does_not_fetch_twice(server, tmp_path):
    url, h = server
    data = b"0123456789" * 5000
    h.files["/a.bin"] = data
    dest = fetch(f"{url}/a.bin", tmp_path / "a.bin", size=len(data), sha256=_sha(data), progress=False, backoff=0)
    assert dest.read_bytes() == data and not (tmp_path / "a.bin.part").exists()
    fetch(f"{url}/a.bin", tmp_path / "a.bin", size=len(data), sha256=_sha(data), progress=False, backoff=0)
    assert len(h.log) == 1  # verified file kept, not fetched again


def test_checksum_mismatch_deletes_the_part(server, tmp_path):
    url, h = server
    h.files["/a.bin"] = b"tampered bytes" * 100
    with pytest.raises(DownloadError, match=r"a\.bin: checksum mismatch: sha256 [0-9a-f]{64}, expected 0{64}"):
        fetch(f"{url}/a.bin", tmp_path / "a.bin", sha256="0" * 64, progress=False, backoff=0)
    assert list(tmp_path.iterdir()) == []
    h.files["/b.bin"] = b"x" * 100
    with pytest.raises(DownloadError, match="checksum mismatch: md5"):
        fetch(f"{url}/b.bin", tmp_path / "b.bin", md5="f" * 32, progress=False, backoff=0)


def test_truncated_transfer(server, tmp_path):
    url, h = server
    data = bytes(range(256)) * 400
    # the server cuts every transfer short and ignores Range: no progress, a clear failure
    h.files["/t.bin"], h.modes["/t.bin"] = data, "norange_drop"
    with pytest.raises(DownloadError, match=r"t\.bin: download failed after 3 attempt\(s\): .*run again to resume"):
        fetch(f"{url}/t.bin", tmp_path / "t.bin", size=len(data), sha256=_sha(data), progress=False, backoff=0)
    assert not (tmp_path / "t.bin").exists() and (tmp_path / "t.bin.part").stat().st_size < len(data)
    # a truncated file on the server (consistent headers, too few bytes): the size check catches it
    h.files["/short.bin"] = data[:-1000]
    with pytest.raises(DownloadError, match=rf"announces {len(data) - 1000} bytes; expected {len(data)}"):
        fetch(f"{url}/short.bin", tmp_path / "short.bin", size=len(data), progress=False, backoff=0)
    assert not (tmp_path / "short.bin").exists()


def test_interrupted_then_resumed_with_range(server, tmp_path):
    url, h = server
    data = bytes(range(256)) * 2000
    h.files["/r.bin"], h.modes["/r.bin"] = data, "drop_once"
    dest = fetch(f"{url}/r.bin", tmp_path / "r.bin", size=len(data), sha256=_sha(data), progress=False, backoff=0)
    assert dest.read_bytes() == data
    (p1, r1), (p2, r2) = h.log
    assert r1 is None and r2.startswith("bytes=")  # the second request resumed where the first stopped
    assert 0 < int(r2[6:-1]) <= len(data) // 3


def test_resume_across_runs(server, tmp_path):
    url, h = server
    data = bytes(range(256)) * 2000
    h.files["/r.bin"], h.modes["/r.bin"] = data, "drop_once"
    with pytest.raises(DownloadError, match="partial file .* is kept"):
        fetch(f"{url}/r.bin", tmp_path / "r.bin", sha256=_sha(data), retries=1, progress=False, backoff=0)
    have = (tmp_path / "r.bin.part").stat().st_size
    assert 0 < have <= len(data) // 3
    dest = fetch(f"{url}/r.bin", tmp_path / "r.bin", sha256=_sha(data), retries=1, progress=False, backoff=0)
    assert dest.read_bytes() == data and h.log[-1][1] == f"bytes={have}-"


def test_server_error(server, tmp_path):
    url, h = server
    h.files["/e.bin"], h.modes["/e.bin"] = b"x", "error500"
    with pytest.raises(DownloadError, match=r"e\.bin: download failed after 2 attempt\(s\): HTTP 500"):
        fetch(f"{url}/e.bin", tmp_path / "e.bin", retries=2, progress=False, backoff=0)
    assert len(h.log) == 2 and not list(tmp_path.iterdir())
    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch(f"{url}/nothing.bin", tmp_path / "n.bin", progress=False, backoff=0)


def test_unreachable_is_one_clear_line(tmp_path, capsys):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with pytest.raises(DownloadError, match=rf"cannot reach 127\.0\.0\.1:{port} \(network unreachable"):
        fetch(f"http://127.0.0.1:{port}/x.zip", tmp_path / "x.zip", progress=False, backoff=0)
    rc = cli.main(
        ["data", "download", "fsdd", "--to", str(tmp_path), "--mirror", f"http://127.0.0.1:{port}", "--no-progress"]
    )
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "cannot reach 127.0.0.1" in err and "--from PATH" in err


def test_download_extract_and_prepare(server, tmp_path, fsdd_archive):
    url, h = server
    h.files["/fsdd.tar.gz"], h.modes["/fsdd.tar.gz"] = fsdd_archive, "drop_once"
    files = [Remote(f"{url}/fsdd.tar.gz", "fsdd.tar.gz", "recordings", len(fsdd_archive), _sha(fsdd_archive))]
    dest = dl.download("fsdd", tmp_path / "raw", files=files, progress=False, backoff=0)
    assert dest == tmp_path / "raw" / "fsdd"
    assert len(list((dest / "free-spoken-digit-dataset-1.0.9" / "recordings").glob("*.wav"))) == 100
    n_requests = len(h.log)
    dl.download("fsdd", tmp_path / "raw", files=files, progress=False)  # complete: nothing fetched again
    assert len(h.log) == n_requests
    ds = registry.prepare("avdigits", tmp_path / "av", source_dir=dest, progress=False)
    assert len(ds) == 100 and registry.detect(dest)[0] == "avdigits"


def test_mirror_with_wrong_file_fails_verification_from_the_cli(server, tmp_path, fsdd_archive, capsys):
    url, h = server
    h.files["/free-spoken-digit-dataset-1.0.9.tar.gz"] = fsdd_archive  # not the official file
    rc = cli.main(
        ["data", "download", "fsdd", "--to", str(tmp_path), "--mirror", url, "--no-progress", "--retries", "1"]
    )
    err = capsys.readouterr().err
    assert rc == 2 and f"announces {len(fsdd_archive)} bytes; expected 11975353" in err
    assert not list((tmp_path / "fsdd" / "downloads").glob("*.tar.gz"))


def test_from_local_folder_and_archive(shared_data_module, tmp_path, fsdd_archive, capsys):
    rc = cli.main(
        [
            "data",
            "download",
            "fsdd",
            "--to",
            str(tmp_path / "raw"),
            "--from",
            str(shared_data_module / "fsdd"),
            "--no-progress",
        ]
    )
    assert rc == 0 and "next: fusionkit data prepare avdigits" in capsys.readouterr().out
    assert len(list((tmp_path / "raw" / "fsdd" / "recordings").glob("*.wav"))) == 2500
    arch = tmp_path / "fsdd-copy.tar.gz"
    arch.write_bytes(fsdd_archive)
    dest = dl.download("fsdd", tmp_path / "raw2", from_path=arch, progress=False)
    assert (dest / "free-spoken-digit-dataset-1.0.9" / "README.md").is_file()
    # a folder holding the release archive: verified against the table (here: it is not the release)
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / "free-spoken-digit-dataset-1.0.9.tar.gz").write_bytes(fsdd_archive)
    with pytest.raises(DownloadError, match="expected 11975353"):
        dl.download("fsdd", tmp_path / "raw3", from_path=tmp_path / "mirror", progress=False)
    with pytest.raises(DownloadError, match="does not exist"):
        dl.download("fsdd", tmp_path / "raw4", from_path=tmp_path / "nope", progress=False)
    with pytest.raises(DownloadError, match=r"unknown part\(s\) \['everything'\]"):
        dl.download("coco", tmp_path / "raw5", only="everything", progress=False)


def test_unsafe_archives_refused(tmp_path):
    z = tmp_path / "evil.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("ok.txt", "fine")
        zf.writestr("../evil.txt", "escape")
    with pytest.raises(DownloadError, match=r"member '\.\./evil\.txt' would be written outside the folder"):
        dl.extract(z, tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists()
    t = tmp_path / "evil.tar"
    with tarfile.open(t, "w") as tf:
        info = tarfile.TarInfo("link")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(info)
    with pytest.raises(DownloadError, match="unsafe member refused"):
        dl.extract(t, tmp_path / "out2")
    (tmp_path / "bad.zip").write_bytes(b"PK not a zip")
    with pytest.raises(DownloadError, match="not a valid zip archive"):
        dl.extract(tmp_path / "bad.zip", tmp_path / "out3")


def test_table_has_real_sources():
    for spec in dl.SOURCES.values():
        assert spec["licence"] and spec["homepage"]
        for r in spec["files"]:
            assert r.url.startswith(("https://", "http://images.cocodataset.org/")), r.url
            assert Path(r.filename).name == r.filename
            assert r.sha256 is None or len(r.sha256) == 64
            assert r.md5 is None or len(r.md5) == 32
            if r.sha256 or r.md5 or r.size:
                assert r.checksum_from, r.filename
