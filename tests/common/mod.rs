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

/// Starts `cmd` reading `stdin:RATE:1` audio from a pipe: the child (its
/// output piped too) and the pipe to write the audio into.
pub fn spawn_on_stdin(
    cmd: &mut std::process::Command,
    rate: u32,
) -> (std::process::Child, std::process::ChildStdin) {
    use std::process::Stdio;
    let mut child = cmd
        .arg("--source")
        .arg(format!("stdin:{rate}:1"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take().unwrap();
    (child, stdin)
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
///
/// One folder per content (the manifests and where `shared` is), made whole under
/// a private name and renamed into place: test processes share it instead of each
/// leaving a folder of its own in the temp dir, and none ever sees a half-written
/// manifest.
pub fn models_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let names = ["efficientat-mn04", "yamnet"];
        let manifest = |name: &str| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("models")
                .join(name)
                .join("model.toml")
        };
        let mut key = shared().display().to_string();
        for name in names {
            key.push_str(&std::fs::read_to_string(manifest(name)).unwrap());
        }
        let tmp = std::env::temp_dir();
        let root = tmp.join(format!(
            "hearken-models-{:016x}",
            hearken::eval::dataset::fnv1a(&key)
        ));
        if root.is_dir() {
            return root;
        }
        let staging = tmp.join(format!("hearken-models-new-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&staging);
        for name in names {
            let d = staging.join(name);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::copy(manifest(name), d.join("model.toml")).unwrap();
            for f in ["model.onnx", "labels.csv"] {
                std::os::unix::fs::symlink(shared().join("models").join(name).join(f), d.join(f))
                    .unwrap();
            }
        }
        // Another process may have won the race: then its folder is the same.
        if std::fs::rename(&staging, &root).is_err() {
            let _ = std::fs::remove_dir_all(&staging);
        }
        root
    })
    .clone()
}

/// A model search directory of this test's own (named by `tag`), for a test that
/// changes what is in it (installs detectors): the shared one stays untouched.
pub fn private_models_dir(tag: &str) -> PathBuf {
    let root = std::env::temp_dir().join(format!("hearken-models-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    for name in ["efficientat-mn04", "yamnet"] {
        let d = root.join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(
            models_dir().join(name).join("model.toml"),
            d.join("model.toml"),
        )
        .unwrap();
        for f in ["model.onnx", "labels.csv"] {
            std::os::unix::fs::symlink(models_dir().join(name).join(f), d.join(f)).unwrap();
        }
    }
    root
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

/// A loopback port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
