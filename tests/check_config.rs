//! `hearken check-config FILE` end to end: exit codes and error locations.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Writes `text` to a fresh file in the temp directory.
fn temp_config(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hearken-check-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn check_config(path: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hearken"))
        .arg("check-config")
        .arg(path)
        .output()
        .expect("run hearken")
}

/// stdout and stderr together.
fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn model_installed() -> bool {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models/efficientat-mn04/model.onnx")
        .is_file()
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
    if model_installed() {
        assert!(shown.contains("labels checked"), "{shown}");
    }
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
fn unknown_label_fails_when_model_is_installed() {
    if !model_installed() {
        eprintln!("skipping: efficientat-mn04 not installed");
        return;
    }
    let path = temp_config(
        "label.toml",
        "[detection.groups.glass]\nlabels = [\"Glass\", \"Smoke alarm\"]\n",
    );
    let out = check_config(&path);
    let shown = text(&out);
    assert!(!out.status.success(), "{shown}");
    assert!(
        shown.contains(&format!(
            "{}:2: detection.groups.glass.labels: ",
            path.display()
        )),
        "{shown}"
    );
    assert!(shown.contains("\"Smoke alarm\""), "{shown}");
    assert!(shown.contains("Smoke detector, smoke alarm"), "{shown}");
}

#[test]
fn missing_file_fails_naming_it() {
    let path = std::env::temp_dir().join("hearken-check-config-does-not-exist.toml");
    let out = check_config(&path);
    let shown = text(&out);
    assert!(!out.status.success(), "{shown}");
    assert!(shown.contains(&path.display().to_string()), "{shown}");
}
