//! Mutation fuzzing of the configuration loader and validator, as `hearken
//! check-config`, `hearken run` and a SIGHUP reload use them: `Config::load_all` on
//! a file (any bytes) and `Config::from_str_all` on text, then `check_labels`.
//!
//! Seeds: `config/hearken.example.toml` and a few small configs. Mutations: line
//! deletions, duplications and swaps, values swapped between lines or replaced by
//! huge numbers, wrong types and unicode, renamed keys, byte flips, NUL bytes,
//! truncations. Every input must load or give errors that each name a line or a key
//! and the file, on one line; never a panic. 10,000 inputs by default;
//! `HEARKEN_FUZZ_ITERS=200000` for a longer run.

mod fuzz;

use std::path::{Path, PathBuf};

use hearken::config::{Config, ConfigError};
use hearken::model::Labels;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

const SMALL: [&str; 5] = [
    "[node]\nid = \"kitchen\"\nroom = \"Kitchen\"\n\n[detection.groups.dog_bark]\nenabled = false\n\n[detection.groups.glass]\non = 0.4\n",
    "[audio]\nsource = \"stdin:48000:2\"\nring_seconds = 2.5\ngate_dbfs = -60\n\n[model]\nname = \"yamnet\"\nwindow_s = 2.0\nhop_s = 0.5\n",
    "[mqtt]\nhost = \"broker.local\"\nport = 8883\ntls = true\nca_file = \"/etc/ssl/ca.pem\"\nclient_cert_file = \"c.pem\"\nclient_key_file = \"k.pem\"\nqos = 2\nkeepalive_s = 60\n",
    "[detection]\nstatus_interval_s = 5\n\n[detection.groups.doorbell]\nlabels = [\"Doorbell\", \"Ding-dong\"]\non = 0.5\noff = 0.3\nonset_hops = 2\nonset_of = 3\npooling = \"mean\"\ncooldown_s = 10\nmax_event_s = 60\nmin_duration_s = 1.5\nsafety = false\n",
    "[mqtt]\nembedded_broker = true\nembedded_listen = \"0.0.0.0:1883\"\nbase_topic = \"home/hearken\"\ndiscovery_prefix = \"ha\"\noutbox_max_mib = 64\n\n[node]\nid = \"hall-1\"\n",
];

/// Values that break parsers and validators.
const VALUES: [&str; 40] = [
    "0",
    "-1",
    "1e999",
    "-1e400",
    "nan",
    "-nan",
    "inf",
    "-inf",
    "+inf",
    "99999999999999999999",
    "9223372036854775807",
    "-9223372036854775808",
    "18446744073709551616",
    "4294967296",
    "65536",
    "0x7fffffffffffffff",
    "0o777",
    "1_000_000",
    "1e-320",
    "-0.0",
    "\"\"",
    "\"str\"",
    "true",
    "false",
    "[]",
    "[1, 2]",
    "[\"a\", 1]",
    "{}",
    "{ a = 1 }",
    "1979-05-27T07:32:00Z",
    "07:32:00",
    "'''multi\nline'''",
    "\"héllo wörld\"",
    "\"\u{202e}evil\"",
    "\"😀🔥\"",
    "\"\\u0000\"",
    "\"a\\nb\"",
    "\"device:\"",
    "\"stdin:0:0\"",
    "\"file:\"",
];

/// Odd characters to insert.
const CHARS: [char; 12] = [
    '\0',
    '\u{7f}',
    '\u{feff}',
    '\u{202e}',
    'é',
    '😀',
    '\t',
    '\r',
    '"',
    '[',
    '=',
    '\u{10ffff}',
];

fn seeds() -> Vec<String> {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/hearken.example.toml");
    let mut v = vec![std::fs::read_to_string(&example).unwrap()];
    v.extend(SMALL.iter().map(|s| s.to_string()));
    v
}

fn pick<'a, T>(rng: &mut ChaCha8Rng, v: &'a [T]) -> &'a T {
    &v[rng.gen_range(0..v.len())]
}

