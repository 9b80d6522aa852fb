"""``fusionkit export RUN --format onnx``: the run's fusion model + head, and its image encoder, as
ONNX graphs beside the bundle, each checked against PyTorch on the run's own inputs.

Files (in the bundle folder :func:`fusionkit.export.export_run` writes):

* ``model.onnx``: projectors + fusion + head. Inputs, in sorted modality order: one feature tensor
  per modality (``float32 (batch, D_m)``, named as the modality: the pooled features of its
  encoder), then one **missing-modality mask** per modality (``float32 (batch,)``, named
  ``{modality}_mask``; 1 present, 0 missing - the missing modality's features may be anything,
  zeros by convention). Outputs: ``logits`` and ``probabilities`` (``(batch, classes)``) for a
  classifier, ``prediction`` (``(batch,)``, in the target's units) for a regressor, and
  ``weights`` (``(batch, modalities)``, sorted order) for a method with modality weights.
* ``{modality}.onnx`` for an image modality whose encoder exports: ``pixels`` - the decoded,
  resized and centre-cropped image as ``uint8 (batch, 3, S, S)`` (the preprocessing recorded in
  ``model.json``'s encoder entry; normalisation is inside the graph) - to ``features``
  ``float32 (batch, C)``, the pooled features ``model.onnx`` takes.
* ``onnx.json``: the graphs' inputs and outputs, the opset, the versions that wrote them, what
  each was checked on and the largest difference found, and every modality whose encoder was not
  exported with the reason.

Each graph is exported by torch's ``torch.export``-based exporter (``torch.onnx.export(...,
dynamo=True)``, onnxscript) with a dynamic batch axis, run by onnxruntime on real inputs (the
run's cached test features: all present, then each modality masked out in turn; the test split's
images) and compared with the PyTorch model: a maximum absolute difference over
:data:`TOLERANCE` refuses the export, and nothing of it is left behind. :class:`OnnxModel` runs
the exported graphs with onnxruntime (features checked finite first: the graph does not check).

Every registered fusion method exports (:data:`NOT_EXPORTABLE` lists those that do not, with the
reason; none at present, ``tests/test_onnx_export.py``). Text and audio encoders are not exported
(:data:`ENCODER_NOT_EXPORTED`).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fusionkit import __version__
from fusionkit.bundle import BundleError, ClassifierSpec
from fusionkit.data.base import atomic_write_text
from fusionkit.encoders import Encoder
from fusionkit.model import MultimodalModel
from fusionkit.train import SplitData

FORMAT = "fusionkit.onnx"
VERSION = 1
#: the largest absolute difference between onnxruntime and PyTorch an export may show
TOLERANCE = 1e-4
MODEL_FILE = "model.onnx"
META_FILE = "onnx.json"
#: fusion methods whose graph does not export, with the reason (none: every registered method
#: exports, classifier and regressor; tests/test_onnx_export.py checks each)
NOT_EXPORTABLE: dict[str, str] = {}
#: encoder kinds not exported, with the reason
ENCODER_NOT_EXPORTED = {
    "text": "text encoders are not exported: tokenisation runs outside the graph (use the bundle's encoder)",
    "audio": "audio encoders are not exported: decoding and the spectrogram run outside the graph (use the bundle's encoder)",
    "tabular": "tabular encoders are not exported: their fitted statistics and vocabularies apply outside the graph",
}
#: rows of the test split the fusion graph is checked on; images the image graph is checked on
CHECK_ROWS = 256
CHECK_IMAGES = 8


class OnnxExportError(BundleError):
    """A graph that does not export, or whose onnxruntime outputs differ from PyTorch's."""


# ---------------------------------------------------------------------------- graphs
class FusionGraph(nn.Module):
    """:class:`MultimodalModel` with flat tensor inputs and outputs (the module docstring)."""

    def __init__(self, model: MultimodalModel, modalities: list[str], regression: bool) -> None:
        super().__init__()
        self.model, self.modalities, self.regression = model, list(modalities), regression

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n = len(self.modalities)
        feats = dict(zip(self.modalities, inputs[:n], strict=True))
        mask = dict(zip(self.modalities, inputs[n:], strict=True))
        out = self.model(feats, mask)
        batch = out.logits.shape[0]
        res = (out.logits[:, 0],) if self.regression else (out.logits, torch.softmax(out.logits, dim=1))
        if out.weights is not None:
            res += (torch.stack([out.weights[m].reshape(batch, -1).mean(1) for m in self.modalities], dim=1),)
        return res


