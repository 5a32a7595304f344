#!/usr/bin/env python3
"""Choose per-group detection thresholds for hearken's safety groups from a labelled
development set (python3 standard library only).

Usage:
    tools/tune-thresholds.py HEARKEN_BINARY EVAL_DEV_DIR [options]

EVAL_DEV_DIR holds labels.csv (file,source_repo,source_path,label,audioset_label,
is_anomaly,duration_s,sample_rate,channels) and the clips it names. The script runs
`HEARKEN_BINARY classify --json --patches` on every clip with each model, caches the
JSON under /tmp (--cache), and prints markdown tables:

  * efficientat-mn04: a group's clip score = max over the clip's 10 s windows (1 s hop,
    the model's default) of the max over the group's classes.
  * yamnet: run with --window 0.96 --hop 0.48 so each window is one 0.96 s patch; the
    patches are pooled per class over every 10 s span (19 consecutive patches, all
    starts; clips shorter than that are one span), by mean or by max, and the clip
    score = max over spans of the max over the group's classes. With max pooling this
    is simply the max over all patches.

For each model x group x pooling: positives = clips whose label belongs to the group,
negatives = all clips with is_anomaly = 0. `on` = the lowest threshold (rounded up to
0.01) at which at most one negative fires (score >= on); `off` = on / 2, not below
0.05; when on < 0.075 that floor would leave (almost) no hysteresis, so off = on / 2
is printed with a dagger. Safety clips of the other groups that cross `on` are listed
as cross-group confusions. The same scores are then computed on the shared test
recordings (--audio-dir): if speech, typing, rain, birds or applause would fire a
group, `on` is raised above that score (and reported).

No file is written outside the cache directory.
"""

import argparse
import csv
import hashlib
import json
import math
import os
import subprocess
import sys

# ---------------------------------------------------------------------------- config

GROUPS = [
    # name, classes (display names, skipped if absent in a model), positive labels
    ("glass", ["Glass", "Shatter", "Breaking"], ["glass_breaking"]),
    ("gunshot", ["Gunshot, gunfire", "Machine gun", "Fusillade", "Artillery fire",
                 "Cap gun", "Explosion"], ["gunshot"]),
    ("siren", ["Siren", "Civil defense siren", "Police car (siren)", "Ambulance (siren)",
               "Fire engine, fire truck (siren)", "Emergency vehicle"], ["siren"]),
    ("smoke_alarm", ["Smoke detector, smoke alarm", "Fire alarm", "Alarm", "Beep, bleep"],
     ["alarm_beep", "fire_alarm"]),
    # The generic "Alarm" class is the AudioSet parent of "Telephone": phone rings score
    # ~1.0 on it (YAMNet), so the group is also tuned without it.
    ("smoke_alarm/no-Alarm", ["Smoke detector, smoke alarm", "Fire alarm", "Beep, bleep"],
     ["alarm_beep", "fire_alarm"]),
    ("scream", ["Screaming", "Yell", "Shout", "Children shouting"], ["screaming"]),
]

# Extra class sets compared in the class-set section (besides each group's full set and
# its leave-one-out subsets).
EXTRA_VARIANTS = {
    "glass": [["Glass", "Shatter", "Breaking", "Chink, clink"]],
}

MODELS = {
    # name: (extra classify args, poolings)
    "efficientat-mn04": ([], ["window"]),
    "yamnet": (["--window", "0.96", "--hop", "0.48"], ["mean", "max"]),
}

SPAN_S = 10.0          # YAMNet pooling span
PATCH_S = 0.96
PATCH_HOP_S = 0.48
SPAN_PATCHES = int(math.floor((SPAN_S - PATCH_S) / PATCH_HOP_S + 1e-9)) + 1   # 19

# Shared test recordings: which must stay quiet, which must fire.
QUIET_RECORDINGS = ["speech_sample1.wav", "speech_sample2.flac", "typing.wav", "rain.wav",
                    "birds1.wav", "applause.wav"]
REPORT_ONLY = ["dog.wav", "car-horn.wav"]
MUST_FIRE = {"gunshots.wav": "gunshot"}

