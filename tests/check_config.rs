//! `hearken check-config FILE` end to end: exit codes and error locations, and that
//! it refuses exactly what `hearken run` refuses, with the same message.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{audio, models_dir};

/// A fresh folder of this test process in the temp directory.
fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hearken-check-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes `text` to a fresh file in the temp directory.
fn temp_config(name: &str, text: &str) -> PathBuf {
    let path = temp_dir().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// The binary, finding the models of `$HEARKEN_SHARED` in `models` (a search
/// directory such as [`models_dir`]), with its state in the temp directory.
fn hearken(models: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hearken"));
    c.env("HEARKEN_MODELS", models)
        .env("STATE_DIRECTORY", temp_dir().join("state"))
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC");
    c
}

/// Runs `c` to the end, killing it after two minutes (a daemon that started when it
/// should have refused must not hang the test).
fn output_within(mut c: Command) -> Output {
    let mut child = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run hearken");
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    child.wait_with_output().unwrap()
}

fn check_config_with(path: &Path, models: &Path) -> Output {
    let mut c = hearken(models);
    c.arg("check-config").arg(path);
    output_within(c)
}

fn check_config(path: &Path) -> Output {
    check_config_with(path, &models_dir())
}

/// `hearken run --fast --source file:<short recording> --config path` and `extra`.
fn run_with(path: &Path, models: &Path, extra: &[&str]) -> Output {
    let mut c = hearken(models);
    c.args(["run", "--fast", "--source"])
        .arg(format!("file:{}", audio("speech_sample1.wav").display()))
        .arg("--config")
        .arg(path)
        .args(extra);
    output_within(c)
}

/// stdout and stderr together.
fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Asserts that check-config refuses the file `name` holding `config`, naming `key`
/// at `line`, and that `hearken run` with that file refuses to start with the very
/// same message. Returns the message.
fn refused_alike(name: &str, config: &str, key: &str, line: usize) -> String {
    refused_alike_with(name, config, key, line, &models_dir())
}

/// [`refused_alike`] with the models found in `models`.
fn refused_alike_with(name: &str, config: &str, key: &str, line: usize, models: &Path) -> String {
    let path = temp_config(name, config);
    let check = check_config_with(&path, models);
    let shown = text(&check);
    assert!(
        !check.status.success(),
        "check-config accepted {config:?}: {shown}"
    );
    assert!(!shown.contains(": ok ("), "{shown}");
    let want = format!("{}:{line}: {key}: ", path.display());
    let message = String::from_utf8_lossy(&check.stderr)
        .lines()
        .find(|l| l.starts_with(&want))
        .unwrap_or_else(|| panic!("check-config does not say {want:?}: {shown}"))
        .to_string();

    let run = run_with(&path, models, &[]);
    let ran = text(&run);
    assert!(!run.status.success(), "run started with {config:?}: {ran}");
    assert!(!ran.contains("listening on"), "{ran}");
    assert!(
        String::from_utf8_lossy(&run.stderr)
            .lines()
            .any(|l| l == format!("hearken: {message}")),
        "run does not refuse with check-config's message {message:?}: {ran}"
    );
    message
}

/// A model search directory holding efficientat-mn04 (its files linked from
/// [`models_dir`]) with `detector` installed as its own trained `gunshot` detector.
fn models_with_detector(tag: &str, detector: &serde_json::Value) -> PathBuf {
    let root = temp_dir().join(format!("models-{tag}"));
    let dir = root.join("efficientat-mn04");
    std::fs::create_dir_all(dir.join("detectors")).unwrap();
    for f in ["model.toml", "model.onnx", "labels.csv"] {
        let link = dir.join(f);
        if !link.exists() {
            std::os::unix::fs::symlink(models_dir().join("efficientat-mn04").join(f), &link)
                .unwrap();
        }
    }
    std::fs::write(
        dir.join("detectors/gunshot.json"),
        serde_json::to_string(detector).unwrap(),
    )
    .unwrap();
    root
}

/// A valid (if useless) trained gunshot detector for efficientat-mn04's 384-d
/// embedding, trained on 2 s windows every 0.5 s.
fn detector_for(model: &str, dim: usize) -> serde_json::Value {
    serde_json::json!({
        "group": "gunshot",
        "model": model,
        "embedding_dim": dim,
        "features": "embedding",
        "window_s": 2.0,
        "hop_s": 0.5,
        "mean": vec![0.0; dim],
        "scale": vec![1.0; dim],
        "weights": vec![0.0; dim],
        "bias": 0.0,
        "on": 0.5,
        "off": 0.25,
    })
}

#[test]
fn good_file_passes() {
    let path = temp_config(
        "good.toml",
        "[node]\nid = \"kitchen\"\nroom = \"Kitchen\"\n\n\
         [detection.groups.dog_bark]\nenabled = false\n\n\
         [detection.groups.glass]\non = 0.4\n",
    );
    let out = check_config(&path);
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(
        shown.contains(&format!("{}: ok (9 groups enabled: ", path.display())),
        "{shown}"
    );
    assert!(!shown.contains("dog_bark"), "{shown}");
    assert!(
        shown.contains("model efficientat-mn04, labels checked"),
        "{shown}"
    );
}

#[test]
fn example_file_passes() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/hearken.example.toml");
    let out = check_config(&path);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(": ok (10 groups enabled: "),
        "{}",
        text(&out)
    );
}