class ImageGraph(nn.Module):
    """An image encoder from uint8 pixels (decoded, resized, cropped) to its pooled features."""

    def __init__(self, encoder: Encoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.encoder(pixels)["pooled"]


def output_names(modalities: list[str], regression: bool, weighted: bool) -> list[str]:
    names = ["prediction"] if regression else ["logits", "probabilities"]
    return names + (["weights"] if weighted else [])


def _reason(e: BaseException) -> str:
    """The innermost cause of an export failure, on one line, without terminal colours."""
    while e.__cause__ is not None:
        e = e.__cause__
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:400] if text else '(no message)'}"


def _export(module: nn.Module, args: tuple[torch.Tensor, ...], path: Path, inputs: list[str], outputs: list[str],
            what: str, varargs: bool) -> int:  # fmt: skip
    """Export ``module`` to ``path`` (one file, dynamic batch); its opset. OnnxExportError naming
    ``what`` when torch cannot export it. ``varargs``: ``module.forward`` takes ``*inputs``."""
    try:
        import onnxscript  # noqa: F401 - the exporter needs it; say so before torch does
    except ImportError as e:  # pragma: no cover - a pinned dependency
        raise OnnxExportError(f"{what}: the ONNX export needs onnx, onnxscript and onnxruntime (pinned)") from e
    batch = torch.export.Dim("batch", min=1)
    dynamic = tuple({0: batch} for _ in args)
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module.eval(), args, input_names=inputs, output_names=outputs, dynamo=True,
                dynamic_shapes=(dynamic,) if varargs else dynamic, optimize=True, verbose=False,
            )  # fmt: skip
            program.save(str(path), external_data=False)
    except Exception as e:  # noqa: BLE001 - the exporter raises many types; all mean "does not export"
        raise OnnxExportError(f"{what}: does not export to ONNX ({_reason(e)})") from e
    return int(program.model.opset_imports.get("", 0))


def _session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _max_diff(ref: tuple[torch.Tensor, ...], got: list[np.ndarray]) -> float:
    return max(float(np.abs(r.detach().float().numpy() - g).max(initial=0.0)) for r, g in zip(ref, got, strict=True))


# ---------------------------------------------------------------------------- export
def export_fusion(model: MultimodalModel, spec: ClassifierSpec, test: SplitData, path: Path) -> dict[str, Any]:
    """Export the fusion model + head to ``path`` and check it on ``test``'s features; its entry
    of ``onnx.json``."""
    what = f"fusion method {spec.fusion!r}"
    if spec.fusion in NOT_EXPORTABLE:
        raise OnnxExportError(f"{what}: not exported to ONNX ({NOT_EXPORTABLE[spec.fusion]})")
    mods = sorted(spec.in_dims)
    n = min(len(test), CHECK_ROWS)
    if n < 1:
        raise OnnxExportError(f"{what}: no test rows to check the ONNX graph on")
    feats = [test.features[m][:n].float() for m in mods]
    ones = [torch.ones(n) for _ in mods]
    graph = FusionGraph(model.eval(), mods, spec.regression).eval()
    with torch.inference_mode():
        weighted = model(dict(zip(mods, feats, strict=True))).weights is not None
    outs = output_names(mods, spec.regression, weighted)
    inputs = mods + [f"{m}_mask" for m in mods]
    opset = _export(graph, tuple(feats + ones), path, inputs, outs, what, varargs=True)
    sess = _session(path)
    cases = {"all present": ones}
    for i, m in enumerate(mods):  # each modality missing in turn: its features zeroed, its mask 0
        cases[f"{m} missing"] = [torch.zeros(n) if j == i else ones[j] for j in range(len(mods))]
    worst = 0.0
    for case, masks in cases.items():
        x = [torch.zeros_like(f) if float(mk[0]) == 0 else f for f, mk in zip(feats, masks, strict=True)]
        with torch.inference_mode():
            ref = graph(*x, *masks)
        got = sess.run(outs, {k: v.numpy() for k, v in zip(inputs, x + masks, strict=True)})
        diff = _max_diff(ref, got)
        if not diff <= TOLERANCE:
            raise OnnxExportError(
                f"{what}: onnxruntime differs from PyTorch by {diff:.3g} (> {TOLERANCE}) on the test split ({case})"
            )
        worst = max(worst, diff)
    shapes = {m: ["batch", int(spec.in_dims[m])] for m in mods}
    return {"file": path.name, "opset": opset, "features": {m: {"input": m, "shape": shapes[m]} for m in mods},
            "mask": {m: {"input": f"{m}_mask", "shape": ["batch"], "present": 1.0, "missing": 0.0} for m in mods},
            "outputs": outs, "task": "regression" if spec.regression else "classification",
            "class_names": list(spec.class_names), "modalities": mods,
            "check": {"rows": n, "cases": list(cases), "max_abs_diff": worst, "tolerance": TOLERANCE}}  # fmt: skip


