//! `hearken enroll GROUP`: learn a household's own sound from a few examples.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};

use super::*;

/// `hearken enroll`'s options (see [`Command::Enroll`]).
#[derive(clap::Args)]
pub(crate) struct EnrollArgs {
    /// The group: a built-in one (smoke_alarm, glass…) or a new name (a-z, 0-9, _).
    pub(crate) group: String,
    /// The examples as audio files (WAV, FLAC…), 3 to 10; without it they are
    /// recorded from the configured source (or --source).
    #[arg(long, num_args = 1..)]
    pub(crate) file: Vec<PathBuf>,
    /// How many takes to record (3 to 10).
    #[arg(long, default_value_t = 5)]
    pub(crate) takes: usize,
    /// Seconds per recorded take.
    #[arg(long, default_value_t = 8.0)]
    pub(crate) seconds: f64,
    /// Where to record from (as `hearken run --source`).
    #[arg(long)]
    pub(crate) source: Option<String>,
    /// What to ask before each recorded take (default: one for the group).
    #[arg(long)]
    pub(crate) prompt: Option<String>,
    /// Keep the recorded takes (in <state dir>/enroll-takes/GROUP) instead of
    /// deleting them after training.
    #[arg(long)]
    pub(crate) keep: bool,
    /// A new group is a home-safety group.
    #[arg(long)]
    pub(crate) safety: bool,
    #[command(flatten)]
    pub(crate) daemon: DaemonArgs,
    /// Labelled folders of other sounds (labels.csv) to mix the takes into and
    /// learn against; default: the training part of $HEARKEN_SHARED/eval-dev and
    /// all of $HEARKEN_SHARED/train-extra.
    #[arg(long)]
    pub(crate) data: Vec<PathBuf>,
    #[command(flatten)]
    pub(crate) mixing: MixArgs,
    /// Placements of the takes in the mixtures per ratio, at least.
    #[arg(long, default_value_t = 24)]
    pub(crate) placements: usize,
    /// At most this many of a built-in group's own examples beside the takes.
    #[arg(long, default_value_t = 30)]
    pub(crate) max_shipped: usize,
    /// False alarms per hour the threshold is chosen for.
    #[arg(long, default_value_t = 0.5)]
    pub(crate) target_fa: f64,
    /// The report as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `hearken enroll`: see [`Command::Enroll`].
pub(crate) fn run(a: EnrollArgs) -> Result<ExitCode> {
    use anyhow::Context;
    use hearken::learn::enroll::{self, Take};
    let group = a.group.trim().to_string();
    if group.is_empty()
        || group.len() > 32
        || !group
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        bail!("{group:?} is not a group name: use a-z, 0-9 and _, up to 32 characters (e.g. smoke_alarm, doorbell)");
    }
    let n = if a.file.is_empty() {
        a.takes
    } else {
        a.file.len()
    };
    if !(3..=10).contains(&n) {
        bail!("enrolling takes 3 to 10 examples, not {n}");
    }
    if !(a.seconds.is_finite() && (1.0..=60.0).contains(&a.seconds)) {
        bail!("--seconds must be 1 to 60");
    }
    if a.mixing.snr.is_empty() || a.mixing.snr.iter().any(|v| !v.is_finite()) || a.placements == 0 {
        bail!("--snr needs at least one ratio in dB and --placements must be above 0");
    }
    let overrides = Overrides {
        source: a.source.clone().into_iter().collect(),
        model: a.daemon.model.clone(),
        ..Default::default()
    };
    let flags = Mqtt {
        state_dir: a.daemon.state_dir.clone(),
        ..Default::default()
    };
    // What `hearken run` would refuse, refused before anything is recorded.
    let p = match prepare(a.daemon.config.as_deref(), &overrides, &flags) {
        Ok(p) => p,
        Err(errors) => {
            for e in &errors {
                eprintln!("hearken: {e}");
            }
            return Ok(ExitCode::FAILURE);
        }
    };
    if hearken::detect::trained::detectors_dir(&p.cfg.detection, &p.model)?.is_none() {
        bail!("[detection] detectors = \"off\": the daemon would not use an enrolled detector; set it to \"\" first");
    }
    let new_group = !p.cfg.detection.groups.contains_key(&group);
    let config_text = match (&a.daemon.config, new_group) {
        (None, true) => bail!(
            "{group} is a new group, and enrolling adds it to the configuration file: pass --config FILE (the daemon's, e.g. /etc/hearken/hearken.toml)"
        ),
        (Some(f), true) => {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("cannot read {}", f.display()))?;
            // Refuse an unwritable file now, not after training.
            std::fs::OpenOptions::new()
                .append(true)
                .open(f)
                .with_context(|| format!("cannot write {} (the group is added there; run as its owner, e.g. with sudo)", f.display()))?;
            Some(text)
        }
        _ => None,
    };
    if !new_group && !p.cfg.detection.groups[&group].enabled {
        eprintln!("note: the group {group} is disabled in the configuration; its enrolled detector is used once it is enabled");
    }
    let shared = hearken::shared_dir();
    let sources: Vec<hearken::eval::learn::Source> = if a.data.is_empty() {
        let s = hearken::eval::learn::default_sources(&shared);
        if let Some(missing) = s.iter().find(|s| !s.dir.join("labels.csv").is_file()) {
            bail!(
                "{} not found: enrolling mixes the takes into those home sounds; set HEARKEN_SHARED or pass --data FOLDER",
                missing.dir.join("labels.csv").display()
            );
        }
        s
    } else {
        a.data
            .iter()
            .map(|d| hearken::eval::learn::Source {
                dir: d.clone(),
                split: hearken::eval::dataset::Split::All,
                groups: None,
            })
            .collect()
    };

    // The takes: files as given, or recorded now.
    let rate = p.model.manifest().frontend.sample_rate;
    let takes_dir = p.state_dir.join("enroll-takes").join(&group);
    let mut recorded: Vec<PathBuf> = Vec::new();
    let mut takes: Vec<Take> = Vec::new();
    if !a.file.is_empty() {
        for f in &a.file {
            let x = hearken::eval::run::decode_at(f, rate)
                .with_context(|| format!("{}: cannot read it as audio", f.display()))?;
            let check = enroll::check_take(&x, rate, false)
                .map_err(|why| anyhow::anyhow!("{}: {why}", f.display()))?;
            takes.push(Take {
                file: f.clone(),
                check,
            });
        }
    } else {
        std::fs::create_dir_all(&takes_dir)
            .with_context(|| format!("cannot create {}", takes_dir.display()))?;
        let prompt = a
            .prompt
            .clone()
            .unwrap_or_else(|| enroll::prompt_for(&group).to_string());
        eprintln!(
            "Recording {n} takes of {:.0} s from {} (the level is shown as it comes).",
            a.seconds, p.sources[0].spec
        );

        let mut stderr = std::io::stderr();
        let mut recorder = enroll::Recorder::start(&p.sources[0].spec).map_err(|e| {
            anyhow::anyhow!("{e:#}; or give the examples as files: hearken enroll {group} --file A.wav B.wav C.wav")
        })?;
        for k in 1..=n {
            let mut attempt = 0;
            loop {
                attempt += 1;
                eprintln!("Take {k} of {n}: {prompt}");
                let (x, take_rate) = match recorder.take(a.seconds, &mut stderr) {
                    Ok(t) => t,
                    Err(e) => {
                        remove_takes(&recorded, &takes_dir, a.keep);
                        return Err(e);
                    }
                };
                match enroll::check_take(&x, take_rate, true) {
                    Ok(check) => {
                        let file = takes_dir.join(format!("take-{k}.wav"));
                        hearken::eval::run::write_wav(&file, &x, take_rate, 1)?;
                        eprintln!(
                            "  ok: loudest {:.0} dBFS, {:.0} dB above the rest, {:.1} s of sound",
                            check.peak_dbfs,
                            check.peak_dbfs - check.floor_dbfs,
                            check.active_s
                        );
                        recorded.push(file.clone());
                        takes.push(Take { file, check });
                        break;
                    }
                    Err(why) if attempt < 3 => eprintln!("  take {k} again: {why}"),
                    Err(why) => {
                        remove_takes(&recorded, &takes_dir, a.keep);
                        bail!("take {k}: {why} (three tries)");
                    }
                }
            }
        }
    }
    let result = enroll_train(&a, &p, &group, new_group, config_text, takes, sources);
    remove_takes(&recorded, &takes_dir, a.keep);
    result
}

