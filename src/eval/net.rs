//! `hearken train --method net`: mn04 fine-tuned end to end on home-like mixtures,
//! with one output per group (the PyTorch trainer in `training/finetune.py`).
//!
//! This side decides what the trainer sees — the clips, already split by source
//! recording and dealt into cross-validation folds — and runs it: once per fold
//! with that fold left out (so the fold can be scored by a network that never heard
//! it) and once on everything for the network that ships. The trainer reads the
//! clips as one float32 file at the model's rate and a JSON index ([`export`]).

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::dataset::fnv1a;
use super::mix::Signal;

/// How the network is trained.
#[derive(Debug, Clone, Serialize)]
pub struct NetOptions {
    /// Which network is trained.
    pub kind: NetKind,
    /// The Python interpreter that has torch (Debian's `python3-torch`).
    pub python: PathBuf,
    /// `finetune.py`.
    pub script: PathBuf,
    /// Passes over the data.
    pub epochs: usize,
    /// Windows drawn per pass.
    pub windows: usize,
    /// First mn04 block trained (the lower ones stay as shipped).
    pub train_from: usize,
    /// Threads the trainer uses.
    pub threads: usize,
    /// Every group from the network (`--method net`); otherwise (`auto`) heads are
    /// fitted too and each group keeps whichever wins.
    pub only: bool,
    /// With `only` off: how much more cross-validated recall the network needs than
    /// the best head to take a group.
    pub margin: f64,
    /// At most this many clips per group train the network (the mixtures take
    /// [`super::learn::TrainOptions::max_per_group`] of them).
    pub max_per_group: usize,
}

/// The network `hearken train` trains beside (or instead of) the heads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NetKind {
    /// mn04 itself, fine-tuned with one output per group (`finetune.py`).
    Mn04,
    /// A small frame-level CNN + GRU event detector on the same log-mels
    /// (`crnn.py`).
    Crnn,
}

impl NetKind {
    /// The trainer script's file name.
    pub fn script(self) -> &'static str {
        match self {
            NetKind::Mn04 => "finetune.py",
            NetKind::Crnn => "crnn.py",
        }
    }
}

/// The interpreter `hearken train --method net` runs: `$HEARKEN_PYTHON`, else
/// Debian's `/usr/bin/python3` (where `python3-torch` installs), else `python3`.
pub fn default_python() -> PathBuf {
    if let Some(p) = std::env::var_os("HEARKEN_PYTHON") {
        return PathBuf::from(p);
    }
    let debian = Path::new("/usr/bin/python3");
    if debian.is_file() {
        return debian.to_path_buf();
    }
    PathBuf::from("python3")
}

/// Why `python` cannot run the trainer (it lacks torch, onnx or numpy, or does not
/// run at all), or `None` when it can.
pub fn trainer_missing(python: &Path) -> Option<String> {
    let out = std::process::Command::new(python)
        .args(["-c", "import torch, onnx, numpy"])
        .stdin(std::process::Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "{} cannot import torch, onnx and numpy ({}); on Debian: apt-get install python3-torch python3-onnx python3-numpy",
            python.display(),
            String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or("").trim()
        )),
        Err(e) => Some(format!("cannot run {}: {e}", python.display())),
    }
}

/// Where the trainer for `kind` (`finetune.py`, `crnn.py`) is: `$HEARKEN_TRAINING`,
/// `./training`, the source tree this binary was built from, or where the .deb
/// installs it.
pub fn default_script(kind: NetKind) -> Result<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("HEARKEN_TRAINING") {
        dirs.push(PathBuf::from(d));
    }
    dirs.push(PathBuf::from("training"));
    dirs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("training"));
    dirs.push(PathBuf::from("/usr/share/hearken/training"));
    for d in &dirs {
        let s = d.join(kind.script());
        if s.is_file() {
            return Ok(s);
        }
    }
    let tried: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    bail!(
        "training/{} not found (looked in {}); set HEARKEN_TRAINING to the folder holding it",
        kind.script(),
        tried.join(", ")
    )
}

#[derive(Serialize)]
struct ClipEntry<'a> {
    name: &'a str,
    group: Option<&'a str>,
    label: &'a str,
    recording: &'a str,
    fold: usize,
    offset: usize,
    len: usize,
}

