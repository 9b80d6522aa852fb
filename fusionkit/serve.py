"""``fusionkit serve BUNDLE --port N``: an exported bundle as an HTTP JSON API (FastAPI + uvicorn).

A classifier's bundle or a task's (``fusionkit export --task``: a caption for an image, the answer
to a question about an image - fields ``image`` and ``question`` - or the top gallery items for a
query, with ``--gallery DIR`` from ``fusionkit gallery``; ``--beam`` captions with beam search).

* ``GET /health`` - ``{"status": "ok"}`` once the model is loaded (it is loaded once, at start);
* ``GET /info`` - what the model needs (modalities, their kinds and manifest columns) and what it
  was trained on and reached (:meth:`fusionkit.predict.Predictor.info`);
* ``POST /predict`` - one sample: ``multipart/form-data`` with a field per modality (files for
  image / audio, text fields for text; a field may be named after the modality or its kind), or
  ``application/json`` ``{"caption": "..."}`` for text and tabular records. Answers the record
  ``fusionkit predict`` writes in JSONL (a classifier: prediction, probabilities, weights, missing;
  captioning: prediction; VQA: prediction, probability, answers; retrieval: matches).

A bad request gets a 4xx with the problem named (``{"error": ...}``), never a traceback: 413 for a
body over ``max_body_bytes`` or an image over ``max_pixels``, 411 without a Content-Length, 415
for another content type, 422 for an unknown field, an image or recording that cannot be read,
an empty text. Predictions run one at a time (the model and encoders are shared; on a CPU the
forward already uses every core).
"""

from __future__ import annotations

import json
import tempfile
import threading
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile

from fusionkit.data.base import INLINE_KINDS, DatasetError
from fusionkit.data.readers import check_image
from fusionkit.predict import Inputs, Predictor, Row
from fusionkit.tasks.predict import load_predictor

MAX_BODY_BYTES = 20 * 1024 * 1024
MAX_PIXELS = 40_000_000


class RequestError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _field_modality(predictor: Predictor, name: str) -> str:
    if name in predictor.kinds:
        return name
    if name in ("image", "text", "audio", "tabular"):
        try:
            return predictor.modality_of(name)
        except DatasetError as e:
            raise RequestError(422, f"field {name!r}: {e}") from e
    takes = ", ".join(f"{m} ({k})" for m, k in sorted(predictor.kinds.items()))
    raise RequestError(422, f"field {name!r} unknown; the model takes {takes}")


