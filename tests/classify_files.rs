//! `hearken classify` on the shared real recordings, on every WAV sample format, and
//! on damaged files.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{audio, model};
use hearken::audio::{FileDecoder, StreamResampler};
use hearken::classify::{classify_file, ClassifyOptions, FileReport};
use hearken::model::Model;
use hearken::privacy::Anonymize;

const MODELS: [&str; 2] = ["efficientat-mn04", "yamnet"];

fn classify(m: &Model, path: &Path) -> FileReport {
    classify_file(m, path, &ClassifyOptions::default())
        .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()))
}

fn top1(r: &FileReport) -> &str {
    &r.predictions[0].label
}

fn labels(r: &FileReport) -> Vec<&str> {
    r.predictions.iter().map(|p| p.label.as_str()).collect()
}

#[test]
fn real_recordings_get_the_right_top_label() {
    let birds = [
        "Bird",
        "Bird vocalization, bird call, bird song",
        "Chirp, tweet",
        "Bird flight, flapping wings",
    ];
    for name in MODELS {
        let m = model(name);
        let r = classify(&m, &audio("birds1.wav"));
        assert!(birds.contains(&top1(&r)), "{name} birds1: {:?}", labels(&r));
        let r = classify(&m, &audio("typing.wav"));
        assert!(
            ["Typing", "Computer keyboard"].contains(&top1(&r)),
            "{name} typing: {:?}",
            labels(&r)
        );
        for f in ["speech_sample1.wav", "speech_sample2.flac"] {
            let r = classify(&m, &audio(f));
            assert_eq!(top1(&r), "Speech", "{name} {f}: {:?}", labels(&r));
        }
        let r = classify(&m, &audio("gunshots.wav"));
        if name == "yamnet" {
            // YAMNet itself (golden scores, reproduced to 1e-6) ranks the ontology
            // parent "Explosion" above "Gunshot, gunfire" on this clip; gunshot must
            // be the runner-up.
            assert_eq!(
                &labels(&r)[..2],
                &["Explosion", "Gunshot, gunfire"],
                "{name} gunshots"
            );
        } else {
            assert_eq!(
                top1(&r),
                "Gunshot, gunfire",
                "{name} gunshots: {:?}",
                labels(&r)
            );
        }
        // Windows cover the file and carry ids.
        assert!(!r.windows.is_empty());
        assert!((r.windows.last().unwrap().end_s - r.duration_s).abs() < 0.05);
        assert!(r.predictions.iter().all(|p| p.label_id.starts_with('/')));
    }
}