def export_image_encoder(modality: str, encoder: Encoder, pixels: torch.Tensor, path: Path) -> dict[str, Any]:
    """Export an image encoder (uint8 pixels -> pooled features) to ``path`` and check it on
    ``pixels`` (real images, decoded as the encoder decodes them); its entry of ``onnx.json``."""
    what = f"image encoder {encoder.name!r} of modality {modality!r}"
    graph = ImageGraph(encoder.eval()).eval()
    opset = _export(graph, (pixels,), path, ["pixels"], ["features"], what, varargs=False)
    with torch.inference_mode():
        ref = graph(pixels)
    diff = _max_diff((ref,), _session(path).run(["features"], {"pixels": pixels.numpy()}))
    if not diff <= TOLERANCE:
        raise OnnxExportError(f"{what}: onnxruntime differs from PyTorch by {diff:.3g} (> {TOLERANCE}) on real images")
    size = int(pixels.shape[-1])
    return {"file": path.name, "opset": opset, "input": "pixels", "dtype": "uint8", "shape": ["batch", 3, size, size],
            "output": "features", "features_of": modality, "preprocessing": encoder.preprocessing(),
            "check": {"images": int(pixels.shape[0]), "max_abs_diff": diff, "tolerance": TOLERANCE}}  # fmt: skip


def _images(encoder: Encoder, values: list[Any], root: Path, modality: str) -> torch.Tensor:
    items = []
    for v in values:
        try:
            items.append(encoder.load(v, root))
        except Exception:  # noqa: BLE001 - a bad image is skipped; the others check the graph
            continue
        if len(items) == CHECK_IMAGES:
            break
    if not items:
        raise OnnxExportError(f"image modality {modality!r}: no readable test image under {root} to check the graph on")
    return encoder.collate(items).contiguous()


def export_onnx(folder: str | os.PathLike, model: MultimodalModel, spec: ClassifierSpec, encoders: dict[str, Encoder],
                kinds: dict[str, str], test: SplitData, images: dict[str, tuple[list[Any], Path]]) -> Path:  # fmt: skip
    """Write ``model.onnx``, an ONNX graph per image encoder that exports and ``onnx.json`` into
    the bundle ``folder`` (module docstring); returns ``onnx.json``'s path. ``kinds``: modality ->
    kind; ``test``: the run's cached test features; ``images``: image modality -> (its test
    values, the folder they are relative to). OnnxExportError when the fusion graph does not
    export or differs from PyTorch; an image encoder that does not is listed, not fatal."""
    folder = Path(folder)
    tmp = folder / f".onnx-{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    try:
        meta: dict[str, Any] = {"format": FORMAT, "version": VERSION, "fusionkit_version": __version__,
                                "torch_version": torch.__version__, "versions": _versions()}  # fmt: skip
        meta["model"] = export_fusion(model, spec, test, tmp / MODEL_FILE)
        meta["encoders"], meta["not_exported"] = {}, {}
        for m in sorted(spec.in_dims):
            kind = kinds[m]
            if kind != "image":
                meta["not_exported"][m] = ENCODER_NOT_EXPORTED.get(kind, f"{kind} encoders are not exported")
                continue
            values, root = images.get(m, ([], folder))
            try:
                pixels = _images(encoders[m], values, root, m)
                meta["encoders"][m] = export_image_encoder(m, encoders[m], pixels, tmp / f"{m}.onnx")
            except OnnxExportError as e:
                meta["not_exported"][m] = str(e)
        for f in sorted(tmp.glob("*.onnx")):
            os.replace(f, folder / f.name)
            written.append(folder / f.name)
        out = folder / META_FILE
        atomic_write_text(out, json.dumps(meta, indent=1, ensure_ascii=False) + "\n")
        return out
    except BaseException:
        for f in written:
            f.unlink(missing_ok=True)
        raise
    finally:
        for f in tmp.glob("*"):
            f.unlink()
        tmp.rmdir()


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import onnxscript

    return {"onnx": onnx.__version__, "onnxscript": onnxscript.__version__, "onnxruntime": onnxruntime.__version__}


