//! `hearken train` on a small seeded set of real recordings, and the trained
//! detector in use: by `hearken eval` and by the live daemon.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{audio, labelled_subset, models_dir, succeeds};
use serde_json::Value;

fn hearken(args: &[&str], extra: &[&Path]) -> Output {
    succeeds(
        Command::new(env!("CARGO_BIN_EXE_hearken"))
            .env("HEARKEN_MODELS", models_dir())
            .args(args)
            .args(extra),
        &format!("{args:?}"),
    )
}

/// A small seeded network run on gunshot: two passes over 64 windows per network.
const SMALL_NET: &[&str] = &[
    "--groups",
    "gunshot",
    "--snr",
    "9,0",
    "--seed",
    "3",
    "--epochs",
    "2",
    "--net-windows",
    "64",
];

/// `hearken train --json ARGS --data DATA --out OUT`'s summary.
fn train_json(args: &[&str], data: &Path, out: &Path) -> Value {
    let o = hearken(
        &[&["train", "--json"], args].concat(),
        &[Path::new("--data"), data, Path::new("--out"), out],
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Three eval-dev clips labelled `events` and a few ordinary home sounds: a small
/// training set for seeded runs.
fn three_events_and_some_home(tag: &str, events: &str) -> std::path::PathBuf {
    labelled_subset(
        tag,
        &[
            (events, 3),
            ("speech", 2),
            ("keyboard_typing", 2),
            ("door_knock", 2),
        ],
    )
}

/// Checks that the network `tail` (as `hearken train` exports it) and the same
/// network rebuilt whole by `training/tail.py join` at `whole` give the same group
/// and AudioSet outputs, windowed over gunshots.wav's golden log-mels.
fn tail_equals_whole(tail: &Path, whole: &Path) {
    let base = models_dir().join("efficientat-mn04");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("training/tail.py");
    let python = std::env::var("HEARKEN_PYTHON").unwrap_or_else(|_| "/usr/bin/python3".into());
    succeeds(
        Command::new(python)
            .arg(&script)
            .args(["join", "--base"])
            .arg(base.join("model.onnx"))
            .arg("--net")
            .arg(tail)
            .arg("--out")
            .arg(whole),
        "tail.py join",
    );
    let m = hearken::model::Model::load(&base).unwrap();
    let sha = |p: &Path| hearken::model::sha256_file(p).unwrap();
    let (t, w) = (
        m.with_net(tail, &sha(tail), 1).unwrap(),
        m.with_net(whole, &sha(whole), 1).unwrap(),
    );
    assert!(t.net_reads().is_some_and(|n| n.contains("features.9")));
    assert_eq!(w.net_reads(), None);
    let dir = common::shared().join("models/efficientat-mn04/golden");
    let (_, mel) = common::npy(&dir.join("gunshots_mel.npy")); // [128][1000]
    for start in [0, 150, 300, 450, 600, 800] {
        // 2 s windows (200 frames), frame-major as the daemon hands them over.
        let mut frames = vec![0.0f32; 200 * 128];
        for i in 0..200 {
            for b in 0..128 {
                frames[i * 128 + b] = mel[b * 1000 + start + i];
            }
        }
        let (a, b) = (
            t.run_window(&frames).unwrap(),
            w.run_window(&frames).unwrap(),
        );
        assert_eq!(a.scores, b.scores, "mn04's own scores are untouched");
        assert_eq!(a.heads.len(), 1);
        assert_eq!(a.net_scores.len(), 527);
        for (x, y) in [(&a.heads, &b.heads), (&a.net_scores, &b.net_scores)] {
            let d = common::max_abs_diff(x, y);
            assert!(
                d < 1e-4,
                "window at frame {start}: tail and whole differ by {d}"
            );
        }
    }
}

/// Writes a configuration in `data` that uses the detectors in `detectors` (on their
/// 2 s windows) and runs the daemon with it over gunshots.wav: (configuration,
/// source, output).
fn run_gunshots_with(data: &Path, detectors: &Path) -> (std::path::PathBuf, String, Output) {
    let cfg = common::detectors_config(&data.join("hearken.toml"), detectors);
    let src = format!("file:{}", audio("gunshots.wav").display());
    let run = hearken(
        &[
            "run",
            "--fast",
            "--print-events",
            "--source",
            &src,
            "--config",
        ],
        &[&cfg],
    );
    (cfg, src, run)
}

#[test]
fn a_trained_gunshot_detector_is_deterministic_and_runs_in_the_daemon() {
    let data = three_events_and_some_home("train", "gunshot");
    let (out_a, out_b) = (data.join("det-a"), data.join("det-b"));
    let train = |out: &Path| {
        train_json(
            &[
                "--method", "heads", "--groups", "gunshot", "--snr", "9,0", "--seed", "3",
                "--hidden", "0,4",
            ],
            &data,
            out,
        )
    };
    let summary = train(&out_a);
    let g = &summary[0];
    assert_eq!(g["group"], "gunshot");
    assert_eq!(g["clips"], 3);
    assert!(g["positives"].as_u64().unwrap() > 10, "{g:#}");
    assert!(g["negatives"].as_u64().unwrap() > 10, "{g:#}");
    let file = out_a.join("gunshot.json");
    let det: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(det["model"], "efficientat-mn04");
    // Cross-validation by recording tried every feature kind (and the group's own
    // class scores alone), penalty and hidden size, then hard negatives and
    // evidence gates on the best three, and kept one.
    let candidates = g["candidates"].as_array().unwrap();
    let gate_of = |c: &Value| c["gate"].as_f64().unwrap();
    let mined = |c: &Value| c["hard_negatives"].as_bool().unwrap();
    let count = |f: &dyn Fn(&Value) -> bool| candidates.iter().filter(|c| f(c)).count();
    // The chosen one, given a `sure` score, is listed once more.
    let with_sure = |c: &Value| !c["sure"].is_null();
    assert!(count(&with_sure) <= 1, "{g:#}");
    assert_eq!(
        count(&|c| gate_of(c) == 0.0 && !mined(c) && !with_sure(c)),
        4 * 3 * 2,
        "{g:#}"
    );
    assert_eq!(
        count(&|c| gate_of(c) == 0.0 && mined(c) && !with_sure(c)),
        3,
        "{g:#}"
    );
    assert!(count(&|c| gate_of(c) > 0.0 && mined(c)) > 0, "{g:#}");
    assert_eq!(det["trained"]["hard_negatives"], g["hard_negatives"]);
    // The file carries the chosen gate, on the group's own classes.
    match det.get("gate") {
        Some(gate) => {
            assert!(
                (gate["min"].as_f64().unwrap() - gate_of(g)).abs() < 1e-6,
                "{det:#}"
            );
            assert_eq!(gate["classes"].as_array().unwrap().len(), 6, "{det:#}");
        }
        None => assert_eq!(gate_of(g), 0.0, "{g:#}"),
    }
    if g["features"] == "group_scores" {
        // Saved as class-score features with weight only on the group's classes.
        assert_eq!(det["features"], "scores");
        assert_eq!(det["trained"]["candidate"], "group_scores");
    } else {
        assert_eq!(det["features"], g["features"]);
    }
    let dim = match det["features"].as_str().unwrap() {
        "embedding" => 384,
        "scores" => 527,
        "embedding_scores" => 384 + 527,
        f => panic!("features {f}"),
    };
    let units = g["hidden"].as_u64().unwrap() as usize;
    let out_dim = if units == 0 { dim } else { units };
    assert_eq!(det["weights"].as_array().unwrap().len(), out_dim);
    assert_eq!(det["mean"].as_array().unwrap().len(), dim);
    // Trained on short windows unless told otherwise.
    assert_eq!(
        (det["window_s"].as_f64(), det["hop_s"].as_f64()),
        (Some(2.0), Some(0.5))
    );
    let on = det["on"].as_f64().unwrap();
    assert!(on > 0.0 && on < 1.0 && det["off"].as_f64().unwrap() <= on);
    // A `sure` score is only ever added to a rule that waits for several hops.
    if let Some(sure) = det["sure"].as_f64() {
        assert!(sure > on && sure <= 1.0, "{det:#}");
        assert!(det["onset_hops"].as_u64().unwrap() > 1, "{det:#}");
        assert_eq!(det["sure"], g["sure"]);
    }

    // Same seed, same detector, to the byte.
    train(&out_b);
    assert_eq!(
        std::fs::read(&file).unwrap(),
        std::fs::read(out_b.join("gunshot.json")).unwrap()
    );

    // The daemon loads it and scores gunshot with it.
    let (cfg, src, run) = run_gunshots_with(&data, &out_a);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("gunshot: trained detector"), "{err}");
    let events: Vec<Value> = String::from_utf8_lossy(&run.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        events
            .iter()
            .any(|e| e["group"] == "gunshot" && e["state"] == "start"),
        "{events:#?}"
    );

    // hearken eval measures with it too.
    let ev = hearken(
        &[
            "eval", "--json", "--split", "all", "--snr", "9", "--slot", "15", "--lead", "10",
            "--config",
        ],
        &[
            &cfg,
            Path::new("--data"),
            &data,
            Path::new("--work-dir"),
            &data.join("w"),
        ],
    );
    let report: Value = serde_json::from_slice(&ev.stdout).unwrap();
    let gun = report["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["group"] == "gunshot")
        .unwrap();
    assert_eq!(gun["events"], 3);

    // A detector made for another model is refused with a clear reason.
    let y = Command::new(env!("CARGO_BIN_EXE_hearken"))
        .env("HEARKEN_MODELS", models_dir())
        .args([
            "run", "--fast", "--model", "yamnet", "--source", &src, "--config",
        ])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!y.status.success());
    let err = String::from_utf8_lossy(&y.stderr);
    assert!(
        err.contains("gunshot.json") && err.contains("retrain"),
        "{err}"
    );

    // So is one trained on windows of another length.
    let cfg2 = data.join("short.toml");
    std::fs::write(
        &cfg2,
        format!(
            "[model]\nwindow_s = 10.0\nhop_s = 1.0\n[detection]\ndetectors = \"{}\"\n",
            out_a.display()
        ),
    )
    .unwrap();
    let w = Command::new(env!("CARGO_BIN_EXE_hearken"))
        .env("HEARKEN_MODELS", models_dir())
        .args(["run", "--fast", "--source", &src, "--config"])
        .arg(&cfg2)
        .output()
        .unwrap();
    assert!(!w.status.success());
    let err = String::from_utf8_lossy(&w.stderr);
    assert!(err.contains("window_s") && err.contains("retrain"), "{err}");

    // Installed as the model's own detectors, it brings its window along: no
    // configuration needed.
    let models = common::private_models_dir("own-detectors");
    let own = models.join("efficientat-mn04").join("detectors");
    std::fs::create_dir_all(&own).unwrap();
    std::fs::copy(&file, own.join("gunshot.json")).unwrap();
    let run = succeeds(
        Command::new(env!("CARGO_BIN_EXE_hearken"))
            .env("HEARKEN_MODELS", &models)
            .args(["run", "--fast", "--print-events", "--source", &src]),
        "hearken run with the model's own detectors",
    );
    let _ = std::fs::remove_dir_all(&models);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        err.contains("gunshot: trained detector") && err.contains("2 s windows every 0.5 s"),
        "{err}"
    );
    assert!(String::from_utf8_lossy(&run.stdout).contains("\"gunshot\""));
    let _ = std::fs::remove_dir_all(&data);
}

