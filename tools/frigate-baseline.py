#!/usr/bin/env python3
"""A Frigate-style audio pipeline, to compare `hearken classify` against: YAMNet as
TFLite (LiteRT with XNNPACK), 0.975 s chunks of 16 kHz mono every 0.48 s, the
top labels of each chunk. Decoding and resampling happen here too (Frigate has
ffmpeg deliver 16 kHz; here the cheapest resampler, linear interpolation), so both
sides do the whole job.

    python -m venv /tmp/tfl && /tmp/tfl/bin/pip install ai-edge-litert numpy soundfile
    /usr/bin/time -f "%U %S" /tmp/tfl/bin/python tools/frigate-baseline.py \
        ../shared/models/yamnet/yamnet.tflite ../shared/audio/*.wav ../shared/audio/*.flac

Prints one line per file (chunks, the most frequent top label). The comparison is
in CPU seconds of the whole process (user + system), start-up included:
docs/architecture.md, "What classify costs"."""

import collections
import sys

import numpy as np
import soundfile as sf
from ai_edge_litert.interpreter import Interpreter

RATE = 16000
CHUNK = 15600  # 0.975 s, YAMNet's input
HOP = 7680  # 0.48 s


def main():
    model, files = sys.argv[1], sys.argv[2:]
    interp = Interpreter(model_path=model, num_threads=1)
    inp = interp.get_input_details()[0]
    # YAMNet's TFLite export takes a waveform of any length; fix it to one chunk.
    interp.resize_tensor_input(inp["index"], [CHUNK], strict=False)
    interp.allocate_tensors()
    out = interp.get_output_details()[0]
    for f in files:
        audio, rate = sf.read(f, dtype="float32", always_2d=True)
        mono = audio.mean(axis=1)
        if rate != RATE:
            # Linear interpolation: the cheapest resampler (ffmpeg would do this
            # for Frigate), so the baseline is not slowed by a better one.
            t = np.arange(0, len(mono) * RATE // rate) * (rate / RATE)
            mono = np.interp(t, np.arange(len(mono)), mono).astype(np.float32)
        if len(mono) < CHUNK:
            mono = np.pad(mono, (0, CHUNK - len(mono)))
        tops = collections.Counter()
        n = 0
        for start in range(0, len(mono) - CHUNK + 1, HOP):
            interp.set_tensor(inp["index"], mono[start : start + CHUNK])
            interp.invoke()
            scores = interp.get_tensor(out["index"]).reshape(-1, 521).mean(axis=0)
            tops[int(np.argmax(scores))] += 1
            n += 1
        print(f"{f}: {n} chunks, most often class {tops.most_common(1)[0][0]}")


if __name__ == "__main__":
    main()
