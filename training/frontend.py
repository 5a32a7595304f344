"""mn04's log-mel frontend in PyTorch, batched, for making training windows on the fly.

The same computation as `shared/models/efficientat-mn04/reference/frontend.py` and the
daemon's Rust frontend (`src/dsp/frontend.rs`): pre-emphasis 0.97, STFT n_fft 1024, hop
320, an 800-point symmetric Hann centred in the frame, reflect padding, power spectrum,
128 Kaldi mel bands over 0-15 kHz, (ln(mel + 1e-5) + 4.5) / 5. `check_against_golden`
pins it to the golden vectors.
"""

from __future__ import annotations

import numpy as np
import torch

RATE = 32000
N_FFT = 1024
HOP = 320
WIN = 800
N_MELS = 128


def kaldi_mel_banks(n_mels=N_MELS, n_fft=N_FFT, sr=RATE, fmin=0.0, fmax=15000.0) -> np.ndarray:
    """Triangular Kaldi-style mel filters [n_mels, n_fft/2 + 1]; the Nyquist bin has weight 0."""
    mel = lambda f: 1127.0 * np.log(1.0 + np.asarray(f, dtype=np.float64) / 700.0)  # noqa: E731
    lo, hi = mel(fmin), mel(fmax)
    delta = (hi - lo) / (n_mels + 1)
    b = np.arange(n_mels)[:, None]
    left, center, right = lo + b * delta, lo + (b + 1) * delta, lo + (b + 2) * delta
    m = mel((sr / n_fft) * np.arange(n_fft // 2))[None, :]
    banks = np.maximum(0.0, np.minimum((m - left) / (center - left), (right - m) / (right - center)))
    return np.pad(banks, ((0, 0), (0, 1))).astype(np.float32)


class LogMel(torch.nn.Module):
    """Waveforms [B, samples] at 32 kHz → log-mels [B, 1, 128, frames]."""

    def __init__(self):
        super().__init__()
        n = torch.arange(WIN, dtype=torch.float64)
        w = 0.5 - 0.5 * torch.cos(2 * np.pi * n / (WIN - 1))
        pad = (N_FFT - WIN) // 2
        self.register_buffer("window", torch.nn.functional.pad(w, (pad, pad)).float())
        self.register_buffer("banks", torch.from_numpy(kaldi_mel_banks()))

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        x = wave[:, 1:] - 0.97 * wave[:, :-1]
        spec = torch.stft(x, N_FFT, hop_length=HOP, win_length=N_FFT, window=self.window,
                          center=True, pad_mode="reflect", return_complex=True)
        power = spec.real ** 2 + spec.imag ** 2  # [B, 513, frames]
        mel = torch.matmul(self.banks, power)
        return ((torch.log(mel + 1e-5) + 4.5) / 5.0)[:, None]


def check_against_golden(golden_dir: str) -> float:
    """Largest difference between this frontend and the golden log-mels."""
    f = LogMel()
    worst = 0.0
    for name in ("gunshots", "dog"):
        wave = torch.from_numpy(np.load(f"{golden_dir}/{name}_wave32k.npy").astype(np.float32))
        want = np.load(f"{golden_dir}/{name}_mel.npy")
        got = f(wave[None])[0, 0].numpy()
        worst = max(worst, float(np.abs(got - want).max()))
    return worst
