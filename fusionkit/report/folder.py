"""A run folder as the report reads it (:class:`RunFolder`: ``run.json``, the local mirror, its
tables and figures, each notebook's state and what is missing), and the pieces of the page made
from it: figures embedded compressed (:func:`compress_image`), tables, grids, sections."""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from fusionkit.tracking import read_mirror

STEP_ORDER = ["01_data_prep", "02_feature_extraction", "03_fusion_comparison", "04_train", "05_evaluate", "06_report"]
#: rows a long table shows inside its ``<details>`` (the CSV beside the page has them all)
LONG_ROWS = 120


# ------------------------------------------------------------------------------------ embedding
def compress_image(data: bytes, *, prefer_lossless: float = 1.25) -> tuple[str, bytes]:
    """A figure's PNG made small enough to embed: the smaller of a 256-colour palette PNG (sharp
    text and lines) and a WebP at quality 80 (photographs, attention maps), the PNG kept unless
    the WebP is more than ``prefer_lossless`` times smaller. Returns (MIME type, bytes)."""
    from PIL import Image

    img = Image.open(io.BytesIO(data))
    if img.mode in ("RGBA", "LA", "P"):
        rgba = img.convert("RGBA")
        img = Image.new("RGB", rgba.size, "white")
        img.paste(rgba, mask=rgba.getchannel("A"))
    else:
        img = img.convert("RGB")
    png = io.BytesIO()
    img.quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(png, "PNG", optimize=True)
    webp = io.BytesIO()
    img.save(webp, "WEBP", quality=80, method=4)
    if len(png.getvalue()) <= prefer_lossless * len(webp.getvalue()):
        return "image/png", png.getvalue()
    return "image/webp", webp.getvalue()


