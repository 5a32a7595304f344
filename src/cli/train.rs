//! `hearken train`: detectors learnt from labelled recordings.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};

use super::*;

/// Learn a detector per group on the model's embeddings from labelled recordings
/// mixed into home backgrounds; writes <group>.json files the daemon loads.
#[derive(clap::Args)]
pub(crate) struct TrainArgs {
    /// Labelled folders (labels.csv); default: the training part of
    /// $HEARKEN_SHARED/eval-dev and all of $HEARKEN_SHARED/train-extra. A folder
    /// given here is used whole.
    #[arg(long)]
    pub(crate) data: Vec<PathBuf>,
    /// Labelled folders used on top of the `--data` ones (or the defaults), e.g.
    /// $HEARKEN_SHARED/train-candidates, to measure what a source adds.
    #[arg(long)]
    pub(crate) also: Vec<PathBuf>,
    /// Take only these groups' clips from the `--also` folders (none of their
    /// ordinary sounds); default: all of them.
    #[arg(long, value_delimiter = ',')]
    pub(crate) also_groups: Vec<String>,
    /// Leave out the default sources' candidate sirens
    /// ($HEARKEN_SHARED/train-candidates), to measure what they add.
    #[arg(long)]
    pub(crate) no_candidates: bool,
    /// Configuration file (groups and their timing); without it, the defaults.
    #[arg(long)]
    pub(crate) config: Option<PathBuf>,
    /// Model name or directory (overrides the config).
    #[arg(long)]
    pub(crate) model: Option<String>,
    /// Groups to train.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "glass,gunshot,siren,smoke_alarm,scream"
    )]
    pub(crate) groups: Vec<String>,
    /// Where the detectors go (default: the model's `detectors` folder).
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) mixing: MixArgs,
    /// At most this many clips per group.
    #[arg(long, default_value_t = 60)]
    pub(crate) max_per_group: usize,
    /// Target false alarms per hour on the cross-validation mixtures.
    #[arg(long, default_value_t = 0.5)]
    pub(crate) target_fa: f64,
    /// Placements of each clip per SNR, each over other background.
    #[arg(long, default_value_t = 1)]
    pub(crate) repeats: usize,
    /// Feature kinds to try: scores (class log-odds), embedding, embedding_scores.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "scores,embedding,embedding_scores"
    )]
    pub(crate) features: Vec<String>,
    /// L2 penalties to try.
    #[arg(long, value_delimiter = ',', default_value = "0.0003,0.003,0.03")]
    pub(crate) l2: Vec<f64>,
    /// Window the detectors are trained on and the daemon then uses, seconds
    /// (default: [model] window_s if the configuration sets it, else 2).
    #[arg(long)]
    pub(crate) window_s: Option<f64>,
    /// Hop between windows, seconds (default: [model] hop_s if set, else 0.5).
    #[arg(long)]
    pub(crate) hop_s: Option<f64>,
    /// Hidden-layer sizes to try (0: logistic regression; more: a small MLP).
    #[arg(long, value_delimiter = ',', default_value = "0,16")]
    pub(crate) hidden: Vec<usize>,
    /// Cross-validation folds, dealt by source recording.
    #[arg(long, default_value_t = 2)]
    pub(crate) folds: usize,
    /// How background sounds are dealt to the folds: `recording` (each source
    /// recording whole) or `kind` (each label whole, so false alarms are
    /// counted on kinds of sound the fold's fit never heard).
    #[arg(long, default_value = "recording", value_parser = ["recording", "kind"])]
    pub(crate) background_folds: String,
    /// Keep the scored training mixtures in this folder and read them back on
    /// the next run when clips, mixing and model settings are unchanged (a
    /// retrain that only tries other candidates then skips the model).
    #[arg(long)]
    pub(crate) cache: Option<PathBuf>,
    /// Share of the cross-validated recall the AudioSet evidence gate must
    /// keep; the strictest gate level that does is chosen (0: the strictest
    /// level tried, ignoring recall; above 1: no gate).
    #[arg(long, default_value_t = 0.9)]
    pub(crate) gate_keep: f64,
    /// Hard-negative mining: share of the negative windows, those a fitted
    /// detector scores highest, that count --hard-weight times in a refit of
    /// the best candidates (0: no mining).
    #[arg(long, default_value_t = 0.02)]
    pub(crate) hard_share: f64,
    /// How many times a mined hard negative counts.
    #[arg(long, default_value_t = 4)]
    pub(crate) hard_weight: usize,
    /// `heads`: small detectors on the model's embedding and scores; `net`:
    /// fine-tune the network itself on the mixtures, one output per group
    /// (needs Python with torch: Debian's python3-torch); `auto`: both, and
    /// each group keeps whichever wins the cross-validation (heads alone,
    /// with a warning, when torch is missing); `crnn`: a small frame-level
    /// CNN + GRU event detector on the log-mels for every group instead.
    #[arg(long, default_value = "auto", value_parser = ["heads", "net", "auto", "crnn"])]
    pub(crate) method: String,
    /// With --method auto: how much more cross-validated recall the network
    /// needs than the best head to take a group.
    #[arg(long, default_value_t = 0.05, allow_negative_numbers = true)]
    pub(crate) net_margin: f64,
    /// With --method net or auto: at most this many clips per group train the
    /// network (default: all); the mixtures take --max-per-group of them.
    #[arg(long)]
    pub(crate) net_max_per_group: Option<usize>,
    /// With --method net: passes over the training windows.
    #[arg(long, default_value_t = 6)]
    pub(crate) epochs: usize,
    /// With --method net: training windows drawn per pass.
    #[arg(long, default_value_t = 2000)]
    pub(crate) net_windows: usize,
    /// With --method net: the first of mn04's blocks (0-16) that is trained;
    /// the ones below stay as shipped.
    #[arg(long, default_value_t = 10)]
    pub(crate) train_from: usize,
    /// Print the summary as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

