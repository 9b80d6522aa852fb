"""Records -> features, the loop every encoder runs for inference: decoding in DataLoader
workers (:class:`_Records`, bad records reported, not raised), batching on the encoder's
measured per-device settings (``Encoder.perf``: batch size, decode group, workers, memory
format; benchmarks/README.md), the encoder's inference form under inference mode.
:mod:`fusionkit.features` runs it into the feature cache; :func:`encode_records` runs it on
records that are not a dataset's (``fusionkit predict`` and ``serve``, no cache).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from fusionkit.data.base import INLINE_KINDS
from fusionkit.encoders.base import Encoder, InputError
from fusionkit.progress import progress as progress_bar
from fusionkit.runtime import available_cpus, cpu_threads, tune_allocator, work_threads

#: fewer records than this are decoded in the calling process (:func:`encode_records`)
SMALL = 64


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class _Records(torch.utils.data.Dataset):
    """Record i -> (i, decoded input, None) or (i, None, (reason, file)); runs in DataLoader workers."""

    def __init__(self, encoder: Encoder, values: list[Any], root: Path, kind: str) -> None:
        self.encoder, self.values, self.root, self.kind = encoder, values, root, kind

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, i: int):
        try:
            return i, self.encoder.load(self.values[i], self.root), None
        except InputError as e:
            f = e.path or (None if self.kind in INLINE_KINDS else str(self.root / str(self.values[i])))
            return i, None, (e.reason, f)


class _Collate:
    """A loaded group of records -> ``([(indices, batch), ...], bad)``: the readable records
    collated into forward batches of ``batch_size`` (one per group unless decoding runs in larger
    groups than the forward, see ``decode_group``)."""

    def __init__(self, encoder: Encoder, batch_size: int) -> None:
        self.encoder, self.batch_size = encoder, batch_size

    def __call__(self, items):
        ok = [(i, x) for i, x, err in items if err is None]
        bad = [(i, err) for i, x, err in items if err is not None]
        bs = self.batch_size
        subs = [ok[s : s + bs] for s in range(0, len(ok), bs)]
        return [([i for i, _ in sub], self.encoder.collate([x for _, x in sub])) for sub in subs], bad


def shared_inputs(values: Sequence[Any], order: Iterable[int]) -> dict[int, list[int]]:
    """``{first index: [itself, then every later index naming the same input]}`` over ``order``:
    the records a pass decodes and encodes once (a manifest of pairs or of questions repeats its
    images). The same input is the same path or text; tabular records and other values are never
    shared. Every index of ``order`` stands in exactly one list."""
    first: dict[str, int] = {}
    out: dict[int, list[int]] = {}
    for i in order:
        v = values[i]
        if not isinstance(v, (str, os.PathLike)):
            out[i] = [i]
            continue
        key = str(v)
        if key in first:
            out[first[key]].append(i)
        else:
            first[key] = i
            out[i] = [i]
    return out


def batch_indices(
    encoder: Encoder, values: list[Any], chunks: Sequence[Sequence[int]], batch_size: int
) -> list[list[int]]:
    """Index batches that never cross a chunk; within a chunk, texts grouped by length (less padding)."""
    out = []
    for rng in chunks:
        idx = list(rng)
        hints = [encoder.length_hint(values[i]) for i in idx]
        if all(h is not None for h in hints):
            idx = [i for _, i in sorted(zip(hints, idx, strict=True), key=lambda t: (-t[0], t[1]))]
        out.extend(idx[s : s + batch_size] for s in range(0, len(idx), batch_size))
    return out


def settings(
    enc: Encoder, dev: torch.device, batch_size: int | None, num_workers: int | None
) -> tuple[int, int, int, int, bool]:
    """(threads, forward batch size, DataLoader workers, decode group, channels_last) from the
    encoder's measured ``perf`` entry for the device, overridden by ``batch_size`` / ``num_workers``."""
    threads = work_threads()
    perf = enc.perf.get(dev.type, enc.perf["cpu"])
    bs = int(batch_size or perf["batch_size"])
    n_workers = workers(perf["num_workers"] if num_workers is None else num_workers, dev, threads)
    # Decoding in the main process (no spare cores) runs in groups of ``decode_group`` records,
    # each then forwarded in batches of ``bs``: alternating decode and forward every few images
    # costs the forward its warm caches (1-8% of the throughput in measurements; benchmarks/README.md).
    group = max(bs, int(perf.get("decode_group") or bs)) if n_workers == 0 else bs
    return threads, bs, n_workers, group, bool(perf.get("channels_last"))