GRID = [0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
OFF_FLOOR = 0.05
BATCH = 40

# ----------------------------------------------------------------------- classifier


def file_sig(path):
    st = os.stat(path)
    return "%s|%d|%d" % (os.path.abspath(path), st.st_size, int(st.st_mtime))


def run_classifier(binary, models_dir, model, files, cache_dir):
    """Return {abs path: parsed JSON object} for files, running only uncached ones."""
    extra = MODELS[model][0]
    key = hashlib.sha1(("%s|%s|%s|%s" % (file_sig(binary), os.path.abspath(models_dir),
                                         model, " ".join(extra))).encode()).hexdigest()[:16]
    d = os.path.join(cache_dir, "%s-%s" % (model, key))
    os.makedirs(d, exist_ok=True)

    def cpath(f):
        return os.path.join(d, hashlib.sha1(file_sig(f).encode()).hexdigest() + ".json")

    todo = [f for f in files if not os.path.exists(cpath(f))]
    env = dict(os.environ, HEARKEN_MODELS=models_dir)
    for i in range(0, len(todo), BATCH):
        batch = todo[i:i + BATCH]
        cmd = [binary, "classify", "--model", model, "--json", "--patches"] + extra + batch
        print("running %s on %d files (%d/%d)" % (model, len(batch), i + len(batch),
                                                  len(todo)), file=sys.stderr)
        out = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             universal_newlines=True)
        if out.returncode != 0:
            sys.exit("classifier failed (%d): %s\n%s" % (out.returncode, " ".join(cmd[:8]),
                                                         out.stderr[-2000:]))
        objs = [json.loads(l) for l in out.stdout.splitlines() if l.strip()]
        if len(objs) != len(batch):
            sys.exit("classifier returned %d objects for %d files" % (len(objs), len(batch)))
        by_name = {os.path.abspath(x.get("file", "")): x for x in objs}
        for f, o in zip(batch, objs):
            o = by_name.get(os.path.abspath(f), o)   # match by path, else by order
            tmp = cpath(f) + ".tmp"
            with open(tmp, "w") as fh:
                json.dump(o, fh)
            os.replace(tmp, cpath(f))
    res = {}
    for f in files:
        with open(cpath(f)) as fh:
            o = json.load(fh)
        if o.get("status") != "ok" or not o.get("windows"):
            sys.exit("classifier could not score %s: %s" % (f, o.get("status")))
        res[os.path.abspath(f)] = o
    return res


def load_labels(path):
    names = {}
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            names[row["display_name"]] = int(row["index"])
    return names


# --------------------------------------------------------------------------- scoring


def clip_score(obj, idx, pooling):
    """(score, class index) of one clip: max over windows/spans of the max over idx.

    pooling: "window" (one score vector per model window), "max" (max over patches),
    "mean" (per-class mean over each span of up to SPAN_PATCHES patches; a clip shorter
    than a span is one span of its own patches), "mean0" (as mean, but always divided by
    SPAN_PATCHES: a short clip counts as an event inside an otherwise silent 10 s span).
    """
    wins = [w["scores"] for w in obj["windows"]]
    if pooling in ("window", "max"):
        return max((s[i], i) for s in wins for i in idx)
    n = min(SPAN_PATCHES, len(wins))
    div = SPAN_PATCHES if pooling == "mean0" else n
    sums = {i: sum(s[i] for s in wins[:n]) for i in idx}
    best = max((sums[i] / div, i) for i in idx)
    for k in range(n, len(wins)):
        for i in idx:
            sums[i] += wins[k][i] - wins[k - n][i]
        best = max(best, max((sums[i] / div, i) for i in idx))
    return best


def ceil2(x):
    """Smallest multiple of 0.01 strictly above x."""
    return round(math.floor(x * 100 + 1e-9) / 100 + 0.01, 2)


def off_for(on):
    """About half of on, not below OFF_FLOOR; when on itself is under 2 x OFF_FLOOR the
    floor cannot hold (off must be <= on), and off = on / 2 is kept (flagged with †)."""
    half = round(on / 2, 3)
    if half >= OFF_FLOOR:
        return round(on / 2, 2), ""
    if OFF_FLOOR <= on / 1.5:      # floor still leaves some hysteresis
        return OFF_FLOOR, ""
    return half, "†"


def auc(pos, neg):
    if not pos or not neg:
        return float("nan")
    s = 0.0
    for p in pos:
        for n in neg:
            s += 1.0 if p > n else 0.5 if p == n else 0.0
    return s / (len(pos) * len(neg))


def fmt_counts(items):
    c = {}
    for lab in items:
        c[lab] = c.get(lab, 0) + 1
    return ", ".join("%s×%d" % (k, v) if v > 1 else k for k, v in
                     sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))) or "–"