#[test]
fn a_group_of_the_users_own_trains_from_clips_labelled_with_its_name() {
    // dog_bark is an ordinary sound to the dataset's mapping; asked for by name, its
    // clips become the events of the group of that name.
    let data = three_events_and_some_home("own-group", "dog_bark");
    let out = data.join("det");
    let summary = train_json(
        &[
            "--method",
            "heads",
            "--groups",
            "dog_bark",
            "--snr",
            "6",
            "--features",
            "scores",
            "--l2",
            "0.003",
            "--hidden",
            "0",
        ],
        &data,
        &out,
    );
    assert_eq!(summary[0]["group"], "dog_bark");
    assert_eq!(summary[0]["clips"], 3);
    assert!(out.join("dog_bark.json").is_file());
    let _ = std::fs::remove_dir_all(&data);
}

#[test]
fn a_fine_tuned_network_is_deterministic_runs_in_the_daemon_and_is_refused_once_changed() {
    let data = three_events_and_some_home("net", "gunshot");
    let (out_a, out_b) = (data.join("net-a"), data.join("net-b"));
    // A small seeded run: two passes over 64 windows per network, with heads fitted
    // beside it (`auto`) and the network given the group even where a head beats it
    // by a little (a negative margin), so the network is what runs below.
    let train = |out: &Path| {
        train_json(
            &[
                &[
                    "--method",
                    "auto",
                    "--net-margin",
                    "-0.5",
                    "--hidden",
                    "0",
                    "--l2",
                    "0.01",
                ],
                SMALL_NET,
            ]
            .concat(),
            &data,
            out,
        )
    };
    let summary = train(&out_a);
    let g = &summary[0];
    assert_eq!(
        (&g["group"], &g["features"]),
        (&"gunshot".into(), &"net".into())
    );
    // The heads were cross-validated too, on the same mixtures.
    let kinds: Vec<&str> = g["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["features"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"net") && kinds.contains(&"embedding"),
        "{kinds:?}"
    );
    let det: Value =
        serde_json::from_str(&std::fs::read_to_string(out_a.join("gunshot.json")).unwrap())
            .unwrap();
    assert_eq!(det["features"], "net");
    assert_eq!(det["net"]["file"], "net.onnx");
    assert_eq!(det["net"]["groups"], serde_json::json!(["gunshot"]));
    assert_eq!(det["weights"], serde_json::json!([1.0]));
    let net = out_a.join("net.onnx");
    let sha = hearken::model::sha256_file(&net).unwrap();
    assert_eq!(det["net"]["sha256"], sha.as_str());
    assert_eq!(det["trained"]["net"]["epochs"], 2);

    // Same seed, same network and detector, to the byte.
    train(&out_b);
    assert_eq!(
        std::fs::read(&net).unwrap(),
        std::fs::read(out_b.join("net.onnx")).unwrap()
    );
    assert_eq!(
        std::fs::read(out_a.join("gunshot.json")).unwrap(),
        std::fs::read(out_b.join("gunshot.json")).unwrap()
    );

    // The network is exported as its tail, which reads mn04's own tensor where the
    // trained blocks begin; rebuilt whole (the lower blocks from the shipped
    // model), it gives the same outputs on a real recording's windows.
    tail_equals_whole(&net, &data.join("whole.onnx"));

    // The daemon runs the network in place of mn04's own and scores gunshot with it.
    let (cfg, src, run) = run_gunshots_with(&data, &out_a);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        err.contains("runs the fine-tuned network") && err.contains("net.onnx"),
        "{err}"
    );
    assert!(err.contains("gunshot: trained detector"), "{err}");
    for line in String::from_utf8_lossy(&run.stdout).lines() {
        let e: Value = serde_json::from_str(line).unwrap();
        assert!(e["group"].is_string() && e["id"].is_string(), "{e:#}");
    }

    // A network changed after training is refused, by check-config as by run.
    let mut bytes = std::fs::read(&net).unwrap();
    bytes.push(0);
    std::fs::write(&net, bytes).unwrap();
    for args in [
        vec!["check-config"],
        vec!["run", "--fast", "--source", &src, "--config"],
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_hearken"))
            .env("HEARKEN_MODELS", models_dir())
            .args(&args)
            .arg(&cfg)
            .output()
            .unwrap();
        assert!(!o.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("net.onnx") && err.contains("sha256") && err.contains("retrain"),
            "{args:?}: {err}"
        );
    }
    let _ = std::fs::remove_dir_all(&data);
}

