"""Audio encoders over a log-mel spectrogram computed with librosa.

Every clip is read with soundfile (WAV/FLAC/OGG of any sample rate, 8-32 bit or float, mono or
multichannel), mixed down to mono, resampled to ``sample_rate`` (soxr, high quality) and centre-cropped
to ``seconds``; shorter clips are padded. Features are computed on the real samples only; the padded
frames carry digital silence (-100 dB, or 0 for MFCC) and ``grid_mask`` = 0, and the pooled statistics
ignore them, so a short clip has the same pooled vector whatever ``seconds`` is.

* ``logmel`` (default): ``grid`` = frames x n_mels log-mel (dB); ``pooled`` = per-band mean and std over
  the real frames (2 x n_mels). No learned weights: exact and always frozen.
* ``mfcc``: the same with ``n_mfcc`` MFCCs + deltas + delta-deltas (3 x n_mfcc per frame).

Options of both (off by default, so the defaults' features and cache keys do not change):

* ``cmvn=True``: per-utterance cepstral mean and variance normalisation - every frame feature minus
  its mean over the clip's real frames, divided by its std there (floored at 1e-3): what a new
  voice, room or microphone shifts is taken out. The ``grid`` is normalised; ``pooled`` keeps the
  raw mean and std (they carry level and timbre) and normalises what ``segments`` adds.
* ``segments=K``: temporal structure - the real frames cut into K equal parts and each part's mean
  frame appended to ``pooled`` (+ K x D).
* ``deltas=True`` (``logmel`` only; ``mfcc`` always has them): deltas and delta-deltas of the bands
  (3 x n_mels per frame).

Bad input (:class:`~fusionkit.encoders.base.InputError`, naming the file): a recording shorter than
the encoder's window (``n_fft`` samples, and ``segments`` frames), and a silence-only recording
(every sample below one 16-bit step, 2**-15).
* ``audio_cnn``: a small CNN (4 conv blocks) over the log-mel, random init seeded by ``seed``, meant to
  be fine-tuned inside a model; ``grid`` = its time steps (frequency averaged), ``pooled`` = their
  masked mean. ``cmvn=True`` normalises its input per utterance; ``augment={...}`` (:class:`SpecAugment`:
  time shift, gain, noise, SpecAugment-style frequency and time masks) perturbs its input in
  training mode only - extraction (eval mode) never sees it.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from fusionkit.encoders.base import Encoder, InputError, as_path, seeded

AUDIO_PERF = {
    # measured by benchmarks/extract.py on FSDD (see benchmarks/README.md)
    "cpu": {"batch_size": 64, "channels_last": False, "num_workers": "cores"},
    "cuda": {"batch_size": 128, "channels_last": False, "num_workers": "auto"},  # not measured here (no GPU lent)
}
SILENCE_DB = -100.0  # 10 * log10(amin) with amin = 1e-10
SILENCE_PEAK = 2.0**-15  # below one 16-bit step everywhere: a silence-only recording


class AudioClip(NamedTuple):
    wave: torch.Tensor  # (n_samples,) float32 mono at the encoder's sample rate, padded
    length: int  # real samples (the rest is padding)


def read_audio(path: str | os.PathLike, sample_rate: int, seconds: float) -> AudioClip:
    """Decode, mix down, resample and crop/pad one audio file. :class:`InputError` for unreadable,
    corrupt, empty or non-finite audio."""
    import soundfile as sf

    if not os.path.isfile(path):
        raise InputError("audio file not found", path)
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except FileNotFoundError as e:
        raise InputError("audio file not found", path) from e
    except (RuntimeError, OSError, ValueError, TypeError, EOFError) as e:  # LibsndfileError is a RuntimeError
        raise InputError(f"unreadable or corrupt audio ({type(e).__name__}: {e})", path) from e
    if data.shape[0] == 0:
        raise InputError("zero-length audio (no samples)", path)
    if not np.isfinite(data).all():
        raise InputError("audio contains NaN or infinite samples", path)
    y = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if sr != sample_rate:
        import librosa

        y = librosa.resample(y, orig_sr=sr, target_sr=sample_rate, res_type="soxr_hq")
    n = int(round(seconds * sample_rate))
    if len(y) > n:
        start = (len(y) - n) // 2
        y = y[start : start + n]
    length = len(y)
    out = np.zeros(n, dtype=np.float32)
    out[:length] = y
    return AudioClip(torch.from_numpy(out), length)


class SpectrogramEncoder(Encoder):
    """Shared front end: read_audio + a librosa log-mel spectrogram."""

    kind = "audio"
    unit = "clip"
    perf = AUDIO_PERF

    def __init__(
        self,
        *,
        sample_rate: int = 16000,
        seconds: float = 1.0,
        n_mels: int = 64,
        n_fft: int = 400,
        hop_length: int = 160,
        fmin: float = 0.0,
        fmax: float | None = None,
        cmvn: bool = False,
        segments: int = 0,
    ) -> None:
        super().__init__()
        if not isinstance(segments, int) or segments < 0:
            raise ValueError(f"{self.name}: segments = {segments!r}; expected an integer >= 0")
        self.cmvn = bool(cmvn)
        self.segments = int(segments)
        self.sample_rate = int(sample_rate)
        self.seconds = float(seconds)
        self.n_mels = int(n_mels)
        self.n_fft = int(n_fft)
        self.hop_length = int(hop_length)
        self.fmin = float(fmin)
        self.fmax = float(fmax if fmax is not None else sample_rate / 2)
        self.n_frames = 1 + int(round(self.seconds * self.sample_rate)) // self.hop_length

    def preprocessing(self) -> dict[str, Any]:
        from importlib.metadata import version  # not ``import librosa``: a warm cache needs no numba start-up

        return {
            "read": "soundfile, mono mean, soxr_hq resample, centre crop / zero pad",
            "sample_rate": self.sample_rate,
            "seconds": self.seconds,
            "n_mels": self.n_mels,
            "n_fft": self.n_fft,
            "hop_length": self.hop_length,
            "fmin": self.fmin,
            "fmax": self.fmax,
            "db": {"ref": 1.0, "amin": 1e-10, "top_db": None},
            "librosa": version("librosa"),
            # only when set: the defaults keep the identity (and cache keys) they always had
            **({"cmvn": "per utterance, real frames, std floor 1e-3"} if self.cmvn else {}),
            **({"segments": self.segments} if self.segments else {}),
        }

    def before_workers(self) -> None:
        import librosa  # noqa: F401 - numba start-up once in the parent, not in every worker

    def load(self, value: Any, root: str | os.PathLike | None = None) -> AudioClip:
        path = as_path(value, root)
        clip = read_audio(path, self.sample_rate, self.seconds)
        need = max(self.n_fft, (self.segments - 1) * self.hop_length + 1)
        if clip.length < need:
            raise InputError(
                f"recording of {clip.length} samples ({1000 * clip.length / self.sample_rate:.1f} ms at "
                f"{self.sample_rate} Hz) is shorter than {self.name}'s window: expected at least {need} samples "
                f"(n_fft {self.n_fft}"
                + (f", {self.segments} segments of hop {self.hop_length}" if self.segments else "")
                + ")",
                path,
            )
        if float(clip.wave[: clip.length].abs().max()) < SILENCE_PEAK:
            raise InputError(
                "silence-only recording (every sample below one 16-bit step); expected audible audio", path
            )
        return clip

    def logmel(self, clip: AudioClip) -> np.ndarray:
        """(real frames, n_mels) log-mel in dB of the real samples."""
        import librosa

        y = clip.wave[: clip.length].numpy()
        s = librosa.feature.melspectrogram(
            y=y,
            sr=self.sample_rate,
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            n_mels=self.n_mels,
            fmin=self.fmin,
            fmax=self.fmax,
            power=2.0,
        )
        return librosa.power_to_db(s, ref=1.0, amin=1e-10, top_db=None).T.astype(np.float32)

    def frame_features(self, clip: AudioClip) -> np.ndarray:
        return self.logmel(clip)

    pad_value = SILENCE_DB

    def collate(self, items: list[AudioClip]) -> dict[str, torch.Tensor]:
        feats = [self.frame_features(c) for c in items]
        d = feats[0].shape[1]
        spec = torch.full((len(items), self.n_frames, d), self.pad_value, dtype=torch.float32)
        mask = torch.zeros(len(items), self.n_frames, dtype=torch.long)
        for i, f in enumerate(feats):
            t = min(len(f), self.n_frames)
            spec[i, :t] = torch.from_numpy(f[:t])
            mask[i, :t] = 1
        return {"spec": spec, "mask": mask}


def masked_cmvn(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T, D), (B, T) -> (B, T, D): each clip's frames minus their mean over its real frames,
    divided by their std there (floored at 1e-3); padded frames 0."""
    m = mask.unsqueeze(-1).to(x.dtype)
    n = m.sum(1, keepdim=True).clamp(min=1.0)
    mean = (x * m).sum(1, keepdim=True) / n
    std = ((((x - mean) * m) ** 2).sum(1, keepdim=True) / n).sqrt().clamp(min=1e-3)
    return (x - mean) / std * m