/// Runs `hearken train`.
pub(crate) fn run(a: TrainArgs) -> Result<ExitCode> {
    let TrainArgs {
        data,
        also,
        also_groups,
        no_candidates,
        config,
        model,
        groups,
        out,
        mixing: MixArgs { seed, snr },
        max_per_group,
        target_fa,
        repeats,
        features,
        l2,
        window_s,
        hop_s,
        hidden,
        folds,
        background_folds,
        cache,
        gate_keep,
        hard_share,
        hard_weight,
        method,
        epochs,
        net_windows,
        net_margin,
        net_max_per_group,
        train_from,
        json,
    } = a;

    use hearken::eval::{dataset::Split, learn, mix::MixSpec, net};
    let mut cfg = effective_config(
        config.as_deref(),
        &Overrides {
            source: Vec::new(),
            model,
            node_id: None,
            http: None,
        },
    )?;
    let model = std::sync::Arc::new(Model::open(&cfg.model.name)?);
    cfg.check_labels(model.labels())?;
    {
        use hearken::config::{DEFAULT_HOP_S, DEFAULT_WINDOW_S};
        use hearken::detect::trained::{TRAIN_HOP_S, TRAIN_WINDOW_S};
        let default = (cfg.model.window_s, cfg.model.hop_s) == (DEFAULT_WINDOW_S, DEFAULT_HOP_S);
        let (w, h) = if default {
            (TRAIN_WINDOW_S, TRAIN_HOP_S)
        } else {
            (cfg.model.window_s, cfg.model.hop_s)
        };
        cfg.model.window_s = window_s.unwrap_or(w);
        cfg.model.hop_s = hop_s.unwrap_or(h);
        if !(0.96..=60.0).contains(&cfg.model.window_s)
            || !(0.1..=cfg.model.window_s).contains(&cfg.model.hop_s)
        {
            bail!("--window-s must be 0.96 to 60 s and --hop-s 0.1 s to the window");
        }
    }
    if !(0.0..=0.5).contains(&hard_share) {
        bail!("--hard-share must be 0 to 0.5 (a share of the negative windows)");
    }
    for g in &groups {
        if !cfg.detection.groups.contains_key(g) {
            bail!("--groups: no group {g:?} in the configuration");
        }
    }
    let whole = |dir| learn::Source {
        dir,
        split: Split::All,
        groups: None,
    };
    let mut sources = if data.is_empty() {
        let mut s = learn::default_sources(&hearken::shared_dir());
        if no_candidates {
            s.retain(|s| !s.dir.ends_with("train-candidates"));
        }
        s
    } else {
        data.into_iter().map(whole).collect()
    };
    sources.extend(also.into_iter().map(|dir| learn::Source {
        groups: (!also_groups.is_empty()).then(|| also_groups.clone()),
        ..whole(dir)
    }));
    let out = out.unwrap_or_else(|| model.dir().join("detectors"));
    let opts = learn::TrainOptions {
        sources,
        groups,
        mix: MixSpec {
            seed,
            rate: model.manifest().frontend.sample_rate,
            snrs_db: snr,
            slot_s: 25.0,
            lead_s: 60.0,
            ..MixSpec::default()
        },
        events_per_mixture: 40,
        max_per_group: Some(max_per_group),
        repeats,
        target_fa_per_hour: target_fa,
        features: features
            .iter()
            .map(|f| {
                hearken::detect::trained::Features::ALL
                    .into_iter()
                    .find(|k| k.name() == f)
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "--features: {f:?} is not scores, embedding or embedding_scores"
                        )
                    })
            })
            .collect::<Result<_>>()?,
        l2s: l2,
        hidden_units: hidden,
        iterations: 300,
        epochs: 20,
        folds,
        backgrounds_by_kind: background_folds == "kind",
        out,
        work_dir: std::env::temp_dir().join(format!("hearken-train-{}", std::process::id())),
        cache_dir: cache,
        gate_keep,
        hard_share,
        hard_weight,
        net: match method.as_str() {
            "net" | "auto" | "crnn" => {
                if !(1..=16).contains(&train_from) || epochs == 0 || net_windows == 0 {
                    bail!("--train-from must be 1 to 16, --epochs and --net-windows above 0");
                }
                if !net_margin.is_finite() {
                    bail!("--net-margin must be a number");
                }
                let python = net::default_python();
                let kind = match method.as_str() {
                    "crnn" => net::NetKind::Crnn,
                    _ => net::NetKind::Mn04,
                };
                let script = match net::trainer_missing(&python) {
                    Some(why) => Err(anyhow::anyhow!(why)),
                    None => net::default_script(kind),
                };
                match script {
                    Err(e) if method == "auto" => {
                        tracing::warn!(
                            "training heads only: the network cannot be trained here: {e:#}"
                        );
                        None
                    }
                    Err(e) => bail!("--method {method}: {e:#}"),
                    Ok(script) => Some(net::NetOptions {
                        kind,
                        python,
                        script,
                        epochs,
                        windows: net_windows,
                        train_from,
                        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
                        only: method != "auto",
                        margin: net_margin,
                        max_per_group: net_max_per_group.unwrap_or(usize::MAX),
                    }),
                }
            }
            _ => None,
        },
    };
    let summary = learn::train(model, &cfg, &opts)?;
    let _ = std::fs::remove_dir_all(&opts.work_dir);
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        for s in &summary {
            println!(
                "{:<12} {:>4} clips, {:>6} / {:>6} windows +/-, {} features, {} hidden units, L2 {}, on {:.6} off {:.6} in {} of {} hops{}: cross-validated recall {:.2} at {:.2} false alarms/h, latency {} -> {}",
                s.group, s.clips, s.positives, s.negatives, s.chosen.features, s.chosen.hidden, s.chosen.l2, s.chosen.on, s.off, s.chosen.onset_hops, s.chosen.onset_of,
                s.chosen.sure.map_or(String::new(), |v| format!(" or {v:.6} in one")),
                s.chosen.recall, s.chosen.fa_per_hour,
                s.chosen.latency_s.map_or("-".to_string(), |l| format!("{l:.2} s")),
                s.file.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
