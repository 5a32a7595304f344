//! A small deterministic mutation fuzzer for the integration tests: seeded
//! mutations of a seed corpus, each input checked in-process under `catch_unwind`,
//! on a couple of threads, with a watchdog for inputs that hang.
//!
//! Used by `tests/fuzz_decode.rs` and `tests/fuzz_config.rs`.
//!
//! Input `i` depends only on the base seed and `i` (never on thread scheduling), so
//! a failure is reproduced by its index. `HEARKEN_FUZZ_ITERS` sets the number of
//! inputs (longer local runs), `HEARKEN_FUZZ_SEED` the base seed. Failing inputs
//! are written to `$CARGO_TARGET_TMPDIR/fuzz-failures/`.
#![allow(dead_code)]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// `HEARKEN_FUZZ_ITERS`, else `default`.
pub fn iters(default: usize) -> usize {
    std::env::var("HEARKEN_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// `HEARKEN_FUZZ_SEED`, else `default`.
pub fn base_seed(default: u64) -> u64 {
    std::env::var("HEARKEN_FUZZ_SEED")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// The RNG of input `i`.
pub fn rng_for(seed: u64, i: usize) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// What a run did.
#[derive(Debug, Default)]
pub struct Report {
    /// Inputs checked.
    pub inputs: usize,
    /// Inputs the checker accepted (e.g. decoded), the rest were cleanly rejected.
    pub accepted: usize,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// The slowest inputs, slowest first: (index, time).
    pub slowest: Vec<(usize, Duration)>,
    /// (index, what went wrong) of failing inputs.
    pub failures: Vec<(usize, String)>,
}

impl Report {
    /// One line for the test log.
    pub fn line(&self, name: &str) -> String {
        format!(
            "{name}: {} inputs ({} accepted, {} rejected) in {:.1} s, slowest {}, {} failures",
            self.inputs,
            self.accepted,
            self.inputs - self.accepted,
            self.elapsed.as_secs_f64(),
            self.slowest
                .iter()
                .map(|(i, t)| format!("#{i} {:.0} ms", t.as_secs_f64() * 1e3))
                .collect::<Vec<_>>()
                .join(", "),
            self.failures.len()
        )
    }
}

/// How many of the slowest inputs a report lists.
const SLOWEST: usize = 3;

/// Seconds one input may take before the run is aborted as hung.
const HANG_S: u64 = 60;

/// Runs `check` on inputs `0..iters` made by `make(i)` on `threads` threads. `check`
/// returns `Ok(true)` for an accepted input, `Ok(false)` for a cleanly rejected one
/// and `Err` for a bug; a panic is a bug too. The `usize` passed to `check` is the
/// worker's number (for per-thread scratch files).
pub fn run<M, C>(name: &str, iters: usize, threads: usize, make: M, check: C) -> Report
where
    M: Fn(usize) -> Vec<u8> + Sync,
    C: Fn(usize, &[u8]) -> Result<bool, String> + Sync,
{
    // A caught panic prints its message, not a backtrace: resolving one would load
    // the test binary's debug info, hundreds of MB charged to the input at hand.
    std::panic::set_hook(Box::new(|info| eprintln!("{info}")));
    let next = AtomicUsize::new(0);
    let accepted = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    let slowest = Mutex::new(Vec::<(usize, Duration)>::new());
    let done = AtomicBool::new(false);
    let t0 = Instant::now();
    // Per worker: the input in progress (+1, 0 = idle) and when it started (ms).
    let current: Vec<(AtomicUsize, AtomicU64)> = (0..threads)
        .map(|_| (AtomicUsize::new(0), AtomicU64::new(0)))
        .collect();
    let fail_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failures");
    let save = |i: usize, input: &[u8]| {
        let _ = std::fs::create_dir_all(&fail_dir);
        let p = fail_dir.join(format!("{name}-{i}.bin"));
        let _ = std::fs::write(&p, input);
        p
    };
    std::thread::scope(|s| {
        for w in 0..threads {
            let (next, accepted, failures, slowest, current) =
                (&next, &accepted, &failures, &slowest, &current);
            let (make, check, save) = (&make, &check, &save);
            s.spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= iters {
                    current[w].0.store(0, Ordering::Relaxed);
                    break;
                }
                let input = make(i);
                current[w]
                    .1
                    .store(t0.elapsed().as_millis() as u64, Ordering::Relaxed);
                current[w].0.store(i + 1, Ordering::Relaxed);
                let start = Instant::now();
                let r = catch_unwind(AssertUnwindSafe(|| check(w, &input)));
                let took = start.elapsed();
                current[w].0.store(0, Ordering::Relaxed);
                {
                    let mut sl = slowest.lock().unwrap();
                    if sl.len() < SLOWEST || took > sl[SLOWEST - 1].1 {
                        sl.push((i, took));
                        sl.sort_by_key(|s| std::cmp::Reverse(s.1));
                        sl.truncate(SLOWEST);
                    }
                }
                let what = match r {
                    Ok(Ok(true)) => {
                        accepted.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    Ok(Ok(false)) => continue,
                    Ok(Err(e)) => e,
                    Err(p) => {
                        let msg = p
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_default();
                        format!("panicked: {msg}")
                    }
                };
                let p = save(i, &input);
                failures
                    .lock()
                    .unwrap()
                    .push((i, format!("{what} (input saved to {})", p.display())));
            });
        }
        // Watchdog: an input that hangs must fail the test, not stall CI.
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                let now = t0.elapsed().as_millis() as u64;
                let mut idle = true;
                for (cur, since) in &current {
                    let c = cur.load(Ordering::Relaxed);
                    if c == 0 {
                        continue;
                    }
                    idle = false;
                    if now.saturating_sub(since.load(Ordering::Relaxed)) > HANG_S * 1000 {
                        let i = c - 1;
                        let p = save(i, &make(i));
                        eprintln!(
                            "{name}: input #{i} has run for over {HANG_S} s (saved to {}); aborting",
                            p.display()
                        );
                        std::process::exit(101);
                    }
                }
                if idle && next.load(Ordering::Relaxed) >= iters {
                    break;
                }
            }
        });
    });
    done.store(true, Ordering::Relaxed);
    let mut failures = failures.into_inner().unwrap();
    failures.sort();
    Report {
        inputs: iters,
        accepted: accepted.into_inner(),
        elapsed: t0.elapsed(),
        slowest: slowest.into_inner().unwrap(),
        failures,
    }
}

