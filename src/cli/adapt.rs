//! `hearken adapt`: teach the trained detectors this home's own false alarms.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};

use super::*;

/// `hearken adapt`'s options (see [`Command::Adapt`]).
#[derive(clap::Args)]
pub(crate) struct AdaptArgs {
    #[command(flatten)]
    pub(crate) daemon: DaemonArgs,
    /// Go back to the shipped detectors (removes the adapted ones).
    #[arg(long, conflicts_with = "scheduled")]
    pub(crate) reset: bool,
    /// Run as the weekly timer does (hearken-adapt.timer): do nothing, and say so,
    /// when [learning] weekly_adapt or store is off or there is nothing to adapt,
    /// instead of failing.
    #[arg(long)]
    pub(crate) scheduled: bool,
    /// Overrides [learning] false_alarms_per_week.
    #[arg(long)]
    pub(crate) false_alarms_per_week: Option<f64>,
    /// Overrides [learning] max_recall_drop.
    #[arg(long)]
    pub(crate) max_recall_drop: Option<f64>,
    /// Hours of stored home sound needed before adapting.
    #[arg(long, default_value_t = 0.5)]
    pub(crate) min_hours: f64,
    /// L2 penalties tried for the home correction.
    #[arg(long, value_delimiter = ',', default_values_t = hearken::learn::adapt::AdaptOptions::default().l2s)]
    pub(crate) l2: Vec<f64>,
    /// The report as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `hearken adapt`: see [`Command::Adapt`].
pub(crate) fn run(a: AdaptArgs) -> Result<ExitCode> {
    let AdaptArgs {
        daemon: DaemonArgs {
            config,
            state_dir,
            model,
        },
        reset,
        scheduled,
        false_alarms_per_week,
        max_recall_drop,
        min_hours,
        l2: l2s,
        json,
    } = a;
    let config = config.as_deref();
    use hearken::eval::validation::ValidationSet;
    use hearken::learn::adapt;
    use hearken::store;
    let overrides = Overrides {
        model,
        ..Default::default()
    };
    let flags = Mqtt {
        state_dir,
        ..Default::default()
    };
    // Everything `hearken run` checks: adapting for a daemon that would not start
    // helps nobody.
    let p = match prepare(config, &overrides, &flags) {
        Ok(p) => p,
        Err(errors) => {
            for e in &errors {
                eprintln!("hearken: {e}");
            }
            return Ok(ExitCode::FAILURE);
        }
    };
    let out = adapt::adapted_dir(&p.state_dir);
    if reset {
        match std::fs::remove_dir_all(&out) {
            Ok(()) => println!(
                "removed the adapted detectors in {}; the daemon uses the shipped ones after SIGHUP or a restart",
                out.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                println!("no adapted detectors in {}: the shipped ones are in use", out.display())
            }
            Err(e) => bail!("cannot remove {}: {e}", out.display()),
        }
        return Ok(ExitCode::SUCCESS);
    }
    let file = config.map_or_else(
        || "the configuration".to_string(),
        |c| c.display().to_string(),
    );
    if scheduled && !p.cfg.learning.weekly_adapt {
        println!(
            "weekly adapting is off ([learning] weekly_adapt = false in {file}); nothing changed"
        );
        return Ok(ExitCode::SUCCESS);
    }
    if scheduled && !p.cfg.learning.store {
        println!("the home store is off ([learning] store = false in {file}): nothing to adapt from; nothing changed");
        return Ok(ExitCode::SUCCESS);
    }
    let Some(dir) = hearken::detect::trained::detectors_dir(&p.cfg.detection, &p.model)? else {
        if scheduled {
            println!("[detection] detectors = \"off\" in {file}: there are no trained detectors to adapt; nothing changed");
            return Ok(ExitCode::SUCCESS);
        }
        bail!("[detection] detectors = \"off\": there are no trained detectors to adapt");
    };
    // The shipped detectors with the household's enrolled ones over them: what
    // the daemon runs before adapting.
    let loaded = hearken::learn::enroll::load(&p.cfg, &p.model, &p.state_dir, false)?;
    for m in &loaded.warnings {
        tracing::warn!("{m}");
    }
    let shipped = loaded.detectors;
    if shipped.is_empty() && scheduled {
        println!(
            "no trained detectors for the enabled groups in {}: nothing to adapt; nothing changed",
            dir.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    if shipped.is_empty() {
        bail!(
            "no trained detectors for the enabled groups in {}: adapting needs them (./setup.sh or `hearken train` makes them)",
            dir.display()
        );
    }
    // Each detector's validation set is the one beside it.
    let mut sets: Vec<(PathBuf, Option<ValidationSet>)> = Vec::new();
    for f in &loaded.files {
        let folder = f
            .parent()
            .unwrap_or(std::path::Path::new("."))
            .to_path_buf();
        if !sets.iter().any(|(d, _)| *d == folder) {
            let v = ValidationSet::load(&folder)?;
            sets.push((folder, v));
        }
    }
    let validation: Vec<Option<&ValidationSet>> = loaded
        .files
        .iter()
        .map(|f| {
            let folder = f.parent().unwrap_or(std::path::Path::new("."));
            sets.iter()
                .find(|(d, _)| d == folder)
                .and_then(|(_, v)| v.as_ref())
        })
        .collect();
    let home_dir = p.state_dir.join(store::DIR);
    let home = store::read(&home_dir)?;
    for (f, why) in &home.damaged {
        tracing::warn!("home store: {} {why}; left out", f.display());
    }
    if home.corrupt_regions > 0 || home.torn_tail_bytes > 0 {
        tracing::warn!(
            "home store: {} corrupt region(s) and {} bytes of torn tail skipped",
            home.corrupt_regions,
            home.torn_tail_bytes
        );
    }
    let opts = adapt::AdaptOptions {
        false_alarms_per_week: false_alarms_per_week
            .unwrap_or(p.cfg.learning.false_alarms_per_week),
        max_recall_drop: max_recall_drop.unwrap_or(p.cfg.learning.max_recall_drop),
        min_hours,
        l2s,
        ..Default::default()
    };
    let report = adapt::adapt_all(
        &adapt::Shipped {
            detectors: &shipped,
            files: &loaded.files,
            validation: &validation,
        },
        &p.cfg.detection.groups,
        &home,
        p.model.labels(),
        &opts,
        &out,
    )?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "home store {}: {:.2} h of sound, {} windows kept",
        home_dir.display(),
        report.observed_h,
        report.stored_windows
    );
    println!(
        "{:<12} {:<9} {:>15} {:>21} {:>19} {:>8}",
        "group", "outcome", "on", "false alarms/week", "validation recall", "windows"
    );
    let r2 = |r: Option<f64>| r.map_or("-".to_string(), |r| format!("{r:.2}"));
    for g in &report.groups {
        println!(
            "{:<12} {:<9} {:>15} {:>21} {:>19} {:>8}",
            g.group,
            g.outcome,
            format!("{:.3} → {:.3}", g.on_before, g.on_after),
            format!("{:.1} → {:.1}", g.fa_per_week_before, g.fa_per_week_after),
            format!("{} → {}", r2(g.recall_before), r2(g.recall_after)),
            g.home_windows
        );
        println!("{:<12} {}", "", g.reason);
    }
    if report.groups.iter().any(|g| g.outcome == "adapted") {
        println!(
            "adapted detectors: {} (the daemon takes them on SIGHUP or restart; `hearken adapt --reset` goes back to the shipped ones)",
            out.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
