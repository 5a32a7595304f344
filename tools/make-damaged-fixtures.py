#!/usr/bin/env python3
"""Writes the seed corpus of tests/fuzz_decode.rs to tests/fixtures/damaged/.

Small valid WAV and FLAC files in every sample format hearken reads, and damaged
variants of them (the kinds of damage a fault campaign found in the field):
truncated headers, chunk sizes that lie, zero-length and all-zero files, NaN
floats, absurd declared sizes, impossible formats. Each file is a few hundred bytes
to a few KB. Deterministic: running it again rewrites the same bytes.

The FLAC seeds need the `flac` encoder (Debian package `flac`); without it the
committed FLAC seeds are left as they are.

    tools/make-damaged-fixtures.py [OUT_DIR]
"""

import math
import os
import shutil
import struct
import subprocess
import sys
import tempfile

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "damaged")

PCM, FLOAT, EXTENSIBLE = 1, 3, 0xFFFE
# KSDATAFORMAT_SUBTYPE_PCM / _IEEE_FLOAT GUID tails.
GUID_TAIL = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"


def sine(frames, rate, channels, freq=440.0, amp=0.5):
    """Interleaved float samples of a sine (each channel a little detuned)."""
    out = []
    for i in range(frames):
        for c in range(channels):
            out.append(amp * math.sin(2 * math.pi * (freq + 110 * c) * i / rate))
    return out


def pack(samples, bits, fmt):
    """Sample bytes for `bits` integer (u8 for 8) or float."""
    b = bytearray()
    for x in samples:
        if fmt == FLOAT:
            b += struct.pack("<f" if bits == 32 else "<d", x)
        elif bits == 8:
            b += struct.pack("<B", max(0, min(255, int(round(x * 127)) + 128)))
        else:
            m = (1 << (bits - 1)) - 1
            v = max(-m - 1, min(m, int(round(x * m))))
            b += (v & ((1 << bits) - 1)).to_bytes(bits // 8, "little")
    return bytes(b)


def chunk(cid, body, size=None):
    size = len(body) if size is None else size
    pad = b"\x00" if len(body) % 2 else b""
    return cid + struct.pack("<I", size) + body + pad


def fmt_chunk(fmt, channels, rate, bits, extensible=False, size=None, block_align=None):
    ba = channels * bits // 8 if block_align is None else block_align
    body = struct.pack("<HHIIHH", EXTENSIBLE if extensible else fmt, channels, rate,
                       (rate * ba) & 0xFFFFFFFF, ba, bits)
    if extensible:
        mask = (1 << channels) - 1 if channels < 32 else 0
        body += struct.pack("<HHI", 22, bits, mask) + struct.pack("<H", fmt) + GUID_TAIL
    elif fmt == FLOAT:
        body += struct.pack("<H", 0)
    return chunk(b"fmt ", body, size)


def wav(samples_bytes, fmt, channels, rate, bits, extensible=False, extra=b"",
        riff_size=None, data_size=None, fmt_size=None, block_align=None):
    body = b"WAVE" + fmt_chunk(fmt, channels, rate, bits, extensible, fmt_size, block_align)
    if fmt == FLOAT and not extensible:
        frames = len(samples_bytes) // max(1, channels * bits // 8)
        body += chunk(b"fact", struct.pack("<I", frames))
    body += extra + chunk(b"data", samples_bytes, data_size)
    size = len(body) if riff_size is None else riff_size
    return b"RIFF" + struct.pack("<I", size) + body


def write(name, data):
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)