/// Asserts the report has no failures, listing the first ones.
pub fn assert_clean(name: &str, r: &Report) {
    eprintln!("{}", r.line(name));
    if !r.failures.is_empty() {
        let list: Vec<String> = r
            .failures
            .iter()
            .take(10)
            .map(|(i, m)| format!("  #{i}: {m}"))
            .collect();
        panic!(
            "{}\n{}\n(rerun: the inputs are a function of their index and HEARKEN_FUZZ_SEED)",
            r.line(name),
            list.join("\n")
        );
    }
}

const INTERESTING_U8: [u8; 8] = [0, 1, 2, 0x7f, 0x80, 0xfe, 0xff, 0x10];
const INTERESTING_U16: [u16; 10] = [0, 1, 2, 3, 8, 24, 32, 64, 0xfffe, 0xffff];
const INTERESTING_U32: [u32; 12] = [
    0,
    1,
    2,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_fff0,
    0xffff_ffff,
    0x0100_0000,
    44100,
    384_001,
    3999,
    0x0001_0000,
];

/// Byte-level mutations of binary files: bit flips, byte sets, truncations,
/// chunk-size lies (RIFF chunk ids and FLAC metadata headers are found and their
/// size fields overwritten), 16/32-bit field sets, non-finite floats, splices from
/// other corpus entries, insertions, deletions and duplications. One to four per
/// input.
pub fn mutate_bytes(rng: &mut ChaCha8Rng, seed: &[u8], corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut b = seed.to_vec();
    let n = rng.gen_range(1..=4);
    for _ in 0..n {
        let len = b.len();
        let pos =
            |rng: &mut ChaCha8Rng, len: usize| if len == 0 { 0 } else { rng.gen_range(0..len) };
        match rng.gen_range(0..12) {
            0 if len > 0 => {
                let p = pos(rng, len);
                b[p] ^= 1 << rng.gen_range(0..8);
            }
            1 if len > 0 => {
                let p = pos(rng, len);
                b[p] = if rng.gen_bool(0.7) {
                    INTERESTING_U8[rng.gen_range(0..INTERESTING_U8.len())]
                } else {
                    rng.gen()
                };
            }
            2 => {
                let keep = rng.gen_range(0..=len);
                b.truncate(keep);
            }
            3 | 4 => {
                // A chunk size that lies: at a chunk id if there is one, else anywhere.
                let sites = size_fields(&b);
                let v = if rng.gen_bool(0.8) {
                    INTERESTING_U32[rng.gen_range(0..INTERESTING_U32.len())]
                } else {
                    (len as u32)
                        .wrapping_add(rng.gen_range(0..16))
                        .wrapping_sub(8)
                };
                let (p, be24) = if !sites.is_empty() && rng.gen_bool(0.8) {
                    sites[rng.gen_range(0..sites.len())]
                } else {
                    (pos(rng, len), false)
                };
                if be24 {
                    let v = v.to_be_bytes();
                    write_at(&mut b, p, &v[1..]);
                } else {
                    write_at(&mut b, p, &v.to_le_bytes());
                }
            }
            5 => {
                let v = INTERESTING_U16[rng.gen_range(0..INTERESTING_U16.len())];
                // Format fields sit in the first ~64 bytes of a WAV.
                let p = rng.gen_range(0..len.clamp(1, 64));
                write_at(&mut b, p, &v.to_le_bytes());
            }
            6 => {
                let f: f32 = [
                    f32::NAN,
                    f32::INFINITY,
                    f32::NEG_INFINITY,
                    1e38,
                    -3e38,
                    1e-45,
                ][rng.gen_range(0..6)];
                let p = pos(rng, len);
                if rng.gen_bool(0.7) {
                    write_at(&mut b, p, &f.to_le_bytes());
                } else {
                    write_at(&mut b, p, &(f as f64 * 1e200).to_le_bytes());
                }
            }
            7 if !corpus.is_empty() => {
                // Splice: a piece of another file over or into this one.
                let other = &corpus[rng.gen_range(0..corpus.len())];
                if !other.is_empty() {
                    let s = rng.gen_range(0..other.len());
                    let e = rng.gen_range(s..=other.len().min(s + 512));
                    let p = pos(rng, len + 1).min(len);
                    if rng.gen_bool(0.5) {
                        b.splice(p..p, other[s..e].iter().copied());
                    } else {
                        write_at(&mut b, p, &other[s..e]);
                    }
                }
            }
            8 => {
                let p = pos(rng, len + 1).min(len);
                let k = rng.gen_range(1..=64);
                let ins: Vec<u8> = (0..k).map(|_| rng.gen()).collect();
                b.splice(p..p, ins);
            }
            9 if len > 0 => {
                let s = pos(rng, len);
                let e = rng.gen_range(s..=len.min(s + 256));
                b.drain(s..e);
            }
            10 if len > 0 => {
                let s = pos(rng, len);
                let e = rng.gen_range(s..=len.min(s + 256));
                let piece = b[s..e].to_vec();
                let p = pos(rng, len + 1).min(len);
                b.splice(p..p, piece);
            }
            _ if len > 0 => {
                // A run of one byte value (zeros, 0xff) over a range.
                let s = pos(rng, len);
                let e = rng.gen_range(s..=len.min(s + 128));
                let v = INTERESTING_U8[rng.gen_range(0..INTERESTING_U8.len())];
                b[s..e].iter_mut().for_each(|x| *x = v);
            }
            _ => {}
        }
    }
    b
}

