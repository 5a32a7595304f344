//! Helpers shared by the integration tests: where the shared assets are, and
//! loading the models from them.
#![allow(dead_code)]

pub mod pulse;
pub mod service;

use std::path::{Path, PathBuf};

use hearken::model::Model;

/// Runs `cmd` and returns its output, failing the test (with `what` and its
/// standard error) unless it succeeded.
pub fn succeeds(cmd: &mut std::process::Command, what: &str) -> std::process::Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{what} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `$HEARKEN_SHARED`, default `../shared` beside the repository.
pub fn shared() -> PathBuf {
    hearken::shared_dir()
}

/// A recording from `shared/audio`.
pub fn audio(name: &str) -> PathBuf {
    shared().join("audio").join(name)
}

/// Loads the committed manifest of `name` with its ONNX and labels from
/// `shared/models/<name>`.
pub fn model(name: &str) -> Model {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models")
        .join(name)
        .join("model.toml");
    let assets = shared().join("models").join(name);
    Model::load_with_assets(&manifest, &assets)
        .unwrap_or_else(|e| panic!("loading model {name} (set HEARKEN_SHARED?): {e:#}"))
}

/// Reads a float32 .npy file: (shape, data).
pub fn npy(path: &Path) -> (Vec<u64>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let f = npyz::NpyFile::new(&bytes[..]).unwrap();
    let shape = f.shape().to_vec();
    (shape, f.into_vec::<f32>().unwrap())
}

/// Largest absolute difference.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// A model search directory for the CLI: the committed manifests with the ONNX and
/// labels files of `shared/models` linked beside them. Returns its path.
pub fn models_dir() -> PathBuf {
    // Built once per test process: tests run in parallel threads, and copying a
    // manifest over itself while another test's hearken reads it gives that one an
    // empty file.
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let root = std::env::temp_dir().join(format!("hearken-models-{}", std::process::id()));
        for name in ["efficientat-mn04", "yamnet"] {
            let d = root.join(name);
            std::fs::create_dir_all(&d).unwrap();
            let manifest = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("models")
                .join(name)
                .join("model.toml");
            std::fs::copy(&manifest, d.join("model.toml")).unwrap();
            for f in ["model.onnx", "labels.csv"] {
                let link = d.join(f);
                if !link.exists() {
                    let _ = std::os::unix::fs::symlink(
                        shared().join("models").join(name).join(f),
                        &link,
                    );
                }
            }
        }
        root
    })
    .clone()
}

/// A labelled folder (labels.csv + the clips folder linked) holding the first `n`
/// clips of each `(label, n)` of `$HEARKEN_SHARED/eval-dev`.
pub fn labelled_subset(tag: &str, wanted: &[(&str, usize)]) -> PathBuf {
    let src = shared().join("eval-dev");
    let dir = std::env::temp_dir().join(format!("hearken-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::symlink(src.join("clips"), dir.join("clips")).unwrap();
    let text = std::fs::read_to_string(src.join("labels.csv")).unwrap();
    let mut lines = text.lines();
    let mut out = vec![lines.next().unwrap().to_string()];
    for &(label, n) in wanted {
        out.extend(
            lines
                .clone()
                .filter(|l| l.split(',').nth(3) == Some(label))
                .take(n)
                .map(String::from),
        );
    }
    std::fs::write(dir.join("labels.csv"), out.join("\n") + "\n").unwrap();
    dir
}

/// Writes a configuration at `path` that runs the trained detectors in
/// `detectors` on the window they are trained on (2 s every 0.5 s); returns `path`.
pub fn detectors_config(path: &Path, detectors: &Path) -> PathBuf {
    std::fs::write(
        path,
        format!(
            "[model]\nwindow_s = 2.0\nhop_s = 0.5\n[detection]\ndetectors = \"{}\"\n",
            detectors.display()
        ),
    )
    .unwrap();
    path.to_path_buf()
}