def flac_seeds():
    """Encodes two tiny FLACs with the reference encoder, if it is installed."""
    if shutil.which("flac") is None:
        print("flac not installed: FLAC seeds left as they are", file=sys.stderr)
        return
    with tempfile.TemporaryDirectory() as d:
        for name, channels, rate, bits, frames, block in [
            ("valid-flac-s16-mono-8k.flac", 1, 8000, 16, 600, 192),
            ("valid-flac-s24-stereo-44k.flac", 2, 44100, 24, 500, 256),
        ]:
            src = os.path.join(d, "in.wav")
            with open(src, "wb") as f:
                f.write(wav(pack(sine(frames, rate, channels), bits, PCM), PCM, channels,
                            rate, bits))
            dst = os.path.join(OUT, name)
            subprocess.run(["flac", "--silent", "--force", "--no-padding", "--no-seektable",
                            "-b", str(block), "-o", dst, src], check=True)
    good = open(os.path.join(OUT, "valid-flac-s16-mono-8k.flac"), "rb").read()
    write("damaged-flac-truncated.flac", good[: len(good) * 2 // 3])
    write("damaged-flac-streaminfo-only.flac", good[:42])
    # STREAMINFO (after "fLaC" and the 4-byte block header) claims 2^36-1 samples,
    # the largest block size and 8 channels.
    b = bytearray(good)
    b[8:10] = b"\xff\xff"    # min block size
    b[10:12] = b"\xff\xff"   # max block size
    b[20] = (b[20] & 0xF1) | (7 << 1)  # channels - 1 = 7
    b[21] |= 0x0F            # total samples: high 4 bits
    b[22:26] = b"\xff\xff\xff\xff"
    write("damaged-flac-huge-streaminfo.flac", bytes(b))
    # The metadata block header says the block is 16 MB long.
    b = bytearray(good)
    b[5:8] = b"\xff\xff\xff"
    write("damaged-flac-huge-metadata-length.flac", bytes(b))
    # Frames damaged after the header (bad CRCs).
    b = bytearray(good)
    for i in range(60, len(b), 23):
        b[i] ^= 0x5A
    write("damaged-flac-bad-frames.flac", bytes(b))
    write("damaged-flac-magic-then-zeros.flac", b"fLaC" + bytes(300))


def main():
    os.makedirs(OUT, exist_ok=True)
    # Valid seeds: every sample format and layout the decoder reads.
    s16 = pack(sine(200, 8000, 1), 16, PCM)
    write("valid-s16-mono-8k.wav", wav(s16, PCM, 1, 8000, 16))
    write("valid-s16-stereo-16k.wav", wav(pack(sine(150, 16000, 2), 16, PCM), PCM, 2, 16000, 16))
    write("valid-s24-mono-11k.wav", wav(pack(sine(200, 11025, 1), 24, PCM), PCM, 1, 11025, 24))
    write("valid-s32-stereo-48k.wav", wav(pack(sine(100, 48000, 2), 32, PCM), PCM, 2, 48000, 32))
    write("valid-u8-mono-8k.wav", wav(pack(sine(300, 8000, 1), 8, PCM), PCM, 1, 8000, 8))
    write("valid-f32-mono-32k.wav", wav(pack(sine(200, 32000, 1), 32, FLOAT), FLOAT, 1, 32000, 32))
    write("valid-f32-stereo-44k-extensible.wav",
          wav(pack(sine(120, 44100, 2), 32, FLOAT), FLOAT, 2, 44100, 32, extensible=True))
    write("valid-f64-mono-22k.wav", wav(pack(sine(100, 22050, 1), 64, FLOAT), FLOAT, 1, 22050, 64))
    write("valid-s16-6ch-96k-extensible.wav",
          wav(pack(sine(40, 96000, 6), 16, PCM), PCM, 6, 96000, 16, extensible=True))
    info = chunk(b"LIST", b"INFO" + chunk(b"INAM", b"hearken seed\x00"))
    write("valid-s16-list-chunk.wav", wav(s16, PCM, 1, 8000, 16, extra=info))

    # NaN, infinities and absurd magnitudes in float files.
    bad = sine(200, 32000, 1)
    bad[10], bad[50], bad[90], bad[130] = float("nan"), float("inf"), float("-inf"), 1e30
    write("damaged-f32-nan-inf-32k.wav", wav(pack(bad, 32, FLOAT), FLOAT, 1, 32000, 32))
    write("damaged-f32-nan-inf-48k-stereo.wav",
          wav(pack([x for x in bad for _ in (0, 1)], 32, FLOAT), FLOAT, 2, 48000, 32))
    write("damaged-f32-all-nan.wav", wav(pack([float("nan")] * 100, 32, FLOAT), FLOAT, 1, 16000, 32))
    write("damaged-f64-huge.wav", wav(pack([1e300, -1e300, 1e-320] * 30, 64, FLOAT), FLOAT, 1, 8000, 64))

    # Sizes that lie.
    good = wav(s16, PCM, 1, 8000, 16)
    write("damaged-zero-length.wav", b"")
    write("damaged-header-only.wav", good[:44])
    write("damaged-truncated-header.wav", good[:22])
    write("damaged-truncated-data.wav", good[: 44 + 101])
    write("damaged-all-zeros.wav", bytes(512))
    write("damaged-riff-only.wav", b"RIFF\xff\xff\xff\xffWAVE")
    write("damaged-data-size-4g.wav", wav(s16, PCM, 1, 8000, 16, data_size=0xFFFFFFFF))
    write("damaged-data-size-zero.wav", wav(s16, PCM, 1, 8000, 16, data_size=0))
    write("damaged-data-size-odd.wav", wav(s16, PCM, 1, 8000, 16, data_size=333))
    write("damaged-riff-size-4g.wav", wav(s16, PCM, 1, 8000, 16, riff_size=0xFFFFFFFF))
    write("damaged-riff-size-small.wav", wav(s16, PCM, 1, 8000, 16, riff_size=12))
    write("damaged-fmt-size-huge.wav", wav(s16, PCM, 1, 8000, 16, fmt_size=0x7FFFFFF0))
    write("damaged-fmt-size-short.wav", wav(s16, PCM, 1, 8000, 16, fmt_size=8))
    write("damaged-list-size-4g.wav",
          wav(s16, PCM, 1, 8000, 16, extra=b"LIST" + struct.pack("<I", 0xFFFFFFF0) + b"INFO"))
    write("damaged-unknown-chunk-huge.wav",
          wav(s16, PCM, 1, 8000, 16, extra=b"junk" + struct.pack("<I", 0x40000000) + bytes(8)))
    write("damaged-no-data-chunk.wav", good[: 12 + 24])

    # Formats that cannot be.
    write("damaged-zero-channels.wav", wav(s16, PCM, 0, 8000, 16, block_align=2))
    write("damaged-65535-channels.wav", wav(s16, PCM, 65535, 8000, 16, block_align=2))
    write("damaged-rate-zero.wav", wav(s16, PCM, 1, 0, 16))
    write("damaged-rate-4g.wav", wav(s16, PCM, 1, 0xFFFFFFFF, 16))
    write("damaged-rate-prime.wav", wav(s16, PCM, 1, 44101, 16))
    write("damaged-bits-zero.wav", wav(s16, PCM, 1, 8000, 0, block_align=2))
    write("damaged-bits-13.wav", wav(s16, PCM, 1, 8000, 13, block_align=2))
    write("damaged-block-align-zero.wav", wav(s16, PCM, 1, 8000, 16, block_align=0))
    write("damaged-block-align-huge.wav", wav(s16, PCM, 1, 8000, 16, block_align=0xFFFF))
    write("damaged-float-16bit.wav", wav(s16, FLOAT, 1, 8000, 16))
    write("damaged-extensible-40ch.wav",
          wav(pack(sine(10, 8000, 40), 16, PCM), PCM, 40, 8000, 16, extensible=True))
    write("damaged-format-tag-unknown.wav", wav(s16, 0x1234, 1, 8000, 16))
    # Found by tests/fuzz_decode.rs: the WAV reader's header arithmetic overflowed
    # (a panic in debug builds) on these.
    b = bytearray(wav(pack(sine(100, 8000, 2), 16, PCM), PCM, 2, 8000, 16, extensible=True))
    b[40:44] = struct.pack("<I", 0x80000000)  # channel mask: bit 31 only, for 2 channels
    write("damaged-extensible-mask-bit31.wav", bytes(b))
    # The probe finds a RIFF header after junk; so must the header check.
    write("damaged-junk-then-riff-20000ch.wav", b"ata \x00\x00\x00\x00" + bytes(range(24))
          + wav(pack(sine(8, 8000, 1), 32, PCM), PCM, 20000, 8000, 32, block_align=4))
    write("damaged-20000-channels-s32.wav", wav(pack(sine(8, 8000, 1), 32, PCM), PCM, 20000, 8000, 32,
                                                 block_align=4))

    flac_seeds()


if __name__ == "__main__":
    main()