def data_uri(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def thumbnail(path: str | Path, size: int = 112) -> str | None:
    """A sample's image as a small embedded JPEG (a data URI), or None when it cannot be read."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((size, size))
            out = io.BytesIO()
            im.save(out, "JPEG", quality=82, optimize=True)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    return data_uri("image/jpeg", out.getvalue())


# ------------------------------------------------------------------------------------ formatting
def pct(v: Any) -> str:
    return "?" if v is None or pd.isna(v) else f"{float(v):.3f}"


def fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return "" if v is None else str(v)
    if isinstance(v, float):
        if pd.isna(v):
            return ""
        return f"{v:.4g}" if abs(v) >= 1000 or (v != 0 and abs(v) < 1e-3) else f"{v:.3f}"
    return str(v)


def esc(v: Any) -> str:
    return html.escape(fmt(v))


def _td(v: Any) -> str:
    number = isinstance(v, (int, float)) and not isinstance(v, bool)
    return f"<td class='n'>{esc(v)}</td>" if number else f"<td>{esc(v)}</td>"


def table_html(df: pd.DataFrame, cls: str = "tbl") -> str:
    """A table that scrolls inside its own box when it is wider than the page."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(_td(v) for v in row) + "</tr>" for row in df.itertuples(index=False))
    return f"<div class='scroll'><table class='{cls}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


def mean_ci(df: pd.DataFrame, metric: str) -> pd.Series:
    mean, ci = df[f"{metric}_mean"], df.get(f"{metric}_ci95")
    if ci is None:
        return mean.map(fmt)
    return [f"{fmt(m)} ± {fmt(c)}" if not pd.isna(c) else fmt(m) for m, c in zip(mean, ci)]


def grid_html(df: pd.DataFrame, index: str, columns: str, values: str, caption: str) -> str:
    """A long table (``index``, ``columns``, ``values``) as a grid, each cell shaded by its value
    (darker = higher), e.g. missing_modality as method x dropped."""
    pivot = df.pivot_table(index=index, columns=columns, values=values, aggfunc="mean", sort=False)
    lo, hi = float(pivot.min().min()), float(pivot.max().max())
    head = f"<th>{html.escape(index)} \\ {html.escape(columns)}</th>" + "".join(
        f"<th>{html.escape(str(c))}</th>" for c in pivot.columns
    )
    rows = []
    for name, row in pivot.iterrows():
        cells = []
        for v in row:
            if pd.isna(v):
                cells.append("<td></td>")
                continue
            t = 0.0 if hi == lo else (float(v) - lo) / (hi - lo)
            cells.append(f"<td class='n' style='background:hsl(205,60%,{96 - 40 * t:.0f}%)'>{esc(float(v))}</td>")
        rows.append(f"<tr><th>{html.escape(str(name))}</th>{''.join(cells)}</tr>")
    return (
        f"<div class='scroll'><table class='tbl grid'><caption>{html.escape(caption)}</caption>"
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
    )


# ------------------------------------------------------------------------------------ the run folder
@dataclass
class RunFolder:
    """A run folder as the page reads it: ``run.json``, the mirror, its tables and figures; what
    the page has shown (so that nothing logged is left out) and the problems it found."""

    dir: Path
    state: dict[str, Any]
    records: list[dict[str, Any]]
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)
    figures: dict[str, dict[str, Any]] = field(default_factory=dict)
    shown: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)

    @classmethod
    def read(cls, run_dir: Path) -> RunFolder:
        state: dict[str, Any] = {}
        problems = []
        path = run_dir / "run.json"
        if path.exists():
            try:
                state = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                problems.append(f"{path}: not valid JSON ({e}); the notebooks' states are unknown")
        try:
            records = read_mirror(run_dir)
        except ValueError as e:  # a malformed line: the page says so and shows nothing of the mirror
            records, problems = [], [*problems, f"{e}; nothing of the mirror is shown"]
        if not (run_dir / "metrics.jsonl").exists():
            problems.append(f"{run_dir / 'metrics.jsonl'} does not exist: no notebook logged anything")
        run = cls(run_dir, state, records, problems=problems)
        for r in records:
            if r.get("run", r.get("step")) != r.get("step"):
                continue
            if r.get("kind") == "table":
                run.tables[r["key"]] = r
            elif r.get("kind") == "figure":
                run.figures[r["key"]] = r
        return run

    # what the notebooks logged
    def summary(self, step: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for r in self.records:
            if r.get("kind") == "summary" and r.get("step") == step and r.get("run", step) == step:
                out.update(r["data"])
        return out

    def config(self, step: str) -> dict[str, Any]:
        for r in self.records:
            if r.get("kind") == "config" and r.get("step") == step and r.get("run", step) == step:
                return r.get("data", {})
        return self.state.get("parameters", {}).get(step, {})

    def table(self, key: str) -> pd.DataFrame | None:
        rec = self.tables.get(key)
        if rec is None:
            return None
        self.shown.add(f"table:{key}")
        path = self.dir / rec["path"]
        try:
            return pd.read_csv(path)
        except FileNotFoundError:
            self.problems.append(f"table {key} was logged by {rec['step']} but {path} is missing")
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
            self.problems.append(f"table {key}: {path} is not a readable CSV ({type(e).__name__}: {e})")
        return None

    def figure(self, key: str, caption: str = "") -> str:
        """The figure embedded (compressed), with its caption; '' when the run has none."""
        rec = self.figures.get(key)
        if rec is None:
            return ""
        self.shown.add(f"figure:{key}")
        path = self.dir / rec["path"]
        if not path.exists():
            self.problems.append(f"figure {key} was logged by {rec['step']} but {path} is missing")
            return ""
        try:
            mime, data = compress_image(path.read_bytes())
        except OSError as e:
            self.problems.append(f"figure {key}: {path} is not a readable image ({e})")
            return ""
        return figure_html(key, data_uri(mime, data), caption)

    def long(self, *keys: str) -> str:
        """Each table collapsed in a ``<details>`` (up to :data:`LONG_ROWS` rows), its CSV linked."""
        parts = []
        for key in keys:
            df = self.table(key)
            if df is None:
                continue
            rel = html.escape(str(Path(self.tables[key]["path"])))
            shown = "" if len(df) <= LONG_ROWS else f"; the first {LONG_ROWS} shown"
            parts.append(
                f"<details><summary><code>{html.escape(key)}</code> ({len(df)} rows{shown})"
                f" &middot; <a href='{rel}' download>CSV</a></summary>{table_html(df.head(LONG_ROWS))}</details>"
            )
        return "".join(parts)

    # the notebooks' states
    def status(self, step: str) -> tuple[str, str]:
        """(done | failed | pending | running | absent, the error or '')."""
        info = self.state.get("notebooks", {}).get(step)
        if info is not None:
            return str(info.get("status", "pending")), str(info.get("error", ""))
        ends = [
            r for r in self.records if r.get("kind") == "end" and r.get("step") == step and r.get("run", step) == step
        ]
        if ends:
            code = ends[-1].get("exit_code", 0)
            return ("done", "") if code == 0 else ("failed", f"exit code {code}")
        return "absent", ""

    def missing(self, *steps: str, what: str = "", cls: str = "warn missing") -> str:
        """A note naming the notebooks of ``steps`` that did not finish, and why; '' when all did."""
        notes = []
        for step in steps:
            status, error = self.status(step)
            if status == "done":
                continue
            why = {
                "failed": f"failed ({error})" if error else "failed",
                "running": "was still running or was interrupted",
                "pending": "did not run (an earlier notebook failed, or it was left out with --only)",
                "absent": "left no record in this run folder",
            }.get(status, status)
            link = f" (<a href='notebooks/{step}.ipynb'>executed notebook</a>)" if status == "failed" else ""
            notes.append(f"<code>{html.escape(step)}</code> {html.escape(why)}{link}")
        if not notes:
            return ""
        return f"<p class='{cls}'>Missing{' ' + html.escape(what) if what else ''}: {'; '.join(notes)}.</p>"


def figure_html(key: str, uri: str, caption: str) -> str:
    text = f"{html.escape(caption)} " if caption else ""
    return (
        f"<figure id='fig-{html.escape(key)}'><img src='{uri}' alt='{html.escape(key)}'>"
        f"<figcaption>{text}<code>{html.escape(key)}</code></figcaption></figure>"
    )


@dataclass
class Section:
    id: str
    title: str
    answer: str  # HTML: the one-line answer
    body: list[str]
    short: str = ""  # its name in the page's navigation

    def render(self) -> str:
        answer = f"<p class='answer'>{self.answer}</p>" if self.answer else ""
        return f"<section id='{self.id}'><h2>{html.escape(self.title)}</h2>{answer}{''.join(self.body)}</section>"