#[test]
fn a_frame_level_detector_trains_and_runs_in_the_daemon() {
    let data = three_events_and_some_home("crnn", "gunshot");
    let out = data.join("crnn");
    // A small seeded run: two passes over 64 windows per network.
    let summary = train_json(&[&["--method", "crnn"], SMALL_NET].concat(), &data, &out);
    let g = &summary[0];
    assert_eq!(g["features"], "net", "{g:#}");
    // It has no AudioSet outputs of its own, so no evidence gate was tried on it.
    assert!(
        g["candidates"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["gate"] == 0.0),
        "{g:#}"
    );
    let det: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("gunshot.json")).unwrap()).unwrap();
    assert_eq!(det["trained"]["net"]["kind"], "crnn");
    assert!(det.get("gate").is_none_or(|g| g.is_null()), "{det:#}");
    let sha = hearken::model::sha256_file(&out.join("net.onnx")).unwrap();
    assert_eq!(det["net"]["sha256"], sha.as_str());

    // The daemon runs it beside mn04 and scores gunshot with its frames.
    let (_, _, run) = run_gunshots_with(&data, &out);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("gunshot: trained detector"), "{err}");
    for line in String::from_utf8_lossy(&run.stdout).lines() {
        let e: Value = serde_json::from_str(line).unwrap();
        assert!(e["group"].is_string() && e["id"].is_string(), "{e:#}");
    }
    let _ = std::fs::remove_dir_all(&data);
}