#[test]
fn bad_file_fails_with_line_and_key() {
    let path = temp_config(
        "bad.toml",
        "[audio]\nsource = \"default\"\n\n[detection.groups.glass]\non = 1.5\n",
    );
    let out = check_config(&path);
    let shown = text(&out);
    assert!(!out.status.success(), "{shown}");
    assert!(
        shown.contains(&format!(
            "{}:5: detection.groups.glass.on: must be in (0, 1], got 1.5",
            path.display()
        )),
        "{shown}"
    );
}

#[test]
fn unknown_key_fails_with_line_and_key() {
    let path = temp_config("unknown.toml", "[model]\nname = \"yamnet\"\nhop = 0.5\n");
    let out = check_config(&path);
    let shown = text(&out);
    assert!(!out.status.success(), "{shown}");
    assert!(
        shown.contains(&format!(
            "{}:3: model.hop: unknown key `hop`",
            path.display()
        )),
        "{shown}"
    );
}

#[test]
fn unknown_label_fails_naming_the_key() {
    let m = refused_alike(
        "label.toml",
        "[detection.groups.glass]\nlabels = [\"Glass\", \"Smoke alarm\"]\n",
        "detection.groups.glass.labels",
        2,
    );
    assert!(m.contains("\"Smoke alarm\""), "{m}");
    assert!(m.contains("Smoke detector, smoke alarm"), "{m}");
}

#[test]
fn missing_file_fails_naming_it() {
    let path = std::env::temp_dir().join("hearken-check-config-does-not-exist.toml");
    let out = check_config(&path);
    let shown = text(&out);
    assert!(!out.status.success(), "{shown}");
    assert!(shown.contains(&path.display().to_string()), "{shown}");
}

// What `run` refuses before it opens the source or the broker, check-config refuses
// too, with the same message. These files all passed check-config once.

#[test]
fn a_nul_in_the_detectors_path_is_refused_alike() {
    let m = refused_alike(
        "nul-detectors.toml",
        "[detection]\ndetectors = \"\\u0000\"\n",
        "detection.detectors",
        2,
    );
    assert!(m.contains("control characters"), "{m}");
}

#[test]
fn a_model_name_that_names_no_model_is_refused_alike() {
    let m = refused_alike(
        "file-model.toml",
        "[audio]\nring_seconds = 4\n\n[model]\nname = \"file:\"\n",
        "model.name",
        5,
    );
    assert!(m.contains("cannot open model \"file:\""), "{m}");
}