def workers(n: int | str, device: torch.device, threads: int) -> int:
    """DataLoader workers from an encoder's ``perf`` entry; cores are those this process may use
    (:func:`fusionkit.runtime.available_cpus`), ``threads`` the forward's intra-op threads.

    ``"auto"``: decode on the cores the model leaves free. On CPU the forward already uses
    ``threads`` cores, and a worker that preempts one of them stalls the others at their next
    barrier, so only spare cores get workers (at most 2; none on a 2-core machine). On a GPU the
    host only decodes: one worker per core but one, at most 8.
    ``"cores"``: the encoder's forward is negligible (log-mel): one worker per core, at most 4."""
    cores = available_cpus()
    if n == "auto":
        if device.type == "cpu":
            return max(0, min(2, cores - threads))
        return max(0, min(8, cores - 1))
    if n == "cores":
        return min(4, cores) if cores > 1 else 0
    return int(n)


def loader(enc: Encoder, values: list[Any], root: Path, kind: str, batches: list[list[int]], batch_size: int,
            num_workers: int, device: torch.device) -> torch.utils.data.DataLoader:  # fmt: skip
    """Records decoded (in workers when ``num_workers``) and collated in forward batches (:class:`_Collate`)."""
    return torch.utils.data.DataLoader(
        _Records(enc, values, root, kind),
        batch_sampler=batches,
        collate_fn=_Collate(enc, batch_size),
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )


@contextlib.contextmanager
def inference(enc: Encoder, device: torch.device, channels_last: bool):
    """The encoder on ``device`` in eval mode, as its inference form (``runner``), under inference
    mode (bf16 autocast on CUDA); put back where it was afterwards."""
    first = next(iter(enc.parameters()), None)
    home = first.device if first is not None else torch.device("cpu")
    was_training = enc.training
    enc.eval()
    if home != device:
        enc.to(device)
    try:
        runner = _inference_form(enc, channels_last)
        with _inference_mode(device):
            yield runner
    finally:
        if home != device:
            enc.to(home)
        enc.train(was_training)


def _inference_form(enc: Encoder, channels_last: bool) -> Encoder:
    # channels_last where measured faster; kept afterwards (converting back and forth costs ~0.1 s
    # per call, and the weights' memory format changes no result beyond float rounding)
    if channels_last and getattr(enc, "memory_format", None) is not torch.channels_last:
        enc.set_memory_format(torch.channels_last)
    # the encoder's inference form (EfficientNet-Lite0: BatchNorm folded into the convolutions)
    return enc.inference_module()


@contextlib.contextmanager
def _inference_mode(device: torch.device):
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    with torch.inference_mode(), autocast:
        yield


def inference_runner(enc: Encoder, device: str | torch.device | None = None) -> Encoder:
    """The encoder moved to ``device`` (eval mode) in the inference form extraction runs, made
    once for a long-lived user (:mod:`fusionkit.predict`, :mod:`fusionkit.serve`) and passed to
    :func:`encode_records` as ``runner``."""
    dev = resolve_device(device)
    enc.eval().to(dev)
    return _inference_form(enc, settings(enc, dev, None, None)[4])


def encode_records(
    enc: Encoder,
    values: list[Any],
    root: str | os.PathLike | None,
    kind: str,
    *,
    output: str = "pooled",
    device: str | torch.device | None = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
    progress: bool = False,
    desc: str = "",
    runner: Encoder | None = None,
) -> tuple[dict[int, torch.Tensor], dict[int, tuple[str, str | None]]]:
    """Encode records that are not a dataset's (new files for :mod:`fusionkit.predict`), with
    the extraction's decoding, batching (the encoder's measured ``perf``) and inference form, and
    no cache: ({record index: features}, {record index: (reason, file)} for the unreadable ones).
    ``runner``: the encoder's :func:`inference_runner` (already on ``device``), made once by a caller
    that encodes often."""
    dev = resolve_device(device)
    threads, bs, n_workers, group, channels_last = settings(enc, dev, batch_size, num_workers)
    if len(values) < SMALL:  # starting workers costs more than decoding a few records here (a served request)
        n_workers, group = 0, bs
    if n_workers:
        enc.before_workers()
    order = batch_indices(enc, values, [range(len(values))], group)
    root_path = Path(root) if root is not None else Path(".")
    records = loader(enc, values, root_path, kind, order, bs, n_workers, dev)
    rows: dict[int, torch.Tensor] = {}
    bad_rows: dict[int, tuple[str, str | None]] = {}
    bar = progress_bar(total=len(values), enabled=progress, desc=desc or enc.name, unit=enc.unit, smoothing=0.1)
    tune_allocator()
    try:
        ctx = inference(enc, dev, channels_last) if runner is None else _inference_mode(dev)
        with cpu_threads(threads), ctx as inside:
            run = runner or inside
            for subs, bad in records:
                bad_rows.update(dict(bad))
                for ok, batch in subs:
                    v = run(enc.batch_to(batch, dev, non_blocking=True))[output].float().cpu()
                    rows.update({i: v[j] for j, i in enumerate(ok)})
                    bar.update(len(ok))
                bar.update(len(bad))
    finally:
        bar.close()
    return rows, bad_rows