/// One to four text and byte mutations of `seed`.
fn mutate(rng: &mut ChaCha8Rng, seed: &str, corpus: &[String]) -> Vec<u8> {
    let mut lines: Vec<String> = seed.lines().map(String::from).collect();
    let n = rng.gen_range(1..=4);
    let mut bytes_ops = Vec::new();
    for _ in 0..n {
        let len = lines.len();
        match rng.gen_range(0..12) {
            0 if len > 0 => {
                lines.remove(rng.gen_range(0..len));
            }
            1 if len > 0 => {
                let i = rng.gen_range(0..len);
                let l = lines[i].clone();
                lines.insert(rng.gen_range(0..=len), l);
            }
            2 if len > 1 => {
                let (a, b) = (rng.gen_range(0..len), rng.gen_range(0..len));
                lines.swap(a, b);
            }
            3 | 4 if len > 0 => {
                // Replace the value of a `key = value` line.
                let with_eq: Vec<usize> = (0..len).filter(|&i| lines[i].contains('=')).collect();
                if let Some(&i) = with_eq.get(rng.gen_range(0..with_eq.len().max(1))) {
                    let key = lines[i].split('=').next().unwrap().to_string();
                    let value = if rng.gen_bool(0.3) {
                        // A value from another line (wrong type for this key, often).
                        let j = with_eq[rng.gen_range(0..with_eq.len())];
                        lines[j]
                            .split_once('=')
                            .map(|x| x.1)
                            .unwrap_or("")
                            .to_string()
                    } else {
                        pick(rng, &VALUES).to_string()
                    };
                    lines[i] = format!("{key}={value}");
                }
            }
            5 if len > 0 => {
                // Rename a key: a typo, another case, a quoted or dotted key.
                let i = rng.gen_range(0..len);
                if let Some((k, v)) = lines[i].clone().split_once('=') {
                    let k = k.trim();
                    let nk = match rng.gen_range(0..4) {
                        0 => format!("{k}x"),
                        1 => k.to_uppercase(),
                        2 => format!("\"{k} \""),
                        _ => format!("{k}.{k}"),
                    };
                    lines[i] = format!("{nk} ={v}");
                }
            }
            6 => {
                // A table header, possibly odd.
                let h = pick(
                    rng,
                    &[
                        "[detection.groups.x]",
                        "[detection.groups.\"Bad Name\"]",
                        "[[detection.groups]]",
                        "[audio]",
                        "[mqtt.extra]",
                        "[node]",
                        "[detection.groups.glass.labels]",
                        "[]",
                        "[a.b.c.d.e.f]",
                    ],
                )
                .to_string();
                lines.insert(rng.gen_range(0..=len), h);
            }
            7 if !corpus.is_empty() => {
                // Lines from another seed.
                let other: Vec<&str> = pick(rng, corpus).lines().collect();
                if !other.is_empty() {
                    let s = rng.gen_range(0..other.len());
                    let e = rng.gen_range(s..=other.len().min(s + 8));
                    let at = rng.gen_range(0..=len);
                    for (k, l) in other[s..e].iter().enumerate() {
                        lines.insert(at + k, l.to_string());
                    }
                }
            }
            8 if len > 0 => {
                let i = rng.gen_range(0..len);
                let c = *pick(rng, &CHARS);
                let l = &mut lines[i];
                let mut at = rng.gen_range(0..=l.len());
                while !l.is_char_boundary(at) {
                    at -= 1;
                }
                l.insert(at, c);
            }
            9 => bytes_ops.push(rng.gen_range(0..3)),
            10 if len > 0 => {
                // A very long value or key.
                let i = rng.gen_range(0..len);
                let long = "9".repeat(rng.gen_range(20..400));
                lines[i] = format!("{}= {long}", lines[i].split('=').next().unwrap());
            }
            _ => {}
        }
    }
    let mut b = lines
        .join(if rng.gen_bool(0.1) { "\r\n" } else { "\n" })
        .into_bytes();
    for op in bytes_ops {
        let len = b.len();
        match op {
            0 if len > 0 => b[rng.gen_range(0..len)] ^= 1 << rng.gen_range(0..8),
            1 => b.insert(
                rng.gen_range(0..=len),
                if rng.gen_bool(0.5) { 0 } else { 0xff },
            ),
            _ => b.truncate(rng.gen_range(0..=len)),
        }
    }
    b
}