/// Offsets of size fields: after each RIFF-style four-letter chunk id (LE u32), and
/// the 24-bit big-endian lengths of FLAC metadata block headers.
fn size_fields(b: &[u8]) -> Vec<(usize, bool)> {
    let mut out = Vec::new();
    for id in [
        &b"RIFF"[..],
        b"fmt ",
        b"data",
        b"LIST",
        b"fact",
        b"INFO",
        b"INAM",
        b"junk",
    ] {
        let mut i = 0;
        while i + 8 <= b.len() {
            if &b[i..i + 4] == id {
                out.push((i + 4, false));
            }
            i += 1;
        }
    }
    if b.starts_with(b"fLaC") {
        // Walk the metadata block headers while they make sense.
        let mut p = 4;
        while p + 4 <= b.len() {
            out.push((p + 1, true));
            let last = b[p] & 0x80 != 0;
            let l = u32::from_be_bytes([0, b[p + 1], b[p + 2], b[p + 3]]) as usize;
            p += 4 + l;
            if last {
                break;
            }
        }
    }
    out
}

fn write_at(b: &mut Vec<u8>, p: usize, v: &[u8]) {
    if b.len() < p + v.len() {
        b.resize(p + v.len(), 0);
    }
    b[p..p + v.len()].copy_from_slice(v);
}
