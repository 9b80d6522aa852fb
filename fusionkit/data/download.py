"""``fusionkit data download NAME --to data/raw``: fetch a dataset's raw files from their public source.

Every file in :data:`SOURCES` has a URL and, where known, its size and a checksum (sha256, or the
md5 other projects publish); the ``checksum_from`` field says where a value comes from. Where no
checksum is known (``None``) the size is verified when known, else the server's Content-Length -
``docs/datasets.md`` lists which files these are.

How a file is fetched (:func:`fetch`)
* into ``<file>.part``, resumed with an HTTP ``Range`` request when a ``.part`` is already there
  (an interrupted transfer, in this run or an earlier one) - a server that ignores Range restarts
  it from the beginning;
* retried ``retries`` times on a dropped connection or a 5xx answer (each retry resumes);
* verified (size, then checksum) and only then renamed to its final name (atomic); a checksum
  mismatch deletes the ``.part`` and raises; a finished file is not fetched again
  (``.<file>.verified`` remembers the verification, so a 13 GB zip is not re-hashed every run);
* a host that cannot be reached raises :class:`DownloadError` with a one-line message
  (``fusionkit data download`` prints it and exits 2).

``from_path`` (``--from PATH``) uses a local copy instead of the network: a folder holding the
archives (verified like downloads, then extracted), a single archive, or a folder holding the
extracted data (e.g. ``../shared/data/fsdd``), copied file by file. ``mirror`` (``--mirror URL``)
fetches ``URL/<file name>`` instead of the official URL, with the same verification.

Archives are extracted next to them (``<to>/<folder>/``) through a temporary folder; members
with absolute paths, ``..`` or links are refused. Archives are kept in ``<to>/<folder>/downloads/``
(delete them to save space; they will not be fetched again unless the extracted files are gone
*and* you run the download again).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import time
import uuid
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from fusionkit.progress import progress as _progress

__all__ = ["SOURCES", "DownloadError", "Remote", "available", "download", "extract", "fetch"]


class DownloadError(RuntimeError):
    """A download or a local copy failed; the message says which file, why, and what to do."""


@dataclass(frozen=True)
class Remote:
    url: str
    filename: str
    part: str  # what it holds: annotations, images, text, karpathy ... (--only selects parts)
    size: int | None = None
    sha256: str | None = None
    md5: str | None = None
    checksum_from: str = ""  # where the size / checksum values come from
    extract: bool = True


_TFDS_COCO = "tensorflow/datasets url_checksums/coco_captions.txt"
_KARPATHY = Remote(
    "https://cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip",
    "caption_datasets.zip",
    "karpathy",
    36745453,
    "4cfd70132527b80933105e5829dc9034eaab9573482e2e680abbab6130244817",
    checksum_from=_TFDS_COCO,
)
_COCO_FILES = (
    Remote(
        "http://images.cocodataset.org/annotations/annotations_trainval2014.zip",
        "annotations_trainval2014.zip",
        "annotations",
        252872794,
        "031296bbc80c45a1d1f76bf9a90ead27e94e99ec629208449507a4917a3bf009",
        checksum_from=_TFDS_COCO,
    ),
    Remote(
        "http://images.cocodataset.org/zips/train2014.zip",
        "train2014.zip",
        "train-images",
        13510573713,
        "ede4087e640bddba550e090eae701092534b554b42b05ac33f0300b984b31775",
        checksum_from=_TFDS_COCO,
    ),
    Remote(
        "http://images.cocodataset.org/zips/val2014.zip",
        "val2014.zip",
        "val-images",
        6645013297,
        "fe9be816052049c34717e077d9e34aa60814a55679f804cd043e3cbee3b9fde0",
        checksum_from=_TFDS_COCO,
    ),
)
_VQA_BASE = "https://s3.amazonaws.com/cvmlp/vqa/mscoco/vqa/"

#: name -> folder under ``--to``, files, homepage, licence / terms
SOURCES: dict[str, dict[str, Any]] = {
    "flickr8k": {
        "folder": "flickr8k",
        "files": (
            Remote(
                "https://github.com/jbrownlee/Datasets/releases/download/Flickr8k/Flickr8k_Dataset.zip",
                "Flickr8k_Dataset.zip",
                "images",
                md5="f18a1e2920de5bd84dae7cf08ec78978",
                checksum_from="mlverse/torchdatasets (R) flickr8k resources",
            ),
            Remote(
                "https://github.com/jbrownlee/Datasets/releases/download/Flickr8k/Flickr8k_text.zip",
                "Flickr8k_text.zip",
                "text",
                md5="bf6c1abcb8e4a833b7f922104de18627",
                checksum_from="mlverse/torchdatasets (R) flickr8k resources",
            ),
            _KARPATHY,
        ),
        "homepage": "https://hockenmaier.cs.illinois.edu/8k-pictures.html (mirror: github.com/jbrownlee/Datasets)",
        "licence": "research use only; images belong to their Flickr owners (Hodosh, Young, Hockenmaier 2013)",
        "prepare": "flickr8k",
    },
    "fsdd": {
        "folder": "fsdd",
        "files": (
            Remote(
                "https://github.com/Jakobovski/free-spoken-digit-dataset/archive/v1.0.9.tar.gz",
                "free-spoken-digit-dataset-1.0.9.tar.gz",
                "recordings",
                11975353,
                "8bc44cde129d505cbbb6b365c09f80c663f2aa77578afc634e6141a2f87100c0",
                checksum_from="tensorflow/datasets audio/spoken_digit/checksums.tsv",
            ),
        ),
        "homepage": "https://github.com/Jakobovski/free-spoken-digit-dataset",
        "licence": "CC BY-SA 4.0 (Zohar Jackson et al.)",
        "prepare": "avdigits",
    },
    "coco": {
        "folder": "coco",
        "files": (*_COCO_FILES, _KARPATHY),
        "homepage": "https://cocodataset.org",
        "licence": "annotations CC BY 4.0; images under their Flickr licences (COCO terms of use)",
        "prepare": "coco",
    },
    "vqa": {
        # into the COCO folder: VQA v2 asks about the COCO 2014 images, shared with `coco`
        "folder": "coco",
        "files": (
            Remote(_VQA_BASE + "v2_Questions_Train_mscoco.zip", "v2_Questions_Train_mscoco.zip", "questions"),
            Remote(_VQA_BASE + "v2_Questions_Val_mscoco.zip", "v2_Questions_Val_mscoco.zip", "questions"),
            Remote(_VQA_BASE + "v2_Annotations_Train_mscoco.zip", "v2_Annotations_Train_mscoco.zip", "annotations"),
            Remote(_VQA_BASE + "v2_Annotations_Val_mscoco.zip", "v2_Annotations_Val_mscoco.zip", "annotations"),
            *_COCO_FILES[1:],
        ),
        "homepage": "https://visualqa.org",
        "licence": "annotations CC BY 4.0; images: COCO terms of use",
        "prepare": "vqa",
    },
    "vqarad": {
        # the public release (Lau et al. 2018, OSF project 89kps): OSF builds this zip on request,
        # so it has no fixed size or checksum to verify (the server's Content-Length is checked);
        # `--from PATH` takes a folder of the MEVF split (trainset.json, testset.json, images/)
        "folder": "vqarad",
        "files": (
            Remote(
                "https://files.osf.io/v1/resources/89kps/providers/osfstorage/?zip=",
                "vqarad-osf-89kps.zip",
                "data",
                checksum_from="none published: OSF zips the project's files on request",
            ),
        ),
        "homepage": "https://osf.io/89kps/ (Lau, Gayen, Ben Abacha, Demner-Fushman, Scientific Data 5, 180251, 2018)",
        "licence": "CC0 1.0",
        "prepare": "vqarad",
    },
}

ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz")


def available() -> list[str]:
    return list(SOURCES)


# -------------------------------------------------------------------------------------- hashing
def _hashes(path: Path) -> tuple[str, str]:
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            sha.update(block)
            md5.update(block)
    return sha.hexdigest(), md5.hexdigest()


def _marker(path: Path) -> Path:
    return path.with_name(f".{path.name}.verified")


def verify(path: Path, size: int | None, sha256: str | None, md5: str | None, what: str) -> None:
    """Raise DownloadError unless ``path`` has the expected size and checksums."""
    st = path.stat()
    if size is not None and st.st_size != size:
        raise DownloadError(
            f"{what}: {st.st_size} bytes; expected {size} - the file is truncated or a different version"
        )
    if sha256 is None and md5 is None:
        return
    mark = _marker(path)
    stamp = f"{st.st_size} {st.st_mtime_ns} {sha256} {md5}"
    if mark.is_file() and mark.read_text() == stamp:
        return
    got_sha, got_md5 = _hashes(path)
    if sha256 is not None and got_sha != sha256.lower():
        raise DownloadError(f"{what}: checksum mismatch: sha256 {got_sha}, expected {sha256}")
    if md5 is not None and got_md5 != md5.lower():
        raise DownloadError(f"{what}: checksum mismatch: md5 {got_md5}, expected {md5}")
    mark.write_text(stamp)


# ---------------------------------------------------------------------------------------- fetch
def _unreachable(url: str, exc: Exception) -> DownloadError:
    host = urlparse(url).netloc
    reason = str(exc).split("(Caused by ")[-1].rstrip(")") if "Caused by" in str(exc) else type(exc).__name__
    return DownloadError(
        f"cannot reach {host} (network unreachable: {reason[:160]}); download {url} elsewhere and use --from PATH"
    )


def fetch(
    url: str,
    dest: str | os.PathLike,
    *,
    size: int | None = None,
    sha256: str | None = None,
    md5: str | None = None,
    retries: int = 3,
    backoff: float = 1.0,
    timeout: float = 30.0,
    chunk: int = 1 << 16,  # a dropped connection loses at most the chunk being read
    progress: bool = True,
    session: Any = None,
) -> Path:
    """Download ``url`` to ``dest`` (module docstring: resumable, verified, atomic)."""
    import requests

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_file():
        try:
            verify(dest, size, sha256, md5, str(dest))
            return dest
        except DownloadError:
            dest.unlink()
    part = dest.with_name(dest.name + ".part")
    sess = session or requests.Session()
    last = ""
    total: int | None = size
    for attempt in range(max(1, retries)):
        if attempt:
            time.sleep(backoff * attempt)
        have = part.stat().st_size if part.is_file() else 0
        if size is not None and have > size:
            part.unlink()
            have = 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        try:
            with sess.get(url, stream=True, headers=headers, timeout=timeout) as r:
                if r.status_code == 416 and have:
                    total = total or have  # the .part already holds everything
                elif r.status_code >= 500:
                    last = f"HTTP {r.status_code} {r.reason} from the server"
                    continue
                elif r.status_code not in (200, 206):
                    raise DownloadError(f"{url}: HTTP {r.status_code} {r.reason}; expected the file (200)")
                else:
                    mode = "ab"
                    if r.status_code == 206:
                        cr = r.headers.get("Content-Range", "")
                        start = int(cr.split(" ", 1)[-1].split("-", 1)[0]) if cr.startswith("bytes ") else -1
                        if start != have:  # an answer we did not ask for: start over
                            part.unlink(missing_ok=True)
                            last = f"the server answered range {cr!r} to bytes={have}-"
                            continue
                        if "/" in cr and cr.rsplit("/", 1)[-1].isdigit():
                            total = int(cr.rsplit("/", 1)[-1])
                    else:  # 200: the server ignores Range (or none was asked): from the start
                        mode, have = "wb", 0
                        cl = r.headers.get("Content-Length")
                        total = int(cl) if cl and cl.isdigit() else total
                    if size is not None and total is not None and total != size:
                        raise DownloadError(f"{url}: the server announces {total} bytes; expected {size}")
                    bar = _progress(
                        total=total, initial=have, unit="B", unit_scale=True, desc=dest.name, enabled=progress
                    )
                    with open(part, mode) as f, bar:
                        for block in r.iter_content(chunk_size=chunk):
                            f.write(block)
                            bar.update(len(block))
        except requests.exceptions.ConnectionError as e:
            if isinstance(e, requests.exceptions.ConnectTimeout) or "Max retries exceeded" in str(e):
                raise _unreachable(url, e) from e  # no connection at all: retrying will not help
            got = part.stat().st_size if part.is_file() else 0
            last = f"connection dropped after {got} bytes ({type(e).__name__})"
            continue
        except requests.exceptions.Timeout as e:
            last = f"timed out ({type(e).__name__})"
            continue
        except requests.exceptions.RequestException as e:
            last = f"{type(e).__name__}: {e}"
            continue
        got = part.stat().st_size if part.is_file() else 0
        want = size if size is not None else total
        if want is not None and got < want:
            last = f"transfer stopped at {got} of {want} bytes"
            continue
        try:
            verify(part, size if size is not None else total, sha256, md5, f"{url}")
        except DownloadError:
            part.unlink(missing_ok=True)
            raise
        os.replace(part, dest)
        m = _marker(part)
        if m.exists():
            os.replace(m, _marker(dest))
        return dest
    kept = f"; the partial file {part} is kept: run again to resume" if part.is_file() else ""
    raise DownloadError(f"{url}: download failed after {max(1, retries)} attempt(s): {last}{kept}")


# -------------------------------------------------------------------------------------- extract
def _is_archive(p: Path) -> bool:
    return p.name.lower().endswith(ARCHIVE_SUFFIXES)


def extract(archive: str | os.PathLike, into: str | os.PathLike) -> list[str]:
    """Extract ``archive`` into ``into`` safely; returns the top-level names it created/replaced."""
    archive, into = Path(archive), Path(into)
    into.mkdir(parents=True, exist_ok=True)
    tmp = into / f".extract-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        if archive.name.lower().endswith(".zip"):
            try:
                zf = zipfile.ZipFile(archive)
            except zipfile.BadZipFile as e:
                raise DownloadError(f"{archive}: not a valid zip archive ({e})") from e
            with zf:
                for info in zf.infolist():
                    name = info.filename
                    if name.startswith("__MACOSX/") or not name.strip("/"):
                        continue
                    if name.startswith(("/", "\\")) or ".." in Path(name).parts or (len(name) > 1 and name[1] == ":"):
                        raise DownloadError(f"{archive}: member {name!r} would be written outside the folder; refused")
                    if (info.external_attr >> 16) & 0o170000 == 0o120000:
                        raise DownloadError(f"{archive}: member {name!r} is a symbolic link; refused")
                    zf.extract(info, tmp)
        else:
            try:
                with tarfile.open(archive) as tf:
                    tf.extractall(tmp, filter="data")
            except tarfile.FilterError as e:
                raise DownloadError(f"{archive}: unsafe member refused ({e})") from e
            except (tarfile.TarError, EOFError) as e:
                raise DownloadError(f"{archive}: not a valid tar archive ({e})") from e
        names = [child.name for child in sorted(tmp.iterdir())]
        _merge(tmp, into)
        return names
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _merge(src: Path, dst: Path) -> None:
    """Move what ``src`` holds into ``dst``: folders present in both are merged, anything else
    replaces what ``dst`` holds under its name."""
    for child in sorted(src.iterdir()):
        t = dst / child.name
        if child.is_dir() and t.is_dir():
            _merge(child, t)
        else:
            if t.is_dir():
                shutil.rmtree(t)
            os.replace(child, t)


def _copy_tree(src: Path, dst: Path, progress: bool) -> int:
    """Copy the files of ``src`` into ``dst`` (each file atomically; files already there with the
    same size are kept). Refuses symlinks that point outside ``src``."""
    files = []
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames[:] = sorted(n for n in dirnames if not n.startswith("."))
        for fn in sorted(filenames):
            if not fn.startswith("."):
                files.append(Path(dirpath) / fn)
    n = 0
    root = src.resolve()
    for p in _progress(files, enabled=progress, desc=f"copying {src.name}", unit="file"):
        if not p.resolve().is_relative_to(root):
            raise DownloadError(f"{p}: symbolic link pointing outside {src}; refused")
        t = dst / p.relative_to(src)
        if t.is_file() and t.stat().st_size == p.stat().st_size:
            continue
        t.parent.mkdir(parents=True, exist_ok=True)
        tmp = t.with_name(f".{t.name}.tmp-{os.getpid()}")
        shutil.copyfile(p, tmp)
        os.replace(tmp, t)
        n += 1
    return n


# ------------------------------------------------------------------------------------- download
def download(
    name: str,
    to: str | os.PathLike = "data/raw",
    *,
    from_path: str | os.PathLike | None = None,
    mirror: str | None = None,
    only: Sequence[str] | str | None = None,
    files: Sequence[Remote] | None = None,
    extract_archives: bool = True,
    progress: bool = True,
    retries: int = 3,
    backoff: float = 1.0,
    timeout: float = 30.0,
) -> Path:
    """Fetch dataset ``name`` into ``<to>/<folder>`` and return that folder.

    ``from_path``: a local folder / archive instead of the network. ``mirror``: a base URL used
    instead of the official host. ``only``: the parts to fetch (e.g. "annotations,val-images" for
    COCO; see :data:`SOURCES`). ``files``: replaces the table entry's files (tests, private mirrors)."""
    if name not in SOURCES:
        raise DownloadError(f"unknown download {name!r}; expected one of {available()}")
    spec = SOURCES[name]
    remotes = list(files) if files is not None else list(spec["files"])
    if only:
        want = {s.strip() for s in (only.split(",") if isinstance(only, str) else only)}
        parts = {r.part for r in remotes}
        unknown = sorted(want - parts)
        if unknown:
            raise DownloadError(f"{name}: unknown part(s) {unknown}; expected some of {sorted(parts)}")
        remotes = [r for r in remotes if r.part in want]
    dest = Path(to) / spec["folder"]
    dest.mkdir(parents=True, exist_ok=True)
    arch_dir = dest / "downloads"
    log: dict[str, Any] = {"name": name, "from": str(from_path) if from_path else None, "mirror": mirror, "files": []}
    if from_path is not None:
        src = Path(from_path).expanduser()
        if not src.exists():
            raise DownloadError(f"--from {src}: does not exist; expected a folder or an archive")
        if src.is_file():
            if not _is_archive(src):
                raise DownloadError(
                    f"--from {src}: not an archive (.zip/.tar.gz/.tgz/.tar); expected an archive or a folder"
                )
            r = next((r for r in remotes if r.filename == src.name), None)
            if r is not None:
                verify(src, r.size, r.sha256, r.md5, str(src))
            extract(src, dest)
            log["files"].append({"file": src.name, "verified": r is not None})
        else:
            found = {r.filename: next(iter(sorted(src.rglob(r.filename))), None) for r in remotes}
            if any(found.values()):
                for r in remotes:
                    p = found[r.filename]
                    if p is None:
                        raise DownloadError(f"--from {src}: {r.filename} is missing (the other archives are there)")
                    verify(p, r.size, r.sha256, r.md5, str(p))
                    if r.extract and extract_archives:
                        extract(p, dest)
                    log["files"].append({"file": r.filename, "verified": True})
            else:
                if src.resolve() == dest.resolve():
                    raise DownloadError(f"--from {src} is the destination itself")
                n = _copy_tree(src, dest, progress)
                log["files"].append({"copied_tree": str(src), "new_files": n})
    else:
        for r in remotes:
            url = f"{mirror.rstrip('/')}/{r.filename}" if mirror else r.url
            archive = arch_dir / r.filename
            done = dest / f".extracted-{r.filename}"
            if done.is_file() and not archive.is_file():
                log["files"].append({"file": r.filename, "skipped": "already extracted"})
                continue
            fetch(
                url,
                archive,
                size=r.size,
                sha256=r.sha256,
                md5=r.md5,
                retries=retries,
                backoff=backoff,
                timeout=timeout,
                progress=progress,
            )
            if r.extract and extract_archives and _is_archive(archive):
                stamp = f"{archive.stat().st_size} {archive.stat().st_mtime_ns}"
                if not (done.is_file() and done.read_text() == stamp):
                    extract(archive, dest)
                    done.write_text(stamp)
            log["files"].append({"file": r.filename, "url": url, "verified": bool(r.sha256 or r.md5 or r.size)})
    log["time"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    (dest / ".fusionkit-download.json").write_text(json.dumps(log, indent=1) + "\n")
    return dest
