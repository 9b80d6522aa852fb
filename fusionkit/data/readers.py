"""Careful readers for raw dataset files: text, JSON, CSV/TSV, JSONL, Parquet, images, WAVs.

Every reader raises :class:`~fusionkit.data.base.DatasetError` with a message that names the file,
the line or record and what was expected (docs/architecture.md, "Rules the code keeps"). They share these rules:

* text is UTF-8; a leading byte-order mark is dropped, CRLF / CR line ends read like LF; a file
  that is not UTF-8 names the line and byte offset of the first bad byte (``encoding=`` reads
  another encoding on purpose);
* CSV is read with the :mod:`csv` module (quoted fields with commas, quotes and line breaks work);
  the header is checked for the required columns, every row for its number of fields;
* media paths are checked with :func:`safe_media_path`: relative, inside the media root after
  resolving ``..`` and symlinks (``../../etc/passwd``, ``/etc/passwd`` and a symlink out are refused);
* images are opened through :func:`open_image` (or :func:`load_rgb`), the one place that turns
  what PIL raises - an unknown format, a truncated file, an image over PIL's decompression-bomb
  limit (``PIL.Image.MAX_IMAGE_PIXELS``; above it PIL warns, above twice it raises; both are
  refused here) - into a DatasetError naming the file and the record; :func:`check_image` opens
  the file that way and verifies it (``decode=True`` decodes every pixel, slower but it also
  catches truncated JPEGs);
* :func:`check_wav` reads the RIFF/WAVE header first (a 0-byte file, or an MP3 renamed to
  ``.wav``, is named as such) and then asks soundfile.
"""

from __future__ import annotations

import csv
import io
import json
import os
import struct
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fusionkit.data.base import DatasetError, safe_media_path