/// Writes `events` and `backgrounds` for the trainer into `dir`: `clips.f32` (the
/// samples back to back, little-endian) and `clips.json` (per clip: name, group,
/// label, recording, fold, offset and length in samples). Returns a hash of what
/// was written, for caching networks trained on it.
pub fn export(
    dir: &Path,
    rate: u32,
    events: &[Signal],
    backgrounds: &[Signal],
    fold_of: &std::collections::HashMap<String, usize>,
) -> Result<u64> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let data = dir.join("clips.f32");
    let mut w = BufWriter::new(
        std::fs::File::create(&data).with_context(|| format!("cannot write {}", data.display()))?,
    );
    let mut entries = Vec::new();
    let mut offset = 0;
    let mut key = format!("{rate}");
    for s in events.iter().chain(backgrounds) {
        for x in &s.samples {
            w.write_all(&x.to_le_bytes())?;
        }
        let fold = fold_of.get(&s.recording).copied().unwrap_or(0);
        key.push_str(&format!(
            "|{} {:?} {} {fold}",
            s.name,
            s.group,
            s.samples.len()
        ));
        entries.push(ClipEntry {
            name: &s.name,
            group: s.group.as_deref(),
            label: &s.label,
            recording: &s.recording,
            fold,
            offset,
            len: s.samples.len(),
        });
        offset += s.samples.len();
    }
    w.into_inner()
        .map_err(|e| e.into_error())
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot write {}", data.display()))?;
    let index = serde_json::json!({ "rate": rate, "clips": entries });
    std::fs::write(dir.join("clips.json"), serde_json::to_string(&index)?)
        .with_context(|| format!("cannot write {}", dir.join("clips.json").display()))?;
    Ok(fnv1a(&key))
}

/// Trains one network on the clips in `data` (leaving out fold `exclude`, if any)
/// and writes it to `out`. The trainer's progress goes to the log.
#[allow(clippy::too_many_arguments)]
pub fn finetune(
    opts: &NetOptions,
    data: &Path,
    base_onnx: &Path,
    groups: &[String],
    exclude: Option<usize>,
    seed: u64,
    window_s: f64,
    hop_s: f64,
    out: &Path,
) -> Result<()> {
    let mut cmd = Command::new(&opts.python);
    cmd.arg(&opts.script).arg("--data").arg(data);
    match opts.kind {
        NetKind::Mn04 => {
            cmd.arg("--base")
                .arg(base_onnx)
                .arg("--train-from")
                .arg(opts.train_from.to_string());
        }
        NetKind::Crnn => {
            cmd.arg("--hop-s").arg(hop_s.to_string());
        }
    }
    cmd.arg("--groups")
        .arg(groups.join(","))
        .arg("--out")
        .arg(out)
        .arg("--exclude-fold")
        .arg(exclude.map_or("-1".to_string(), |k| k.to_string()))
        .arg("--seed")
        .arg(seed.to_string())
        .arg("--epochs")
        .arg(opts.epochs.to_string())
        .arg("--windows")
        .arg(opts.windows.to_string())
        .arg("--threads")
        .arg(opts.threads.to_string())
        .arg("--window-s")
        .arg(window_s.to_string());
    tracing::info!(
        "fine-tuning {} ({}): {:?}",
        out.display(),
        exclude.map_or("all folds".to_string(), |k| format!("fold {k} left out")),
        cmd
    );
    // Its progress goes where the log goes: stdout may carry `--json`.
    cmd.stdout(std::process::Stdio::from(std::io::stderr()));
    let status = cmd.status().with_context(|| {
        format!(
            "cannot run {} (install Debian's python3-torch, python3-onnx and python3-numpy, or set HEARKEN_PYTHON to a Python that has torch)",
            opts.python.display()
        )
    })?;
    if !status.success() {
        bail!(
            "the trainer {} failed ({status}); its messages are above",
            opts.script.display()
        );
    }
    if !out.is_file() {
        bail!("the trainer finished but wrote no {}", out.display());
    }
    Ok(())
}

/// A hash of the trainer's settings and script, so a cached network is reused only
/// for the same recipe.
pub fn recipe_key(
    opts: &NetOptions,
    groups: &[String],
    seed: u64,
    window_s: f64,
    hop_s: f64,
) -> u64 {
    let script = std::fs::read(&opts.script).unwrap_or_default();
    let mn04 = opts.script.with_file_name("mn04.py");
    let frontend = opts.script.with_file_name("frontend.py");
    let mut text = format!(
        "{} {} {} {} {:?} {seed} {window_s}",
        opts.epochs, opts.windows, opts.train_from, opts.threads, groups
    );
    let mut files = vec![
        script,
        std::fs::read(mn04).unwrap_or_default(),
        std::fs::read(frontend).unwrap_or_default(),
    ];
    // finetune.py's export (the network's tail) lives in tail.py.
    if opts.kind == NetKind::Mn04 {
        files.push(std::fs::read(opts.script.with_file_name("tail.py")).unwrap_or_default());
    }
    // The frame-level detector's recipe also lives in finetune.py (its mixer) and
    // depends on the hop it is scored by. (mn04's keys stay as they were.)
    if opts.kind == NetKind::Crnn {
        text.push_str(&format!(" crnn {hop_s}"));
        files.push(std::fs::read(opts.script.with_file_name("finetune.py")).unwrap_or_default());
    }
    for f in files {
        text.push_str(&format!("|{:016x}", fnv1a(&String::from_utf8_lossy(&f))));
    }
    fnv1a(&text)
}