# ---------------------------------------------------------------------------- running
@dataclass
class OnnxModel:
    """The exported graphs of a bundle, run by onnxruntime (no PyTorch model needed)."""

    folder: Path
    meta: dict[str, Any]
    sessions: dict[str, Any] = field(default_factory=dict, repr=False)  # file -> onnxruntime session

    @classmethod
    def load(cls, folder: str | os.PathLike) -> OnnxModel:
        folder = Path(folder)
        path = folder / META_FILE
        if not path.is_file():
            raise BundleError(f"{path}: not found; export the run with `fusionkit export RUN --format onnx`")
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise BundleError(f"{path}: not readable JSON ({e})") from e
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise BundleError(f"{path}: not a fusionkit ONNX description (format {FORMAT!r})")
        if not isinstance(meta.get("version"), int) or meta["version"] > VERSION:
            raise BundleError(f"{path}: version {meta.get('version')!r}; this fusionkit reads up to {VERSION}")
        return cls(folder, meta)

    def _run(self, file: str, outputs: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        if file not in self.sessions:
            self.sessions[file] = _session(self.folder / file)
        return self.sessions[file].run(outputs, feeds)

    def predict(
        self, features: dict[str, np.ndarray], mask: dict[str, np.ndarray] | None = None
    ) -> dict[str, np.ndarray]:
        """The fusion graph on ``features`` (modality -> ``(batch, D)``; a missing modality may be
        left out: zeros, masked) and ``mask`` (modality -> ``(batch,)``; default: present where
        given); output name -> array."""
        m = self.meta["model"]
        mods = m["modalities"]
        given = [k for k in mods if k in features]
        unknown = sorted(set(features) - set(mods))
        if unknown or not given:
            raise ValueError(f"features for {sorted(features)}; the model takes {mods}")
        batch = int(np.asarray(features[given[0]]).shape[0])
        feeds: dict[str, np.ndarray] = {}
        for k in mods:
            dim = int(m["features"][k]["shape"][1])
            x = np.asarray(features[k], dtype=np.float32) if k in features else np.zeros((batch, dim), np.float32)
            if x.shape != (batch, dim):
                raise ValueError(f"modality {k!r}: features of shape {x.shape}; expected ({batch}, {dim})")
            if not np.isfinite(x).all():
                raise ValueError(f"modality {k!r}: non-finite features; zero a missing modality and mask it instead")
            mk = (mask or {}).get(k)
            mk = np.full(batch, float(k in features), np.float32) if mk is None else np.asarray(mk, dtype=np.float32)
            if mk.shape != (batch,):
                raise ValueError(f"mask of {k!r}: shape {mk.shape}; expected ({batch},)")
            feeds[k], feeds[f"{k}_mask"] = x, mk
        return dict(zip(m["outputs"], self._run(m["file"], m["outputs"], feeds), strict=True))

    def encode_image(self, modality: str, pixels: np.ndarray) -> np.ndarray:
        """An image graph on ``uint8 (batch, 3, S, S)`` pixels: the pooled features."""
        enc = self.meta["encoders"].get(modality)
        if enc is None:
            why = self.meta.get("not_exported", {}).get(modality, "no such image modality")
            raise ValueError(f"modality {modality!r} has no ONNX encoder: {why}")
        return self._run(enc["file"], ["features"], {"pixels": np.ascontiguousarray(pixels, dtype=np.uint8)})[0]


__all__ = ["NOT_EXPORTABLE", "OnnxExportError", "OnnxModel", "TOLERANCE", "export_onnx"]