#[test]
fn a_window_the_installed_detectors_were_not_trained_for_is_refused_alike() {
    let models = models_with_detector("installed", &detector_for("efficientat-mn04", 384));
    let m = refused_alike_with(
        "window-installed.toml",
        "[node]\nroom = \"hall\"\n\n[model]\nwindow_s = 5.0\n",
        "model.window_s",
        5,
        &models,
    );
    assert!(m.contains("trained on 2 s windows every 0.5 s"), "{m}");
    // At the default window, the same detector brings its own: no error.
    let ok = temp_config("window-default.toml", "[node]\nroom = \"hall\"\n");
    let out = check_config_with(&ok, &models);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("trained detectors: gunshot (2 s windows every 0.5 s)"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_window_a_detectors_folder_was_not_trained_for_is_refused_alike() {
    let models = models_with_detector("folder", &detector_for("efficientat-mn04", 384));
    let folder = models.join("efficientat-mn04/detectors");
    refused_alike(
        "window-folder.toml",
        &format!(
            "[model]\nwindow_s = 3.0\nhop_s = 0.5\n\n[detection]\ndetectors = \"{}\"\n",
            folder.display()
        ),
        "model.window_s",
        2,
    );
}

#[test]
fn a_detector_for_another_model_is_refused_alike() {
    let models = models_with_detector("other-model", &detector_for("yamnet", 1024));
    let folder = models.join("efficientat-mn04/detectors");
    let m = refused_alike(
        "other-model.toml",
        &format!(
            "[model]\nwindow_s = 2.0\nhop_s = 0.5\n\n[detection]\ndetectors = \"{}\"\n",
            folder.display()
        ),
        "detection.detectors",
        6,
    );
    assert!(m.contains("retrain"), "{m}");
}

#[test]
fn a_nul_in_the_base_topic_is_refused_alike() {
    let m = refused_alike(
        "nul-topic.toml",
        "[mqtt]\nbase_topic = \"home\\u0000hearken\"\n",
        "mqtt.base_topic",
        2,
    );
    assert!(m.contains("control characters"), "{m}");
}

#[test]
fn an_unreadable_ca_file_is_refused_alike() {
    let m = refused_alike(
        "ca.toml",
        "[mqtt]\nhost = \"127.0.0.1\"\nport = 1\ntls = true\n\
         ca_file = \"/nonexistent/hearken-ca.pem\"\n",
        "mqtt.ca_file",
        5,
    );
    assert!(m.contains("/nonexistent/hearken-ca.pem"), "{m}");
}

#[test]
fn a_state_dir_that_is_a_file_is_refused_alike() {
    let file = temp_config("not-a-dir", "");
    let m = refused_alike(
        "state-file.toml",
        &format!(
            "[mqtt]\nhost = \"127.0.0.1\"\nport = 1\nstate_dir = \"{}\"\n",
            file.display()
        ),
        "mqtt.state_dir",
        4,
    );
    assert!(
        m.contains(&format!("{} is not a directory", file.display())),
        "{m}"
    );
}

#[test]
fn an_embedded_listen_address_that_is_no_address_is_refused_alike() {
    // Used only with the embedded broker, which `--embedded-broker` can turn on.
    refused_alike(
        "listen.toml",
        "[mqtt]\nembedded_listen = \"localhost:1883\"\n",
        "mqtt.embedded_listen",
        2,
    );
}

#[test]
fn a_host_with_a_port_in_it_is_refused_alike() {
    // It would be dialled as "127.0.0.1:1884" on port 1883, forever.
    refused_alike(
        "host-port.toml",
        "[mqtt]\nhost = \"127.0.0.1:1884\"\n",
        "mqtt.host",
        2,
    );
}

#[test]
fn run_names_the_option_that_set_a_bad_value() {
    let path = temp_config("plain.toml", "[node]\nroom = \"hall\"\n");
    let not_a_dir = temp_config("not-a-state-dir", "");
    let not_a_dir = not_a_dir.display().to_string();
    for (args, want) in [
        (
            vec!["--node-id", "kitchen pi"],
            "hearken: command line (--node-id): node.id: must be",
        ),
        (
            vec!["--model", "file:"],
            "hearken: command line (--model): model.name: cannot open model",
        ),
        (
            vec!["--mqtt", "mqtt://127.0.0.1:1", "--state-dir", &not_a_dir],
            "hearken: command line (--state-dir): mqtt.state_dir: cannot hold the outbox",
        ),
    ] {
        let out = run_with(&path, &models_dir(), &args);
        let ran = text(&out);
        assert!(!out.status.success(), "{args:?}: {ran}");
        assert!(!ran.contains("listening on"), "{args:?}: {ran}");
        assert!(ran.contains(want), "{args:?}: {ran}");
    }
}
