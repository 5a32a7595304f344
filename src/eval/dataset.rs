//! A labelled folder of recordings (`labels.csv` as in `../shared/eval-dev`):
//! which clip belongs to which detection group, which source recording it was cut
//! from, and a split by source recording so no recording is in both train and test.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// One labelled clip.
#[derive(Debug, Clone, PartialEq)]
pub struct Clip {
    /// Path of the audio file.
    pub file: PathBuf,
    /// The dataset's label (`glass_breaking`, `speech`, …).
    pub label: String,
    /// The detection group the label belongs to, or `None` for ordinary sounds.
    pub group: Option<&'static str>,
    /// Id of the source recording the clip was cut from (the unit of the split).
    pub recording: String,
    /// Duration, seconds (from the CSV).
    pub duration_s: f64,
}

#[derive(Deserialize)]
struct Row {
    file: String,
    #[serde(default)]
    source_repo: String,
    #[serde(default)]
    source_path: String,
    label: String,
    #[serde(default)]
    duration_s: f64,
}

/// The detection group of a dataset label: the safety groups hearken ships
/// detectors for. Everything else is an ordinary home sound (a negative).
pub fn group_of(label: &str) -> Option<&'static str> {
    Some(match label {
        "glass_breaking" | "glass" => "glass",
        "gunshot" => "gunshot",
        "siren" => "siren",
        "alarm_beep" | "fire_alarm" | "smoke_alarm" => "smoke_alarm",
        "screaming" | "scream" => "scream",
        _ => return None,
    })
}

/// The groups [`group_of`] can return, in report order.
pub const EVAL_GROUPS: [&str; 5] = ["glass", "gunshot", "siren", "smoke_alarm", "scream"];

/// The source recording a clip was cut from, from its source path: UrbanSound8K's
/// `FSID-class-occurrence-slice.wav` → the Freesound id; ESC's `fold-FSID-take` →
/// the Freesound id; Edge Impulse `…_chunkN…` → what precedes `_chunk`; a media
/// fragment (`#t=14,20`) is dropped. Otherwise the path itself (its own recording).
pub fn recording_id(source_repo: &str, source_path: &str) -> String {
    let path = source_path.split('#').next().unwrap_or(source_path);
    let name = path.rsplit('/').next().unwrap_or(path);
    let stem = name.split('.').next().unwrap_or(name);
    if path.contains("UrbanSound8K") {
        if let Some(fsid) = stem.split('-').next() {
            return format!("freesound:{fsid}");
        }
    }
    let parts: Vec<&str> = stem.split('-').collect();
    if parts.len() == 3 && parts[0].len() == 1 && parts[1].chars().all(|c| c.is_ascii_digit()) {
        return format!("freesound:{}", parts[1]);
    }
    if let Some(i) = path.find("_chunk") {
        return format!("{source_repo}/{}", &path[..i]);
    }
    format!("{source_repo}/{path}")
}

/// Which part of a dataset to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// Held-out recordings only (evaluation).
    Test,
    /// The rest (training, tuning).
    Train,
    /// Everything.
    All,
}

impl std::str::FromStr for Split {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "test" => Ok(Split::Test),
            "train" => Ok(Split::Train),
            "all" => Ok(Split::All),
            _ => Err(format!("expected test, train or all, not {s:?}")),
        }
    }
}

/// FNV-1a, 64-bit: a stable hash (the same on every machine and Rust version).
pub fn fnv1a(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// True for the recordings held out for testing: 40 % of them, chosen by a stable
/// hash of the recording id, so every clip of a recording lands on the same side.
pub fn is_held_out(recording: &str) -> bool {
    fnv1a(recording) % 10 < 4
}

/// Whether `clip` belongs to `split`.
pub fn in_split(clip: &Clip, split: Split) -> bool {
    match split {
        Split::All => true,
        Split::Test => is_held_out(&clip.recording),
        Split::Train => !is_held_out(&clip.recording),
    }
}

/// Reads `dir/labels.csv`; file paths are relative to `dir`. Errors name the file
/// and row.
pub fn load(dir: &Path) -> Result<Vec<Clip>> {
    let csv_path = dir.join("labels.csv");
    let mut reader = csv::Reader::from_path(&csv_path)
        .with_context(|| format!("cannot read {}", csv_path.display()))?;
    let mut clips = Vec::new();
    for (i, row) in reader.deserialize::<Row>().enumerate() {
        let row = row.with_context(|| format!("{}: row {}", csv_path.display(), i + 2))?;
        clips.push(Clip {
            file: dir.join(&row.file),
            group: group_of(&row.label),
            // Without a source path each file is its own recording.
            recording: if row.source_path.is_empty() {
                format!("file:{}", row.file)
            } else {
                recording_id(&row.source_repo, &row.source_path)
            },
            label: row.label,
            duration_s: row.duration_s,
        });
    }
    if clips.is_empty() {
        bail!("{}: no clips listed", csv_path.display());
    }
    Ok(clips)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recordings_of_cut_clips_are_grouped() {
        let a = recording_id("r", "UrbanSound8K/audio/fold3/177742-0-0-49.wav");
        let b = recording_id("r", "UrbanSound8K/audio/fold5/177742-0-0-50.wav");
        assert_eq!(a, b);
        assert_eq!(a, "freesound:177742");
        assert_eq!(
            recording_id(
                "r",
                "ESC-10 Dataset/training-data/004-Baby cry/1-211527-A.mp3"
            ),
            "freesound:211527"
        );
        let c1 = recording_id("g", "glass/Glass.cbor.5s2_chunk1.wav.5usc.wav");
        let c2 = recording_id("g", "glass/Glass.cbor.5s2_chunk3.wav.9xyz.wav");
        assert_eq!(c1, c2);
        assert_eq!(
            recording_id("s", "test_audio/first_alert.wav#t=14,20"),
            recording_id("s", "test_audio/first_alert.wav#t=0,5")
        );
        assert_ne!(
            recording_id("d", "dcase/knock001.wav"),
            recording_id("d", "dcase/knock002.wav")
        );
    }

    #[test]
    fn a_minimal_labels_csv_makes_each_file_its_own_recording() {
        let dir = std::env::temp_dir().join(format!("hearken-ds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("labels.csv"),
            "file,label\na.wav,doorbell\nb.wav,doorbell\n",
        )
        .unwrap();
        let clips = load(&dir).unwrap();
        assert_eq!(clips.len(), 2);
        assert_eq!(clips[0].label, "doorbell");
        assert_eq!(clips[0].group, None);
        assert_ne!(clips[0].recording, clips[1].recording);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn labels_map_to_groups() {
        assert_eq!(group_of("glass_breaking"), Some("glass"));
        assert_eq!(group_of("alarm_beep"), Some("smoke_alarm"));
        assert_eq!(group_of("fire_alarm"), Some("smoke_alarm"));
        assert_eq!(group_of("phone_ring"), None);
    }

    #[test]
    fn the_split_is_stable_and_by_recording() {
        let held: Vec<bool> = (0..1000).map(|i| is_held_out(&format!("rec{i}"))).collect();
        let n = held.iter().filter(|&&h| h).count();
        assert!((300..500).contains(&n), "{n}");
        assert_eq!(
            is_held_out("freesound:177742"),
            is_held_out("freesound:177742")
        );
        // Pinned: a change of hash would silently move recordings across the split.
        assert_eq!(fnv1a("hearken"), 0x8064_813e_3a8c_a2c9);
    }
}