def create_app(predictor: Predictor, max_body_bytes: int = MAX_BODY_BYTES, max_pixels: int = MAX_PIXELS):
    """The FastAPI application serving ``predictor`` (module docstring)."""
    what = _what(predictor)
    app = FastAPI(title="fusionkit", description="a fusionkit model bundle", version=" ".join(what.values()))
    lock = threading.Lock()

    @app.middleware("http")
    async def limits(request: Request, call_next):
        if request.method == "POST":
            length = request.headers.get("content-length")
            if length is None:
                return JSONResponse({"error": "a Content-Length header is required"}, status_code=411)
            if not length.isdigit() or int(length) > max_body_bytes:
                return JSONResponse(
                    {"error": f"request body of {length} bytes is over the limit of {max_body_bytes} bytes"},
                    status_code=413,
                )
        return await call_next(request)

    @app.exception_handler(RequestError)
    async def refused(request: Request, e: RequestError):
        return JSONResponse({"error": e.message}, status_code=e.status)

    @app.exception_handler(UnicodeDecodeError)
    async def not_utf8(request: Request, e: UnicodeDecodeError):
        return JSONResponse({"error": f"text is not valid UTF-8 ({e.reason})"}, status_code=422)

    @app.exception_handler(Exception)
    async def internal(request: Request, e: Exception):  # never a traceback to the client
        return JSONResponse({"error": f"internal error ({type(e).__name__})"}, status_code=500)

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", **what}

    @app.get("/info")
    def info() -> dict[str, Any]:
        return predictor.info()

    @app.post("/predict")
    async def predict(request: Request):
        ctype = request.headers.get("content-type", "")
        with tempfile.TemporaryDirectory(prefix="fusionkit-serve-") as tmp:
            values: dict[str, Any] = {}
            if ctype.startswith("multipart/form-data"):
                try:
                    form = await request.form(max_files=16, max_fields=64)
                except Exception as e:  # noqa: BLE001 - a malformed multipart body
                    return JSONResponse({"error": f"malformed multipart body ({e})"}, status_code=400)
                for name, value in form.multi_items():
                    m = _field_modality(predictor, name)
                    kind = predictor.kinds[m]
                    if isinstance(value, UploadFile):
                        if kind in INLINE_KINDS:
                            values[m] = (
                                (await value.read()).decode("utf-8", errors="strict") if kind == "text" else None
                            )
                            continue
                        suffix = Path(value.filename or "").suffix.lower()[:8]
                        rel = f"{m}{suffix}"
                        (Path(tmp) / rel).write_bytes(await value.read())
                        if kind == "image":
                            try:
                                w, h = check_image(Path(tmp) / rel)
                            except DatasetError as e:
                                msg = str(e).replace(str(Path(tmp) / rel), f"field {name!r} ({value.filename})")
                                return JSONResponse({"error": msg}, status_code=422)
                            if w * h > max_pixels:
                                return JSONResponse({"error": f"field {name!r}: image of {w}x{h} pixels is over the "
                                                     f"limit of {max_pixels} pixels"}, status_code=413)  # fmt: skip
                        values[m] = rel
                    elif kind in INLINE_KINDS:
                        values[m] = json.loads(value) if kind == "tabular" else value
                    else:
                        return JSONResponse({"error": f"field {name!r}: send the {kind} file as a file upload"},
                                            status_code=422)  # fmt: skip
            elif ctype.startswith("application/json"):
                try:
                    body = await request.json()
                except ValueError as e:
                    return JSONResponse({"error": f"body is not valid JSON ({e})"}, status_code=400)
                if not isinstance(body, dict):
                    return JSONResponse({"error": "expected a JSON object {field: value}"}, status_code=422)
                for name, value in body.items():
                    m = _field_modality(predictor, name)
                    if predictor.kinds[m] not in INLINE_KINDS:
                        return JSONResponse({"error": f"field {name!r}: {predictor.kinds[m]} files are sent as "
                                             "multipart/form-data uploads"}, status_code=422)  # fmt: skip
                    values[m] = value
            else:
                return JSONResponse({"error": f"content type {ctype or 'none'!r}; expected multipart/form-data or "
                                     "application/json"}, status_code=415)  # fmt: skip
            if not values:
                return JSONResponse({"error": f"no input; the model takes {sorted(predictor.kinds)}"}, status_code=422)
            inputs = Inputs([Row("request", "request", values)], Path(tmp), "request")
            with lock:
                result = predictor.predict(inputs)
        if result.issues:
            msg = result.issues[0].message.replace(tmp + "/", "").replace(tmp, "")
            return JSONResponse({"error": msg}, status_code=422)
        return result.records[0]

    return app


def _what(predictor: Predictor) -> dict[str, str]:
    """What ``/health`` names: a classifier's fusion method, or a task bundle's task and model."""
    task = getattr(predictor, "task", None)
    return {"task": task, "model": predictor.spec.model} if task else {"fusion": str(predictor.spec.fusion)}


def serve(bundle: str, host: str = "127.0.0.1", port: int = 8000, device: str | None = None,
          gallery: str | None = None, beam: bool = False, rerank: bool = True, **limits: Any) -> None:  # fmt: skip
    """Load the bundle once (a classifier's or a task's; ``gallery`` and ``rerank`` for retrieval,
    ``beam`` for captioning) and serve it with uvicorn until interrupted."""
    import uvicorn

    predictor = load_predictor(bundle, device=device, gallery=gallery, beam=beam, rerank=rerank)
    uvicorn.run(create_app(predictor, **limits), host=host, port=port, log_level="info", workers=1)


__all__ = ["MAX_BODY_BYTES", "MAX_PIXELS", "create_app", "serve"]