/// Every error names the file and a line or a key, on one line.
fn check_errors(origin: &str, errors: &[ConfigError]) -> Result<(), String> {
    if errors.is_empty() {
        return Err("an error list that is empty".into());
    }
    for e in errors {
        let shown = e.to_string();
        if e.line.is_none() && e.key.is_none() {
            return Err(format!("error names neither a line nor a key: {shown}"));
        }
        if e.message.trim().is_empty() || shown.contains('\n') || !shown.starts_with(origin) {
            return Err(format!("error is not one line naming the file: {shown:?}"));
        }
    }
    Ok(())
}

fn labels() -> Labels {
    Labels::from_names(&[
        "Speech",
        "Glass",
        "Shatter",
        "Doorbell",
        "Dog",
        "Bark",
        "Gunshot, gunfire",
    ])
}

/// Loads `bytes` from a file and, when they are text, from a string: `Ok(true)`
/// when the configuration is valid.
fn check_input(dir: &Path, worker: usize, bytes: &[u8], labels: &Labels) -> Result<bool, String> {
    let path = dir.join(format!("config-{worker}.toml"));
    std::fs::write(&path, bytes).map_err(|e| format!("writing the input: {e}"))?;
    let origin = path.display().to_string();
    let from_file = Config::load_all(&path);
    if let Err(errors) = &from_file {
        check_errors(&origin, errors)?;
    }
    if let Ok(text) = std::str::from_utf8(bytes) {
        let from_text = Config::from_str_all(text, &origin);
        match (&from_file, &from_text) {
            (Ok(_), Ok(_)) => {}
            (Err(a), Err(b)) if a == b => {}
            _ => return Err("the file and the same text as a string load differently".into()),
        }
        if let Ok(cfg) = &from_text {
            if let Err(e) = cfg.check_labels(labels) {
                check_errors(&origin, &[e.in_file(&origin, text)])?;
            }
        }
    }
    Ok(from_file.is_ok())
}

fn scratch_dir(tag: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("fuzz-config-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn the_seed_configs_are_valid() {
    let dir = scratch_dir("seeds");
    let labels = labels();
    for (i, s) in seeds().iter().enumerate() {
        assert_eq!(
            check_input(&dir, 0, s.as_bytes(), &labels),
            Ok(true),
            "seed {i}"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn mutated_configs_never_panic_and_errors_name_a_line_or_key() {
    let dir = scratch_dir("mutants");
    let corpus = seeds();
    let labels = labels();
    let seed = fuzz::base_seed(0x6865_6172_6b65_6e02);
    let iters = fuzz::iters(10_000);
    let make = |i: usize| {
        let mut rng = fuzz::rng_for(seed, i);
        // The example is long and slow to parse; the small seeds get most inputs.
        let s = if rng.gen_bool(0.3) {
            &corpus[0]
        } else {
            &corpus[rng.gen_range(1..corpus.len())]
        };
        mutate(&mut rng, s, &corpus)
    };
    let report = fuzz::run("config", iters, 2, make, |w, b| {
        check_input(&dir, w, b, &labels)
    });
    std::fs::remove_dir_all(&dir).ok();
    fuzz::assert_clean("config", &report);
    // Mutation must leave both kinds: valid configs and each kind of error.
    assert!(
        report.accepted * 20 >= report.inputs,
        "{}",
        report.line("config")
    );
    assert!(
        report.accepted * 10 <= report.inputs * 9,
        "{}",
        report.line("config")
    );
}
