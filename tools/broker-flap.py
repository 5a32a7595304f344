#!/usr/bin/env python3
"""Broker-flapping run: hearken keeps every event through broker outages and a crash.

A 4-minute stream with 10 gunshots (3 s cut from shared/audio/gunshots.wav) over a quiet
home bed (shared/audio/rain.wav and birds1.wav, -30 dB) is played in real time to
`hearken run --print-events`, publishing to a real mosquitto. The broker is stopped
every 15-25 s for 3-8 s; during one outage past the middle of the stream the daemon
is killed with SIGKILL and started again on the rest of the stream, still during the
outage. Then:

- events printed = events delivered (each printed start and end arrives, plus one
  end marked "interrupted" for each event the killed daemon left open),
- 0 duplicates,
- in order (delivered messages come in the order they were printed).

The broker is stopped with SIGTERM, so that its persistent store keeps the queue of
the test's own subscriber (a persistent QoS 1 session): a lost message is then
hearken's, not the subscriber's.

    tools/broker-flap.py [--seed N] [--minutes 4] [--keep DIR]

Needs target/release/hearken (cargo build --release), the models installed
(tools/install-models.sh), mosquitto and mosquitto_sub. Prints a JSON report and
exits 1 if any check fails. Reproducible in its schedule for one seed (the broker's
and the daemon's timing still vary with the machine).
"""

import argparse
import array
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("HEARKEN_SHARED", ROOT.parent / "shared"))
RATE = 44100
NODE = "flap"


def read_mono(path):
    """Samples of a 16-bit PCM WAV as a list of floats in [-1, 1], mono-mixed."""
    with wave.open(str(path), "rb") as w:
        assert w.getsampwidth() == 2, f"{path}: 16-bit PCM expected"
        assert w.getframerate() == RATE, f"{path}: {RATE} Hz expected"
        ch = w.getnchannels()
        a = array.array("h", w.readframes(w.getnframes()))
    if ch > 1:
        return [sum(a[i : i + ch]) / (ch * 32768.0) for i in range(0, len(a), ch)]
    return [x / 32768.0 for x in a]


def write_wav(path, samples):
    a = array.array("h", (max(-32767, min(32767, int(x * 32767))) for x in samples))
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(a.tobytes())