def segment_means(x: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """(B, T, D), (B, T) -> (B, k * D): the real frames (a prefix of each clip) cut into ``k``
    equal parts, each part's mean frame (part j: frames t with floor(t * k / length) = j)."""
    lengths = mask.sum(1).clamp(min=1)  # (B,)
    t = torch.arange(x.shape[1], device=x.device)
    part = torch.div(t.unsqueeze(0) * k, lengths.unsqueeze(1), rounding_mode="floor")  # (B, T)
    w = (part.unsqueeze(1) == torch.arange(k, device=x.device).view(1, k, 1)) & mask.bool().unsqueeze(1)
    w = w.to(x.dtype)
    means = torch.bmm(w, x) / w.sum(2, keepdim=True).clamp(min=1.0)  # (B, k, D)
    return means.reshape(len(x), -1)


def masked_mean_std(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T, D), (B, T) -> (B, 2D): mean and population std over the real frames."""
    m = mask.unsqueeze(-1).to(x.dtype)
    n = m.sum(1).clamp(min=1.0)
    mean = (x * m).sum(1) / n
    var = (((x - mean.unsqueeze(1)) * m) ** 2).sum(1) / n
    return torch.cat([mean, var.sqrt()], dim=1)


class LogMel(SpectrogramEncoder):
    name = "logmel"

    def __init__(self, deltas: bool = False, **kw: Any) -> None:
        super().__init__(**kw)
        self.deltas = bool(deltas)
        self._set_dims((3 if self.deltas else 1) * self.n_mels)
        self._weights_id = "none (no learned weights)"
        self._finish_init()

    def _set_dims(self, d: int) -> None:
        self._dims = {"pooled": (2 + self.segments) * d, "grid": d}

    def preprocessing(self) -> dict[str, Any]:
        extra = {"deltas": [1, 2], "delta_width": 9} if self.deltas and self.name == "logmel" else {}
        return {**super().preprocessing(), **extra}

    def frame_features(self, clip: AudioClip) -> np.ndarray:
        mel = self.logmel(clip)
        return with_deltas(mel.T).T if self.deltas else mel

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        spec, mask = batch["spec"], batch["mask"]
        pooled = masked_mean_std(spec, mask)
        frames = masked_cmvn(spec, mask) if self.cmvn else spec
        if self.segments:
            pooled = torch.cat([pooled, segment_means(frames, mask, self.segments)], dim=1)
        if self.cmvn:  # padded frames of the normalised grid carry 0, like the real frames' mean
            frames = torch.where(mask.bool().unsqueeze(-1), frames, torch.zeros_like(frames))
        return {"pooled": pooled, "grid": frames, "grid_mask": mask}


def with_deltas(feats: np.ndarray) -> np.ndarray:
    """(D, frames) -> (3D, frames): the features, their deltas and delta-deltas (librosa, width 9;
    'nearest' edges for clips shorter than 9 frames)."""
    import librosa

    mode = "interp" if feats.shape[1] >= 9 else "nearest"
    d1 = librosa.feature.delta(feats, width=9, order=1, mode=mode)
    d2 = librosa.feature.delta(feats, width=9, order=2, mode=mode)
    return np.concatenate([feats, d1, d2], axis=0).astype(np.float32)


class MFCC(LogMel):
    name = "mfcc"
    pad_value = 0.0

    def __init__(self, n_mfcc: int = 20, **kw: Any) -> None:
        if "deltas" in kw:
            raise ValueError("mfcc: the deltas option is logmel's; mfcc always has deltas and delta-deltas")
        self.n_mfcc = int(n_mfcc)
        super().__init__(**kw)
        self._set_dims(3 * self.n_mfcc)

    def preprocessing(self) -> dict[str, Any]:
        return {**super().preprocessing(), "n_mfcc": self.n_mfcc, "deltas": [1, 2], "delta_width": 9}

    def frame_features(self, clip: AudioClip) -> np.ndarray:
        import librosa

        mel_db = self.logmel(clip).T  # (n_mels, frames)
        mfcc = librosa.feature.mfcc(S=mel_db, n_mfcc=self.n_mfcc)
        return with_deltas(mfcc).T


class SpecAugment(nn.Module):
    """Training-time augmentation of (B, T, n_mels) log-mel batches in dB, plain torch ops, drawn
    from torch's global RNG (seeded by the training): a random ``gain_db`` in +-gain_db, white
    noise at an SNR drawn in ``snr_db`` (added to the mel power), the real frames shifted by up to
    ``shift`` frames inside the padded window, ``freq_masks`` bands of up to ``freq_width`` mels
    and ``time_masks`` spans of up to ``time_width`` frames set to the clip's mean. Identity in
    eval mode."""

    def __init__(self, gain_db: float = 6.0, snr_db: tuple[float, float] = (5.0, 30.0), shift: int = 10,
                 freq_masks: int = 2, freq_width: int = 8, time_masks: int = 2, time_width: int = 10) -> None:  # fmt: skip
        super().__init__()
        self.gain_db, self.snr_db, self.shift = float(gain_db), (float(snr_db[0]), float(snr_db[1])), int(shift)
        self.freq_masks, self.freq_width = int(freq_masks), int(freq_width)
        self.time_masks, self.time_width = int(time_masks), int(time_width)

    def config(self) -> dict[str, Any]:
        return {"gain_db": self.gain_db, "snr_db": list(self.snr_db), "shift": self.shift,
                "freq_masks": self.freq_masks, "freq_width": self.freq_width, "time_masks": self.time_masks,
                "time_width": self.time_width}  # fmt: skip

    def forward(self, spec: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.training:
            return spec, mask
        b, t, f = spec.shape
        m = mask.to(spec.dtype)
        x = spec + (torch.rand(b, 1, 1) * 2 - 1) * self.gain_db
        power = 10 ** (x / 10)
        mean_power = (power * m.unsqueeze(-1)).sum((1, 2)) / (m.sum(1) * f).clamp(min=1.0)
        snr = torch.empty(b).uniform_(*self.snr_db)
        x = 10 * torch.log10(power + (mean_power * 10 ** (-snr / 10)).view(b, 1, 1) + 1e-10)
        if self.shift:  # move the real frames (a prefix) right by 0..shift frames, within the window
            lengths = mask.sum(1)
            room = (t - lengths).clamp(min=0).clamp(max=self.shift)
            off = (torch.rand(b) * (room + 1).to(spec.dtype)).long()
            src = torch.arange(t).unsqueeze(0) - off.unsqueeze(1)
            ok = (src >= 0) & (src < lengths.unsqueeze(1))
            x = torch.gather(x, 1, src.clamp(0, t - 1).unsqueeze(-1).expand(-1, -1, f))
            x = torch.where(ok.unsqueeze(-1), x, torch.full_like(x, SILENCE_DB))
            mask = ok.to(mask.dtype)
        fill = (x * mask.unsqueeze(-1)).sum(1, keepdim=True) / mask.sum(1).clamp(min=1).view(b, 1, 1)
        for n, width, axis in ((self.freq_masks, self.freq_width, 2), (self.time_masks, self.time_width, 1)):
            size = x.shape[axis]
            pos = torch.arange(size).unsqueeze(0)
            for _ in range(n):
                w = torch.randint(0, width + 1, (b, 1))
                start = (torch.rand(b, 1) * (size - w + 1).to(spec.dtype)).long()
                hit = (pos >= start) & (pos < start + w)
                hit = hit.unsqueeze(1) if axis == 2 else hit.unsqueeze(2)
                x = torch.where(hit, fill.expand_as(x), x)
        return x, mask


class AudioCNN(SpectrogramEncoder):
    """Small CNN over the log-mel (for fine-tuning inside a model)."""

    name = "audio_cnn"

    def __init__(
        self,
        channels: tuple[int, ...] = (32, 64, 128, 128),
        seed: int = 0,
        augment: dict[str, Any] | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        if self.segments:
            raise ValueError("audio_cnn: segments is an option of logmel and mfcc (the CNN pools its own time steps)")
        self.augment = SpecAugment(**augment) if augment is not None else None
        self.channels = tuple(int(c) for c in channels)
        self.seed = int(seed)
        with seeded(seed):
            self.bn0 = nn.BatchNorm1d(self.n_mels)  # per mel band input normalisation (learned)
            blocks = []
            c_in = 1
            for c in self.channels:
                blocks.append(
                    nn.Sequential(
                        nn.Conv2d(c_in, c, 3, padding=1, bias=False),
                        nn.BatchNorm2d(c),
                        nn.ReLU(inplace=True),
                        nn.AvgPool2d(2),
                    )
                )
                c_in = c
            self.blocks = nn.ModuleList(blocks)
        self._dims = {"pooled": self.channels[-1], "grid": self.channels[-1]}
        self._weights_id = f"random:{seed}:torch-{torch.__version__}"
        self._block_prefixes = [["bn0"]] + [[f"blocks.{i}"] for i in range(len(blocks))]
        self._finish_init()

    def preprocessing(self) -> dict[str, Any]:
        extra = {"augment": self.augment.config()} if self.augment is not None else {}
        return {**super().preprocessing(), "channels": self.channels, **extra}

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        spec, mask = batch["spec"], batch["mask"]
        if self.augment is not None:
            spec, mask = self.augment(spec, mask)  # training mode only
        if self.cmvn:
            spec = masked_cmvn(spec, mask)
        x = self.bn0(spec.transpose(1, 2)).unsqueeze(1)  # (B, 1, n_mels, T)
        m = mask.to(x.dtype).unsqueeze(1)  # (B, 1, T)
        for blk in self.blocks:
            x = blk(x)
            m = F.max_pool1d(m, 2)
        grid = x.mean(dim=2).transpose(1, 2)  # (B, T', C)
        gm = m.squeeze(1)
        pooled = (grid * gm.unsqueeze(-1)).sum(1) / gm.sum(1, keepdim=True).clamp(min=1.0)
        return {"pooled": pooled, "grid": grid, "grid_mask": gm.long()}
