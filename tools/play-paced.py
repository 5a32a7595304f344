#!/usr/bin/env python3
"""Plays a 16-bit WAV file into a file or FIFO like a microphone: raw s16le, looped,
paced in real time 10 ms at a time, until the reader goes away.

    tools/play-paced.py FILE.wav OUT

Used by tools/live-cost.sh (`hearken run --source stdin:RATE:CHANNELS < OUT`).
Standard library only."""

import sys
import time
import wave


def main():
    w = wave.open(sys.argv[1])
    rate, channels, width = w.getframerate(), w.getnchannels(), w.getsampwidth()
    if width != 2:
        sys.exit(f"{sys.argv[1]}: 16-bit WAV needed, got {8 * width}-bit")
    data = w.readframes(w.getnframes())
    step = rate // 100 * channels * 2
    out = open(sys.argv[2], "wb", buffering=0)
    due, i = time.monotonic(), 0
    try:
        while True:
            end = i + step
            piece = data[i:end] if end <= len(data) else data[i:] + data[: end - len(data)]
            out.write(piece)
            i = end % len(data)
            due += 0.01
            time.sleep(max(0.0, due - time.monotonic()))
    except (BrokenPipeError, KeyboardInterrupt):
        pass


if __name__ == "__main__":
    main()