def make_stream(minutes, n_shots, rng):
    """The stream and the onsets (s) of its gunshots."""
    total = int(minutes * 60 * RATE)
    bed = read_mono(SHARED / "audio" / "rain.wav") + read_mono(SHARED / "audio" / "birds1.wav")
    gain = 10 ** (-30 / 20)
    out = [bed[i % len(bed)] * gain for i in range(total)]
    shot = read_mono(SHARED / "audio" / "gunshots.wav")[: 3 * RATE]
    gap = total / n_shots
    onsets = []
    for k in range(n_shots):
        t = int(k * gap + rng.uniform(0.0, 0.08) * gap)
        onsets.append(t / RATE)
        for i, x in enumerate(shot):
            if t + i < total:
                out[t + i] += x
    return out, onsets


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Broker:
    def __init__(self, port, work):
        self.port = port
        self.conf = work / "mosquitto.conf"
        (work / "mosq").mkdir(exist_ok=True)
        self.conf.write_text(
            f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {work / 'mosq'}/\nautosave_interval 1\n"
            f"log_dest file {work / 'mosquitto.log'}\nlog_type all\n"
            # Started as root, mosquitto drops to its own user, which could not
            # write the store: the subscriber's queue would not survive a restart.
            + ("user root\n" if os.geteuid() == 0 else "")
        )
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(
            ["mosquitto", "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise SystemExit("mosquitto did not start")

    def stop(self):
        if self.proc:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait()
            self.proc = None


def hearken(part, port, state, log, config):
    env = dict(os.environ)
    env.setdefault("HEARKEN_MODELS", str(ROOT / "models"))
    return subprocess.Popen(
        [
            str(ROOT / "target/release/hearken"),
            "run",
            "--print-events",
            "--config",
            str(config),
            "--node-id",
            NODE,
            "--mqtt",
            f"mqtt://127.0.0.1:{port}",
            "--state-dir",
            str(state),
            "--source",
            f"file:{part}",
        ],
        stdout=subprocess.PIPE,
        stderr=log,
        env=env,
        text=True,
    )


def events_of(lines):
    out = []
    for line in lines:
        line = line.strip()
        if line.startswith("{"):
            e = json.loads(line)
            out.append((e["id"], e["state"], e.get("interrupted", False), e["group"]))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--minutes", type=float, default=4.0)
    ap.add_argument("--shots", type=int, default=10)
    ap.add_argument("--keep", help="keep the work files in this directory")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    work = Path(args.keep or tempfile.mkdtemp(prefix="hearken-flap-"))
    work.mkdir(parents=True, exist_ok=True)

    stream, onsets = make_stream(args.minutes, args.shots, rng)
    # The daemon is killed 4 s into the gunshot before the middle, while its event
    # is open, during a broker outage; the second daemon goes on from there.
    kill_at = onsets[max(0, args.shots // 2 - 1)] + 4.0
    cut = int(kill_at * RATE)
    part1, part2 = work / "part1.wav", work / "part2.wav"
    # Part 1 runs on past the kill, so the daemon cannot finish it first.
    write_wav(part1, stream[: cut + 60 * RATE])
    write_wav(part2, stream[cut:])
    length_s = len(stream) / RATE

    port = free_port()
    broker = Broker(port, work)
    broker.start()
    sub = subprocess.Popen(
        ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-c", "-i", "flap-sub",
         "-q", "1", "-t", f"hearken/{NODE}/event/#"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    time.sleep(0.5)
    state = work / "state"
    # Gunshots are 24 s apart; the default 30 s cooldown (a burst of gunfire is one
    # event) would merge them, and each is to be its own event here.
    config = work / "hearken.toml"
    config.write_text("[detection.groups.gunshot]\ncooldown_s = 3.0\n")
    log = open(work / "hearken.log", "w")
    t0 = time.time()
    d1 = hearken(part1, port, state, log, config)
    d2 = None
    outages = []
    killed_at = None
    next_stop = rng.uniform(15, 25)
    # Flap until 20 s before the end, so the last events can drain.
    while time.time() - t0 < length_s - 20:
        now = time.time() - t0
        if killed_at is None and now >= kill_at - 1.5:
            next_stop = now  # the outage the kill happens in
        if now < next_stop:
            time.sleep(min(0.1, next_stop - now))
            continue
        down = rng.uniform(3, 8)
        broker.stop()
        outages.append((round(now, 1), round(down, 1)))
        if killed_at is None and now >= kill_at - 1.5:
            time.sleep(max(0.0, kill_at - (time.time() - t0)))
            d1.send_signal(signal.SIGKILL)
            d1.wait()
            killed_at = round(time.time() - t0, 1)
            # The rest of the stream, as if the audio went on.
            d2 = hearken(part2, port, state, log, config)
            time.sleep(max(0.5, down - 1.5))
        else:
            time.sleep(down)
        broker.start()
        next_stop = time.time() - t0 + rng.uniform(15, 25)
        if killed_at is None and next_stop + 8 > kill_at - 1.5:
            next_stop = kill_at - 1.5
    if d2 is None:
        d1.wait()
        d2 = hearken(part2, port, state, log, config)
    printed1 = d1.stdout.read().splitlines()
    printed2, _ = d2.communicate(timeout=length_s + 60)
    time.sleep(2)
    sub.terminate()
    delivered_lines, _ = sub.communicate(timeout=10)
    broker.stop()
    log.close()
    (work / "printed1.jsonl").write_text("\n".join(printed1) + "\n")
    (work / "printed2.jsonl").write_text(printed2)
    (work / "delivered.jsonl").write_text(delivered_lines)

    p1, p2 = events_of(printed1), events_of(printed2.splitlines())
    delivered = events_of(delivered_lines.splitlines())
    ended1 = {i for i, s, _, _ in p1 if s == "end"}
    left_open = [(i, "end", True, g) for i, s, _, g in p1 if s == "start" and i not in ended1]
    expected = p1 + left_open + p2
    keys = [(i, s) for i, s, _, _ in delivered]
    dups = len(keys) - len(set(keys))
    missing = [e for e in expected if (e[0], e[1]) not in set(keys)]
    extra = [d for d in delivered if (d[0], d[1]) not in {(e[0], e[1]) for e in expected}]
    order_ok = [k for k in keys if k in {(e[0], e[1]) for e in expected}] == [
        (e[0], e[1]) for e in expected
    ]
    interrupted_ok = all(d[2] for d in delivered if (d[0], d[1], True, d[3]) in left_open)
    report = {
        "seed": args.seed,
        "stream_s": round(length_s, 1),
        "gunshot_onsets_s": [round(t, 1) for t in onsets],
        "broker_outages_at_s_for_s": outages,
        "daemon_killed_at_s": killed_at,
        "events_printed": len([e for e in p1 + p2 if e[1] == "start"]),
        "messages_printed": len(p1) + len(p2),
        "interrupted_ends_expected": len(left_open),
        "messages_delivered": len(delivered),
        "duplicates": dups,
        "missing": missing,
        "unexpected": extra,
        "in_order": order_ok,
        "interrupted_marked": interrupted_ok,
        "daemon_exit_codes": [d1.returncode, d2.returncode],
        "work_dir": str(work),
    }
    ok = not missing and not extra and dups == 0 and order_ok and interrupted_ok
    ok = ok and d2.returncode == 0 and killed_at is not None
    report["ok"] = ok
    print(json.dumps(report, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