__all__ = [
    "AUDIO_EXTENSIONS",
    "IMAGE_EXTENSIONS",
    "check_audio",
    "check_image",
    "check_wav",
    "image_where",
    "load_rgb",
    "open_image",
    "read_csv",
    "read_json",
    "read_jsonl",
    "read_lines",
    "read_parquet",
    "read_text",
    "safe_media_path",
    "sniff_media_kind",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")


# ----------------------------------------------------------------------------------------- text
def read_text(path: str | os.PathLike, encoding: str = "utf-8", error: type[Exception] = DatasetError) -> str:
    """The file's text, BOM dropped, line ends normalised to ``\\n``.

    A file that is not valid in ``encoding`` raises ``error`` (DatasetError unless a caller names
    its own) naming the line and byte offset."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as e:
        raise error(f"{path}: file not found") from e
    except IsADirectoryError as e:
        raise error(f"{path}: is a folder; expected a file") from e
    enc = "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding
    try:
        text = data.decode(enc)
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        bad = data[e.start : e.start + 1].hex()
        raise error(
            f"{path}:{line}: not valid {encoding} text (byte 0x{bad} at offset {e.start}); "
            f"expected a {encoding} file - re-save it as UTF-8 (or pass encoding=...)"
        ) from e
    except LookupError as e:
        raise error(f"{path}: unknown encoding {encoding!r}") from e
    if text.startswith("\ufeff"):  # a BOM in a non-UTF-8-named encoding
        text = text[1:]
    return text.replace("\r\n", "\n").replace("\r", "\n")


def read_lines(path: str | os.PathLike, encoding: str = "utf-8") -> Iterator[tuple[int, str]]:
    """(line number, line) for the non-blank lines of a text file, trailing whitespace stripped."""
    for lineno, line in enumerate(read_text(path, encoding).split("\n"), 1):
        line = line.rstrip()
        if line.strip():
            yield lineno, line


def read_json(path: str | os.PathLike, encoding: str = "utf-8", error: type[Exception] = DatasetError) -> Any:
    """Parse a JSON file; a missing or unreadable file, or a syntax error (with its line and
    column), raises ``error`` naming the file. Every JSON file fusionkit reads goes through here."""
    text = read_text(path, encoding, error)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{path}:{e.lineno}:{e.colno}: not valid JSON ({e.msg}); expected a JSON document") from e


def read_jsonl(path: str | os.PathLike, encoding: str = "utf-8") -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of a JSON Lines file."""
    for lineno, line in read_lines(path, encoding):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{path}:{lineno}: not valid JSON ({e.msg}); expected one JSON object per line") from e
        if not isinstance(obj, dict):
            raise DatasetError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        yield lineno, obj


def read_csv(
    path: str | os.PathLike,
    required: tuple[str, ...] | list[str] = (),
    *,
    delimiter: str | None = None,
    encoding: str = "utf-8",
    on_bad_row: Callable[[int, str], None] | None = None,
) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Read a CSV (or TSV / pipe-separated) file with a header.

    Returns (columns, [(line number, row)]); values are stripped strings. ``delimiter`` None picks
    ',' / tab / '|' / ';' from the header line. Raises DatasetError for a missing required
    column, a duplicated column name, or a row with the wrong number of fields (when
    ``on_bad_row(line, message)`` is given, such a row is passed to it and left out instead)."""
    path = Path(path)
    text = read_text(path, encoding)
    first = text.split("\n", 1)[0]
    if not first.strip():
        raise DatasetError(f"{path}:1: empty header; expected a CSV header line with the column names")
    if delimiter is None:
        counts = {d: first.count(d) for d in (",", "\t", "|", ";")}
        delimiter = max(counts, key=lambda d: counts[d]) if any(counts.values()) else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, skipinitialspace=True)
    try:
        header = [h.strip() for h in next(reader)]
    except (StopIteration, csv.Error) as e:
        raise DatasetError(f"{path}:1: cannot read the CSV header ({e})") from e
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise DatasetError(f"{path}:1: column(s) {dupes} appear twice in the header {header}")
    missing = [c for c in required if c not in header]
    if missing:
        raise DatasetError(
            f"{path}:1: missing column(s) {missing}; the header has {header}, expected at least {list(required)}"
        )
    rows: list[tuple[int, dict[str, str]]] = []
    try:
        for fields in reader:
            lineno = reader.line_num
            if not fields or all(not f.strip() for f in fields):
                continue
            if len(fields) != len(header):
                msg = (
                    f"{len(fields)} field(s); expected {len(header)} ({delimiter.join(header)}) - "
                    f"quote values that contain {delimiter!r}"
                )
                if on_bad_row is None:
                    raise DatasetError(f"{path}:{lineno}: {msg}")
                on_bad_row(lineno, msg)
                continue
            rows.append((lineno, {h: f.strip() for h, f in zip(header, fields)}))
    except csv.Error as e:
        raise DatasetError(f"{path}:{reader.line_num}: malformed CSV ({e})") from e
    return header, rows


def read_parquet(path: str | os.PathLike) -> tuple[list[str], list[tuple[int, dict[str, Any]]]]:
    """(columns, [(row number, row)]) of a Parquet file; row numbers count from 1.

    Needs pyarrow (or fastparquet); without it raises DatasetError saying so."""
    path = Path(path)
    try:
        import pandas as pd

        df = pd.read_parquet(path)
    except ImportError as e:
        raise DatasetError(
            f"{path}: reading Parquet needs the 'pyarrow' package, which is not installed "
            f"(pip install pyarrow); or save the manifest as CSV or JSONL ({e})"
        ) from e
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path}: not a readable Parquet file ({e})") from e
    cols = [str(c) for c in df.columns]
    rows = []
    for i, rec in enumerate(df.to_dict(orient="records"), 1):
        rows.append((i, {str(k): (None if _isnull(v) else v) for k, v in rec.items()}))
    return cols, rows


def _isnull(v: Any) -> bool:
    try:
        return v is None or (isinstance(v, float) and v != v)
    except Exception:  # pragma: no cover - exotic types
        return False


# ---------------------------------------------------------------------------------------- paths
def sniff_media_kind(value: str) -> str | None:
    """'image' / 'audio' from a file extension, else None."""
    ext = os.path.splitext(value.lower())[1]
    if ext in IMAGE_EXTENSIONS:
        return "image"
    if ext in AUDIO_EXTENSIONS:
        return "audio"
    return None


# ---------------------------------------------------------------------------------------- media
def image_where(path: str | os.PathLike, record: str | None = None) -> str:
    """How image messages name the file: ``path`` or ``path (id 'record')``."""
    return f"{path} (id {record!r})" if record is not None else str(path)


@contextmanager
def open_image(path: str | os.PathLike, record: str | None = None) -> Iterator[Any]:
    """``with open_image(path, record) as im:`` - ``PIL.Image.open`` where every error PIL raises
    while opening, verifying or decoding inside the block becomes a DatasetError naming the file
    (and ``record``, the sample/image id, when given) and what was expected:

    * a missing or empty file, an unknown format, a corrupt or truncated image;
    * an image over PIL's decompression-bomb limit: PIL only warns between
      ``PIL.Image.MAX_IMAGE_PIXELS`` and twice that; both are refused here, as the encoders do."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    where = image_where(path, record)
    try:
        size = path.stat().st_size
    except FileNotFoundError as e:
        raise DatasetError(f"{where}: image file does not exist") from e
    if size == 0:
        raise DatasetError(f"{where}: empty file (0 bytes); expected an image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                yield im
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DatasetError(
            f"{where}: refused as a possible decompression bomb ({e}); expected an image under "
            f"PIL.Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS} pixels - raise that limit if the file is trusted"
        ) from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, struct.error) as e:
        raise DatasetError(f"{where}: corrupt or unreadable image ({e}); expected a JPEG/PNG image") from e


def load_rgb(path: str | os.PathLike, record: str | None = None, size: tuple[int, int] | None = None) -> Any:
    """The image at ``path`` decoded as an RGB ``PIL.Image`` (resized bicubic to ``size`` when
    given); errors as :func:`open_image`."""
    from PIL import Image

    with open_image(path, record) as im:
        rgb = im.convert("RGB")
        return rgb.resize(size, Image.BICUBIC) if size is not None else rgb


def check_image(path: str | os.PathLike, decode: bool = False, record: str | None = None) -> tuple[int, int]:
    """(width, height) of a readable image; DatasetError naming the file (and ``record``) otherwise."""
    with open_image(path, record) as im:
        wh = im.size
        if decode:
            im.load()
        else:
            im.verify()
    return wh


def check_wav(path: str | os.PathLike) -> dict[str, Any]:
    """Header check + soundfile info of a WAV file: {'samplerate', 'channels', 'frames', 'duration'}."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(12)
        size = path.stat().st_size
    except FileNotFoundError as e:
        raise DatasetError(f"{path}: audio file does not exist") from e
    if size == 0:
        raise DatasetError(f"{path}: empty file (0 bytes); expected a RIFF/WAVE audio file")
    if len(head) < 12 or head[:4] not in (b"RIFF", b"RF64") or head[8:12] != b"WAVE":
        what = (
            "an MP3 file"
            if head[:3] == b"ID3" or (head[:1] == b"\xff" and head[1:2] and head[1] & 0xE0 == 0xE0)
            else None
        )
        what = what or ("a FLAC file" if head[:4] == b"fLaC" else "an Ogg file" if head[:4] == b"OggS" else None)
        found = f"it looks like {what}" if what else f"the first bytes are {head[:12]!r}"
        raise DatasetError(f"{path}: not a WAV file ({found}); expected a RIFF/WAVE header")
    return _sf_info(path, "WAV")


def check_audio(path: str | os.PathLike) -> dict[str, Any]:
    """:func:`check_wav` for ``.wav`` files; other formats are checked by soundfile alone."""
    path = Path(path)
    if path.suffix.lower() == ".wav":
        return check_wav(path)
    if not path.is_file():
        raise DatasetError(f"{path}: audio file does not exist")
    if path.stat().st_size == 0:
        raise DatasetError(f"{path}: empty file (0 bytes); expected an audio file")
    return _sf_info(path, path.suffix.lstrip(".").upper() or "audio")


def _sf_info(path: Path, kind: str) -> dict[str, Any]:
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except (RuntimeError, sf.LibsndfileError) as e:
        raise DatasetError(f"{path}: unreadable {kind} audio ({e}); expected a valid audio file") from e
    if info.frames <= 0:
        raise DatasetError(f"{path}: {kind} audio holds no samples; expected a non-empty recording")
    return {
        "samplerate": int(info.samplerate),
        "channels": int(info.channels),
        "frames": int(info.frames),
        "duration": float(info.duration),
    }