/// Decodes a shared recording to mono at `rate`.
fn load_mono(name: &str, rate: u32) -> Vec<f32> {
    let mut dec = FileDecoder::open(&audio(name)).unwrap();
    let mut rs = StreamResampler::new(dec.info().sample_rate, rate).unwrap();
    let (mut mono, mut out) = (Vec::new(), Vec::new());
    while {
        mono.clear();
        dec.next_chunk(&mut mono).unwrap()
    } {
        rs.push(&mono, &mut out);
    }
    rs.finish(&mut out);
    out
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hearken-test-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write_wav(path: &Path, x: &[f32], rate: u32, channels: u16, bits: u16, float: bool) {
    let spec = hound::WavSpec {
        channels,
        sample_rate: rate,
        bits_per_sample: bits,
        sample_format: if float {
            hound::SampleFormat::Float
        } else {
            hound::SampleFormat::Int
        },
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for &v in x {
        for _ in 0..channels {
            if float {
                w.write_sample(v).unwrap();
            } else {
                let max = ((1i64 << (bits - 1)) - 1) as f32;
                let s = (v.clamp(-1.0, 1.0) * max) as i32;
                if bits == 8 {
                    w.write_sample(s as i8).unwrap();
                } else {
                    w.write_sample(s).unwrap();
                }
            }
        }
    }
    w.finalize().unwrap();
}

#[test]
fn every_wav_sample_format_decodes_to_the_same_answer() {
    let m = model("efficientat-mn04");
    let dir = tmpdir("formats");
    let x = load_mono("gunshots.wav", 44100);
    // (bits, float, channels, rate): hound writes WAVE_FORMAT_EXTENSIBLE for more than
    // two channels or more than 16 bits.
    let cases = [
        (8, false, 1, 22050),
        (16, false, 2, 44100),
        (24, false, 1, 48000),
        (32, false, 2, 16000),
        (32, true, 1, 8000),
        (24, false, 6, 96000),
    ];
    for (bits, float, ch, rate) in cases {
        let y = if rate == 44100 {
            x.clone()
        } else {
            load_mono("gunshots.wav", rate)
        };
        // Resampling a clipped recording overshoots full scale; keep it writable.
        let y: Vec<f32> = y.iter().map(|v| v.clamp(-1.0, 1.0)).collect();
        let p = dir.join(format!("g_{bits}_{float}_{ch}_{rate}.wav"));
        write_wav(&p, &y, rate, ch, bits, float);
        // The decoder returns what was written, to the format's precision.
        let mut dec = FileDecoder::open(&p).unwrap();
        assert_eq!(dec.info().channels, ch as usize);
        assert_eq!(dec.info().sample_rate, rate);
        let mut back = Vec::new();
        while dec.next_chunk(&mut back).unwrap() {}
        assert_eq!(back.len(), y.len());
        let tol = if float {
            1e-7
        } else {
            3.0 / (1u64 << (bits - 1)) as f32
        };
        let err = common::max_abs_diff(&back, &y);
        assert!(err <= tol, "{}: decode error {err} > {tol}", p.display());
        let r = classify(&m, &p);
        if bits == 8 {
            // 8-bit quantisation noise is audible; the gunshot must still rank high.
            assert!(
                labels(&r)[..3].contains(&"Gunshot, gunfire"),
                "{}: {:?}",
                p.display(),
                labels(&r)
            );
        } else {
            assert_eq!(
                top1(&r),
                "Gunshot, gunfire",
                "{}: {:?}",
                p.display(),
                labels(&r)
            );
        }
        assert!(
            (r.duration_s - 10.5).abs() < 0.01,
            "{}: {}",
            p.display(),
            r.duration_s
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn damaged_and_odd_files_give_an_error_or_a_result_never_a_panic() {
    let m = model("efficientat-mn04");
    let dir = tmpdir("bad");
    let gun = std::fs::read(audio("gunshots.wav")).unwrap();
    let flac = std::fs::read(audio("speech_sample2.flac")).unwrap();

    let empty = dir.join("empty.wav");
    std::fs::write(&empty, b"").unwrap();
    let e = classify_file(&m, &empty, &ClassifyOptions::default()).unwrap_err();
    assert!(format!("{e:#}").contains("empty"), "{e:#}");
    assert!(format!("{e:#}").contains("empty.wav"));

    let random = dir.join("random.wav");
    let mut seed = 0x2545F4914F6CDD1Du64;
    let bytes: Vec<u8> = (0..50_000)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect();
    std::fs::write(&random, &bytes).unwrap();
    let e = classify_file(&m, &random, &ClassifyOptions::default()).unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("random.wav") && msg.contains("not a readable WAV or FLAC"),
        "{msg}"
    );
    assert!(!msg.contains('\n'));

    let missing = dir.join("nope.wav");
    let e = classify_file(&m, &missing, &ClassifyOptions::default()).unwrap_err();
    assert!(format!("{e:#}").contains("nope.wav"));

    // Truncated files: the audio that is there is classified, with a warning.
    let trunc = dir.join("trunc.wav");
    std::fs::write(&trunc, &gun[..gun.len() / 2]).unwrap();
    let r = classify(&m, &trunc);
    assert!(r.duration_s > 4.0 && r.duration_s < 6.0, "{}", r.duration_s);
    assert!(r.warning.is_some(), "truncation is reported");
    let trunc_flac = dir.join("trunc.flac");
    std::fs::write(&trunc_flac, &flac[..flac.len() / 2]).unwrap();
    match classify_file(&m, &trunc_flac, &ClassifyOptions::default()) {
        Ok(r) => assert!(r.duration_s > 1.0 && r.duration_s < 6.0),
        Err(e) => assert!(format!("{e:#}").contains("trunc.flac")),
    }
    // Header only.
    let hdr = dir.join("header-only.wav");
    std::fs::write(&hdr, &gun[..44]).unwrap();
    if let Err(e) = classify_file(&m, &hdr, &ClassifyOptions::default()) {
        assert!(format!("{e:#}").contains("header-only.wav"), "{e:#}");
    }

    // A FLAC named .wav is recognised by content.
    let renamed = dir.join("really-flac.wav");
    std::fs::write(&renamed, &flac).unwrap();
    assert_eq!(top1(&classify(&m, &renamed)), "Speech");

    // One sample: a (silent) result, not a crash.
    let one = dir.join("one.wav");
    write_wav(&one, &[0.5], 44100, 1, 16, false);
    for name in MODELS {
        let r = classify(&model(name), &one);
        assert!(r.duration_s < 0.001);
        assert_eq!(r.windows.len(), 1);
    }

    // Corrupt every byte after the header in places: never a panic.
    for step in [7usize, 97, 1031] {
        let mut g = gun.clone();
        for i in (60..g.len()).step_by(step) {
            g[i] ^= 0x5a;
        }
        let p = dir.join(format!("noisy{step}.wav"));
        std::fs::write(&p, &g).unwrap();
        let _ = classify_file(&m, &p, &ClassifyOptions::default());
        let mut f = flac.clone();
        for i in (100..f.len()).step_by(step) {
            f[i] ^= 0x5a;
        }
        let p = dir.join(format!("noisy{step}.flac"));
        std::fs::write(&p, &f).unwrap();
        let _ = classify_file(&m, &p, &ClassifyOptions::default());
    }
    std::fs::remove_dir_all(&dir).ok();
}

fn hearken(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_hearken"))
        .args(args)
        .env("HEARKEN_MODELS", common::models_dir())
        .output()
        .unwrap()
}

#[test]
fn cli_json_has_the_max_shape_and_reports_failures_per_file() {
    let dir = tmpdir("cli");
    let bad = dir.join("bad.wav");
    std::fs::write(&bad, b"RIFF....WAVEjunk").unwrap();
    let gun = audio("gunshots.wav");
    // The committed manifests, the shared model files.
    let mdir = dir.join("mn04");
    std::fs::create_dir_all(&mdir).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("models/efficientat-mn04/model.toml"),
        mdir.join("model.toml"),
    )
    .unwrap();
    for f in ["model.onnx", "labels.csv"] {
        std::fs::copy(
            common::shared().join("models/efficientat-mn04").join(f),
            mdir.join(f),
        )
        .unwrap();
    }
    let out = hearken(&[
        "classify",
        "--model",
        mdir.to_str().unwrap(),
        "--json",
        "--patches",
        "--top",
        "3",
        gun.to_str().unwrap(),
        bad.to_str().unwrap(),
    ]);
    assert!(
        !out.status.success(),
        "a failed file makes the exit code non-zero"
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    let ok = &lines[0];
    assert_eq!(ok["status"], "ok");
    assert_eq!(ok["model"], "efficientat-mn04");
    assert_eq!(ok["predictions"].as_array().unwrap().len(), 3);
    assert_eq!(ok["predictions"][0]["label_id"], "/m/032s66");
    assert_eq!(ok["predictions"][0]["label"], "Gunshot, gunfire");
    assert!(ok["predictions"][0]["probability"].as_f64().unwrap() > 0.2);
    let w = &ok["windows"][0];
    assert_eq!(w["start_s"], 0.0);
    assert_eq!(w["scores"].as_array().unwrap().len(), 527);
    let err = &lines[1];
    assert_eq!(err["status"], "error");
    assert!(err["message"].as_str().unwrap().contains("bad.wav"));

    // --filter restricts the labels; --start shifts the windows.
    let out = hearken(&[
        "classify",
        "--model",
        mdir.to_str().unwrap(),
        "--json",
        "--filter",
        "Speech,/m/032s66",
        "--start",
        "2",
        gun.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = v["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["label"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["Gunshot, gunfire", "Speech"]);
    assert_eq!(v["windows"][0]["start_s"], 2.0);

    // A missing model says how to install it.
    let out = hearken(&[
        "classify",
        "--model",
        dir.join("nomodel").to_str().unwrap(),
        gun.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("model.toml"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn anonymised_audio_keeps_the_gunshot_and_differs_from_the_original() {
    let gun = audio("gunshots.wav");
    let m = model("efficientat-mn04");
    let plain = classify(&m, &gun);
    let with = |a: Anonymize| {
        let opts = ClassifyOptions {
            anonymize: Some(a),
            ..ClassifyOptions::default()
        };
        classify_file(&m, &gun, &opts).unwrap()
    };
    let scrambled = with(Anonymize::Scramble {
        block_s: 0.5,
        seed: 1,
    });
    assert!(
        labels(&scrambled).contains(&"Gunshot, gunfire"),
        "{scrambled:#?}"
    );
    // The same length of audio, in another order: the windows' scores change.
    assert_eq!(scrambled.windows.len(), plain.windows.len());
    let tops = |r: &FileReport| -> Vec<f32> {
        r.windows
            .iter()
            .flat_map(|w| w.predictions.iter().map(|p| p.probability))
            .collect()
    };
    assert_ne!(tops(&scrambled), tops(&plain));
    // Deterministic for a seed.
    let again = with(Anonymize::Scramble {
        block_s: 0.5,
        seed: 1,
    });
    assert_eq!(tops(&again), tops(&scrambled));
    let noisy = with(Anonymize::DpNoise {
        snr_db: 10.0,
        cutoff_hz: 8000.0,
        seed: 1,
    });
    assert_eq!(noisy.windows.len(), plain.windows.len());
    assert_ne!(
        noisy.predictions[0].probability,
        plain.predictions[0].probability
    );
}