/// Deletes recorded takes unless they are to be kept.
pub(crate) fn remove_takes(recorded: &[PathBuf], dir: &std::path::Path, keep: bool) {
    if keep {
        if !recorded.is_empty() {
            eprintln!("the takes are kept in {}", dir.display());
        }
        return;
    }
    for f in recorded {
        let _ = std::fs::remove_file(f);
    }
    let _ = std::fs::remove_dir(dir);
}

/// The training half of `hearken enroll`: labels for a new group, the detector,
/// the configuration, the report.
pub(crate) fn enroll_train(
    a: &EnrollArgs,
    p: &Prepared,
    group: &str,
    new_group: bool,
    config_text: Option<String>,
    takes: Vec<hearken::learn::enroll::Take>,
    sources: Vec<hearken::eval::learn::Source>,
) -> Result<ExitCode> {
    use anyhow::Context;
    use hearken::learn::enroll;
    let mut cfg = p.cfg.clone();
    let mut labels = Vec::new();
    let mut new_text = None;
    if new_group {
        let mut mean = vec![0f32; p.model.labels().len()];
        for t in &takes {
            for (m, s) in mean.iter_mut().zip(enroll::take_scores(&p.model, &t.file)?) {
                *m += s / takes.len() as f32;
            }
        }
        labels = enroll::choose_labels(&mean, p.model.labels(), 3);
        let text = config_text.unwrap_or_default();
        let path = a
            .daemon
            .config
            .as_ref()
            .expect("a new group has a config file");
        let updated = enroll::with_new_group(&text, group, &labels, a.safety)?;
        let parsed = hearken::config::Config::from_str(&updated, &path.display().to_string())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        cfg.detection
            .groups
            .insert(group.to_string(), parsed.detection.groups[group].clone());
        new_text = Some((path.clone(), updated));
    }
    let work = std::env::temp_dir().join(format!("hearken-enroll-{}", std::process::id()));
    let out = enroll::enrolled_dir(&p.state_dir).join(group);
    std::fs::create_dir_all(enroll::enrolled_dir(&p.state_dir))?;
    let req = enroll::Request {
        group: group.to_string(),
        takes: takes.clone(),
        sources,
        seed: a.mixing.seed,
        snrs_db: a.mixing.snr.clone(),
        placements: a.placements,
        max_shipped: a.max_shipped,
        target_fa_per_hour: a.target_fa,
        out: out.clone(),
        work_dir: work.clone(),
    };
    eprintln!(
        "training the {group} detector on {} takes mixed into home sounds (a few minutes)…",
        takes.len()
    );
    let summary = enroll::train(p.model.clone(), &cfg, &req);
    let _ = std::fs::remove_dir_all(&work);
    let enroll::Enrolled { summary, tone } = summary?;
    if let Some((path, text)) = &new_text {
        // Written whole and renamed, so a crash leaves the old file or the new one.
        let tmp = path.with_extension("toml.enroll-tmp");
        std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    }
    let report = serde_json::json!({
        "group": group,
        "new_group": new_group,
        "labels": labels,
        "takes": takes,
        "detector": summary.file,
        "recall": summary.chosen.recall,
        "false_alarms_per_hour": summary.chosen.fa_per_hour,
        "on": summary.chosen.on,
        "off": summary.off,
        "features": summary.chosen.features,
        "hidden": summary.chosen.hidden,
        "clips": summary.clips,
        "tone": tone,
        "config": new_text.as_ref().map(|(p, _)| p.clone()),
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("enrolled {group} from {} takes:", takes.len());
    for t in &takes {
        println!(
            "  {}: {:.1} s, loudest {:.0} dBFS",
            t.file.display(),
            t.check.duration_s,
            t.check.peak_dbfs
        );
    }
    println!(
        "cross-validated on mixtures of the takes and {} other examples into home sounds: recall {:.2} at {:.2} false alarms per hour (on {:.3}, off {:.3})",
        summary.clips.saturating_sub(0),
        summary.chosen.recall,
        summary.chosen.fa_per_hour,
        summary.chosen.on,
        summary.off
    );
    match (&tone.bands, tone.on, &tone.refused) {
        (Some(b), Some(on), _) => println!(
            "its tone (mel bands {}-{}): heard at {:.2}; {} of {} clips of other sounds ({:.1} h) reach that; each take left out of the template and placed into them: {}",
            b[0],
            b[1],
            on,
            tone.negatives_over,
            tone.negative_clips,
            tone.negatives_h,
            tone.recall.map_or("not measured".to_string(), |r| format!("{:.2} of {} found", r, tone.placements))
        ),
        (_, _, Some(why)) => println!("no tone template: {why} (the detector above alone)"),
        _ => {}
    }
    if !tone.same_tone.is_empty() {
        println!(
            "note: {} clips of other sounds hold a tone at the same pitch, as clear as the takes' (another beeper?), and would raise {group} too: {}",
            tone.same_tone.len(),
            tone.same_tone.join(", ")
        );
    }
    println!("detector: {}", summary.file.display());
    if let Some((path, _)) = &new_text {
        println!(
            "added [detection.groups.{group}] to {} with labels {:?}",
            path.display(),
            labels
        );
    }
    println!("the daemon takes it on SIGHUP or restart (sudo systemctl reload hearken); `hearken adapt` adapts it to this home like the others");
    Ok(ExitCode::SUCCESS)
}