def tune(sc, pos, negatives):
    """(on, zero, recall@on, negatives firing @on, recall@zero) for scores sc[path]."""
    ns = sorted((sc[r["path"]] for r in negatives), reverse=True)
    on = ceil2(ns[1]) if len(ns) > 1 else 0.01
    zero = ceil2(ns[0])
    ps = [sc[r["path"]] for r in pos]
    return (on, zero, sum(p >= on for p in ps), sum(n >= on for n in ns),
            sum(p >= zero for p in ps))


# ---------------------------------------------------------------------------- main


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("binary", help="hearken binary (release build)")
    ap.add_argument("eval_dev", help="eval-dev folder with labels.csv and clips/")
    ap.add_argument("--models-dir", default=os.environ.get(
        "HEARKEN_MODELS", os.path.join(os.path.dirname(here), "models")),
        help="models folder (HEARKEN_MODELS; default: ../models next to this script)")
    ap.add_argument("--audio-dir", default=os.path.join(
        os.path.dirname(os.path.dirname(here)), "shared", "audio"),
        help="shared test recordings (default: ../../shared/audio); '' to skip")
    ap.add_argument("--cache", default="/tmp/hearken-tune-cache", help="JSON cache folder")
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated models")
    ap.add_argument("--details", action="store_true",
                    help="also list every negative / cross-group clip scoring >= 0.1")
    args = ap.parse_args()

    binary = os.path.abspath(args.binary)
    with open(os.path.join(args.eval_dev, "labels.csv"), newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        r["path"] = os.path.abspath(os.path.join(args.eval_dev, r["file"]))
    clips = [r["path"] for r in rows]
    audio = []
    if args.audio_dir:
        for n in QUIET_RECORDINGS + REPORT_ONLY + list(MUST_FIRE):
            p = os.path.join(args.audio_dir, n)
            if os.path.exists(p):
                audio.append(os.path.abspath(p))
            else:
                print("warning: %s not found" % p, file=sys.stderr)

    negatives = [r for r in rows if r["is_anomaly"] == "0"]
    print("# hearken threshold tuning\n")
    print("eval-dev: %d clips (%d ordinary negatives); binary %s; models %s\n"
          % (len(rows), len(negatives), binary, os.path.abspath(args.models_dir)))
    print("Clip score = max over 10 s windows (mn04: the model's windows, 1 s hop; YAMNet: "
          "spans of %d consecutive 0.96 s patches at every 0.48 s, pooled per class by mean "
          "or max) of the max over the group's classes. A clip fires when score >= on. "
          "`on` = lowest threshold (0.01 steps) with at most 1 ordinary negative firing; "
          "`off` = on/2, not below %.2f (†: on < %.3f, so off = on/2).\n"
          % (SPAN_PATCHES, OFF_FLOOR, 1.5 * OFF_FLOOR))

    summary = []
    for model in args.models.split(","):
        labels = load_labels(os.path.join(args.models_dir, model, "labels.csv"))
        names = {i: n for n, i in labels.items()}
        objs = run_classifier(binary, args.models_dir, model, clips + audio, args.cache)
        pools = MODELS[model][1]
        print("\n## %s\n" % model)

        # --- per-class diagnostics
        print("### Per-class separation (clip score = max over windows/patches)\n")
        print("| group | class | AUC pos vs ordinary | median pos | max ordinary (label) |")
        print("|---|---|---|---|---|")
        seen = set()
        for g, classes, poslabs in GROUPS:
            pos = [r for r in rows if r["label"] in poslabs]
            for c in classes + EXTRA_VARIANTS.get(g, [[]])[0]:
                if (g.split("/")[0], c) in seen:
                    continue
                seen.add((g.split("/")[0], c))
                if c not in labels:
                    print("| %s | %s | not in model | | |" % (g, c))
                    continue
                ps = sorted(clip_score(objs[r["path"]], [labels[c]], "max")[0] for r in pos)
                ns = sorted(((clip_score(objs[r["path"]], [labels[c]], "max")[0], r["label"])
                             for r in negatives), reverse=True)
                print("| %s | %s | %.3f | %.3f | %.3f (%s) |" % (
                    g.split("/")[0], c, auc(ps, [n for n, _ in ns]), ps[len(ps) // 2],
                    ns[0][0], ns[0][1]))
        print()

        # --- class-set variants
        print("### Class-set variants (full set, leave-one-out, extras)\n")
        print("| group | classes | pooling | AUC | on | recall@on | neg@on | 0-neg thr | recall@0-neg |")
        print("|---|---|---|---|---|---|---|---|---|")
        for g, classes, poslabs in GROUPS:
            if "/" in g:
                continue
            pos = [r for r in rows if r["label"] in poslabs]
            variants = [classes] + [[c for c in classes if c != d] for d in classes
                                    if len(classes) > 1] + EXTRA_VARIANTS.get(g, [])
            for var in variants:
                idx = [labels[c] for c in var if c in labels]
                if not idx:
                    continue
                for pl in pools:
                    sc = {r["path"]: clip_score(objs[r["path"]], idx, pl)[0] for r in rows}
                    on, zero, rec, nf, rec0 = tune(sc, pos, negatives)
                    dropped = [c for c in classes if c not in var]
                    name = ("all" if var == classes else "− " + ", ".join(dropped)
                            if len(var) == len(classes) - 1 and not set(var) - set(classes)
                            else ", ".join(var))
                    print("| %s | %s | %s | %.3f | %.2f | %d/%d | %d | %.2f | %d/%d |" % (
                        g, name, pl, auc([sc[r["path"]] for r in pos],
                                         [sc[r["path"]] for r in negatives]),
                        on, rec, len(pos), nf, zero, rec0, len(pos)))
        print()

        for g, classes, poslabs in GROUPS:
            present = [c for c in classes if c in labels]
            missing = [c for c in classes if c not in labels]
            idx = [labels[c] for c in present]
            for pl in pools:
                sc = {r["path"]: clip_score(objs[r["path"]], idx, pl)[0] for r in rows}
                asc = {a: clip_score(objs[a], idx, pl) for a in audio}
                pos = [r for r in rows if r["label"] in poslabs]
                cross = [r for r in rows if r["is_anomaly"] == "1" and r["label"] not in poslabs]
                ps = [sc[r["path"]] for r in pos]
                ns = sorted(((sc[r["path"]], r) for r in negatives), key=lambda t: -t[0])
                on_dev, zero, _, _, _ = tune(sc, pos, negatives)
                on = on_dev
                raised = []
                for a in audio:
                    n = os.path.basename(a)
                    if n in QUIET_RECORDINGS and asc[a][0] >= on:
                        raised.append("%s %.3f" % (n, asc[a][0]))
                        on = max(on, ceil2(asc[a][0]))
                off, dag = off_for(on)

                def fired(t):
                    return ([r for s, r in ns if s >= t],
                            [r for r in pos if sc[r["path"]] >= t],
                            [r for r in cross if sc[r["path"]] >= t])

                print("### %s / %s / pooling %s\n" % (model, g, pl))
                print("classes: %s%s  \npositives: %d (%s), ordinary negatives: %d, "
                      "other-group safety clips: %d, AUC %.3f\n" % (
                          ", ".join(present),
                          (" (not in model: %s)" % ", ".join(missing)) if missing else "",
                          len(pos), "+".join(poslabs), len(ns), len(cross),
                          auc(ps, [s for s, _ in ns])))
                print("| threshold | recall | ordinary negatives firing | other-group safety clips firing |")
                print("|---|---|---|---|")
                for t in sorted(set(GRID + [on, zero, on_dev])):
                    nf, pf, cf = fired(t)
                    mark = (" **on**" if t == on else "") + (" (0 neg)" if t == zero else "")
                    print("| %.2f%s | %d/%d (%.0f%%) | %d: %s | %d: %s |" % (
                        t, mark, len(pf), len(pos), 100.0 * len(pf) / len(pos), len(nf),
                        fmt_counts(r["label"] for r in nf), len(cf),
                        fmt_counts(r["label"] for r in cf)))
                nf, pf, cf = fired(on)
                _, pz, _ = fired(zero)
                print()
                print("top ordinary negatives: %s  " % ", ".join(
                    "%s %.3f" % (r["label"], s) for s, r in ns[:4]))
                missed = sorted((sc[r["path"]], os.path.basename(r["file"])) for r in pos
                                if sc[r["path"]] < on)
                if missed:
                    print("positives missed at on: %d, lowest: %s  " % (len(missed), ", ".join(
                        "%s %.3f" % (f, s) for s, f in missed[:3])))
                if raised:
                    print("**on raised from %.2f to %.2f because of test recordings: %s**  "
                          % (on_dev, on, ", ".join(raised)))
                if audio:
                    print("test recordings (score, top class): %s\n" % ", ".join(
                        "%s %.3f %s%s" % (os.path.basename(a), asc[a][0], names[asc[a][1]],
                                          " **FIRES**" if asc[a][0] >= on else "")
                        for a in audio))
                if args.details:
                    for s_, r in ns:
                        if s_ >= 0.1:
                            print("- neg %.3f %s" % (s_, r["file"]))
                    for r in cross:
                        if sc[r["path"]] >= 0.1:
                            print("- cross %.3f %s" % (sc[r["path"]], r["file"]))
                    print()
                checks = []
                for a in audio:
                    n = os.path.basename(a)
                    if n in QUIET_RECORDINGS and asc[a][0] >= on:
                        checks.append("%s fires" % n)
                    if MUST_FIRE.get(n) == g and asc[a][0] < on:
                        checks.append("%s does NOT fire (%.3f)" % (n, asc[a][0]))
                    if MUST_FIRE.get(n) == g and asc[a][0] >= on:
                        checks.append("%s fires (%.3f)" % (n, asc[a][0]))
                    if n in REPORT_ONLY and asc[a][0] >= on:
                        checks.append("%s fires (%.3f)" % (n, asc[a][0]))
                extra = ""
                if pl == "mean":
                    sc0 = {r["path"]: clip_score(objs[r["path"]], idx, "mean0")[0] for r in rows}
                    o0, _, r0, n0, _ = tune(sc0, pos, negatives)
                    extra = "%d/%d @ %.2f" % (r0, len(pos), o0)
                summary.append(dict(model=model, group=g, pooling=pl, on=on, off=off, dag=dag,
                                    on_dev=on_dev, zero=zero, recall=len(pf), npos=len(pos),
                                    nneg=len(nf), neglabs=fmt_counts(r["label"] for r in nf),
                                    cross=fmt_counts(r["label"] for r in cf), ncross=len(cf),
                                    recall0=len(pz), raised=bool(raised), checks=checks,
                                    auc=auc(ps, [s for s, _ in ns]), mean0=extra))

    print("\n## Summary\n")
    print("| model | group | pooling | on | off | recall@on | ordinary firing @on | "
          "cross-group @on | 0-neg thr | recall@0-neg | AUC | test recordings |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for s in summary:
        print("| %s | %s | %s | %.2f%s | %s%s | %d/%d | %d %s | %d %s | %.2f | %d/%d | %.3f | %s |" % (
            s["model"], s["group"], s["pooling"], s["on"], " (raised)" if s["raised"] else "",
            ("%.3f" % s["off"]).rstrip("0"), s["dag"], s["recall"], s["npos"], s["nneg"],
            "(%s)" % s["neglabs"] if s["nneg"] else "", s["ncross"],
            "(%s)" % s["cross"] if s["ncross"] else "", s["zero"], s["recall0"], s["npos"],
            s["auc"], "; ".join(s["checks"]) or "quiet"))
    print()
    ym = [s for s in summary if s["model"] == "yamnet"]
    if ym:
        print("### YAMNet pooling: mean vs max\n")
        print("Ranked by recall@on, then recall@0-neg, then fewer cross-group firings. "
              "\"mean, diluted\": recall if each short clip were an event inside an otherwise "
              "silent 10 s span (missing patches count as 0), re-tuned the same way.\n")
        print("| group | mean | max | better | mean, diluted |")
        print("|---|---|---|---|---|")
        for g, _, _ in GROUPS:
            m = {s["pooling"]: s for s in ym if s["group"] == g}
            if "mean" in m and "max" in m:
                def key(s):
                    return (s["recall"], s["recall0"], -s["ncross"])
                better = ("tie" if key(m["mean"]) == key(m["max"]) else
                          "mean" if key(m["mean"]) > key(m["max"]) else "max")
                print("| %s | %d/%d @ %.2f, 0-neg %d/%d, %d cross | %d/%d @ %.2f, 0-neg %d/%d, "
                      "%d cross | %s | %s |" % (
                          g, m["mean"]["recall"], m["mean"]["npos"], m["mean"]["on"],
                          m["mean"]["recall0"], m["mean"]["npos"], m["mean"]["ncross"],
                          m["max"]["recall"], m["max"]["npos"], m["max"]["on"],
                          m["max"]["recall0"], m["max"]["npos"], m["max"]["ncross"], better,
                          m["mean"]["mean0"]))


if __name__ == "__main__":
    main()
