//! Mutation fuzzing of the audio decoders, as `hearken classify` and the file source
//! use them: `FileDecoder::open` on a file, `next_chunk` to the end, and the
//! resampler to the model rate. Seeds: the small valid and damaged WAV/FLAC files
//! of `tests/fixtures/damaged/` (made by `tools/make-damaged-fixtures.py`).
//!
//! Every input must give either audio — every sample finite and within
//! ±`SAMPLE_LIMIT`, before and after resampling — or a one-line error naming the
//! file; never a panic, a hang or a huge allocation (a header that claims 4 GB must
//! not allocate it). 10,000 inputs by default; `HEARKEN_FUZZ_ITERS=200000` for a
//! longer run.

mod fuzz;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use hearken::audio::decode::READER_PANIC;
use hearken::audio::{FileDecoder, StreamResampler, SAMPLE_LIMIT};

/// Counts, per thread, the bytes allocated and the largest single request, so one
/// input's allocations can be bounded while other tests run on other threads.
struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note_alloc(size: usize) {
    let _ = LIVE.try_with(|l| {
        let v = l.get() + size as isize;
        l.set(v);
        let _ = PEAK.try_with(|p| p.set(p.get().max(v)));
    });
    let _ = LARGEST.try_with(|m| m.set(m.get().max(size)));
}

fn note_free(size: usize) {
    let _ = LIVE.try_with(|l| l.set(l.get() - size as isize));
}

// SAFETY: every call is forwarded to the system allocator unchanged; the counters
// are plain thread-locals without destructors, so they never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_alloc(layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_alloc(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note_free(layout.size());
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_free(layout.size());
        note_alloc(new_size);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Resets this thread's counters; returns the baseline of live bytes.
fn reset_alloc() -> isize {
    let live = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(live));
    LARGEST.with(|m| m.set(0));
    live
}

/// The most any one input made the decoder hold (peak bytes) and allocate at once.
static MAX_PEAK: AtomicUsize = AtomicUsize::new(0);
static MAX_BLOCK: AtomicUsize = AtomicUsize::new(0);

/// Most memory one small input may make the decoder and resampler hold: the
/// largest legitimate needs are a 65535-frame FLAC block of 8 channels (2 MB) and a
/// resampler for coprime rates (a few MB).
const ALLOC_LIMIT: usize = 64 << 20;

/// Mono output frames one input may produce before it counts as a runaway (a tiny
/// FLAC frame can legitimately describe 65535 samples).
const FRAME_LIMIT: u64 = 50_000_000;

const MODEL_RATE: u32 = 32_000;

fn fixtures() -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/damaged");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect()
}

/// What decoding one file gave.
#[derive(Debug)]
struct Decoded {
    frames: u64,
    replaced: u64,
    resampled: usize,
}

fn check_error(path: &Path, e: &str) -> Result<(), String> {
    if e.contains(READER_PANIC) {
        // Caught, so harmless to the process; but each such case should be found by
        // `check_wav_header` with a proper message.
        return Err(format!("the WAV/FLAC reader panicked (caught): {e}"));
    }
    let shown = path.display().to_string();
    if e.is_empty() || e.contains('\n') || !e.contains(&shown) {
        return Err(format!("error is not one line naming the file: {e:?}"));
    }
    Ok(())
}

/// Decoded samples are within ±`SAMPLE_LIMIT`; resampling may ring past it (a
/// band-limited interpolation of extreme samples overshoots), but boundedly.
fn check_samples(what: &str, x: &[f32], limit: f32) -> Result<(), String> {
    match x.iter().position(|v| !(v.is_finite() && v.abs() <= limit)) {
        Some(i) => Err(format!("{what}: sample {i} is {}", x[i])),
        None => Ok(()),
    }
}

/// Decodes `path` to the end as classify does: `Ok(None)` when it is cleanly
/// rejected.
fn decode(path: &Path) -> Result<Option<Decoded>, String> {
    let mut dec = match FileDecoder::open(path) {
        Ok(d) => d,
        Err(e) => return check_error(path, &e.to_string()).map(|_| None),
    };
    let rate = dec.info().sample_rate;
    let mut rs = StreamResampler::new(rate, MODEL_RATE)
        .map_err(|e| format!("no resampler for a rate the decoder accepted: {e}"))?;
    let (mut mono, mut out) = (Vec::new(), Vec::new());
    let mut resampled = 0;
    loop {
        mono.clear();
        match dec.next_chunk(&mut mono) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                check_error(path, &e.to_string())?;
                break;
            }
        }
        check_samples("decoded", &mono, SAMPLE_LIMIT)?;
        out.clear();
        rs.push(&mono, &mut out);
        check_samples("resampled", &out, 4.0 * SAMPLE_LIMIT)?;
        resampled += out.len();
        if dec.frames_read() > FRAME_LIMIT {
            return Err(format!("over {FRAME_LIMIT} frames from a small file"));
        }
    }
    out.clear();
    rs.finish(&mut out);
    check_samples("resampled tail", &out, 4.0 * SAMPLE_LIMIT)?;
    resampled += out.len();
    if let Some(t) = dec.truncation() {
        check_error(path, t)?;
    }
    Ok(Some(Decoded {
        frames: dec.frames_read(),
        replaced: dec.replaced_samples(),
        resampled,
    }))
}

/// Decodes `bytes` written to this worker's scratch file, bounding its allocations.
fn check_input(dir: &Path, worker: usize, bytes: &[u8]) -> Result<bool, String> {
    let path = dir.join(format!("input-{worker}.bin"));
    std::fs::write(&path, bytes).map_err(|e| format!("writing the input: {e}"))?;
    let base = reset_alloc();
    let r = decode(&path);
    let peak = (PEAK.with(Cell::get) - base).max(0) as usize;
    let largest = LARGEST.with(Cell::get);
    MAX_PEAK.fetch_max(peak, Ordering::Relaxed);
    MAX_BLOCK.fetch_max(largest, Ordering::Relaxed);
    if largest > ALLOC_LIMIT || peak > ALLOC_LIMIT {
        return Err(format!(
            "allocated too much for a {}-byte file: largest block {largest} B, peak {peak} B",
            bytes.len()
        ));
    }
    Ok(r?.is_some())
}

fn scratch_dir(tag: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("fuzz-decode-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn the_seed_corpus_decodes_or_fails_cleanly() {
    let dir = scratch_dir("seeds");
    let seeds = fixtures();
    assert!(seeds.len() >= 40, "{} seeds", seeds.len());
    let total: usize = seeds.iter().map(|(_, b)| b.len()).sum();
    assert!(total < 200_000, "the fixtures total {total} bytes");
    for (name, bytes) in &seeds {
        assert!(bytes.len() <= 4096, "{name}: {} bytes", bytes.len());
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        let r = decode(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        if name.starts_with("valid-") {
            let d = r.unwrap_or_else(|| panic!("{name} is valid but was rejected"));
            assert!(d.frames >= 40, "{name}: {d:?}");
            assert_eq!(d.replaced, 0, "{name}");
            assert!(d.resampled > 0, "{name}");
        }
    }
    // The NaN seeds: decoded, the damaged samples replaced and counted.
    let count = |name: &str| {
        decode(&dir.join(name))
            .unwrap()
            .unwrap_or_else(|| panic!("{name} rejected"))
            .replaced
    };
    assert_eq!(count("damaged-f32-nan-inf-32k.wav"), 4);
    assert_eq!(count("damaged-f32-nan-inf-48k-stereo.wav"), 8);
    assert_eq!(count("damaged-f32-all-nan.wav"), 100);
    assert_eq!(count("damaged-f64-huge.wav"), 60);
    // Found by fuzzing: the WAV reader's header arithmetic overflowed on these (a
    // panic in debug builds); now a clean error naming the file.
    for name in [
        "damaged-65535-channels.wav",
        "damaged-20000-channels-s32.wav",
        "damaged-extensible-40ch.wav",
        "damaged-extensible-mask-bit31.wav",
        "damaged-junk-then-riff-20000ch.wav",
    ] {
        let r = decode(&dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(r.is_none(), "{name}");
    }
    // Huge declared sizes are not allocated.
    for name in [
        "damaged-data-size-4g.wav",
        "damaged-list-size-4g.wav",
        "damaged-unknown-chunk-huge.wav",
        "damaged-fmt-size-huge.wav",
        "damaged-flac-huge-streaminfo.flac",
        "damaged-flac-huge-metadata-length.flac",
    ] {
        let bytes = &seeds.iter().find(|(n, _)| n == name).unwrap().1;
        check_input(&dir, 0, bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn mutated_audio_files_never_panic_hang_or_allocate_absurdly() {
    let dir = scratch_dir("mutants");
    let seeds: Vec<Vec<u8>> = fixtures().into_iter().map(|(_, b)| b).collect();
    let seed = fuzz::base_seed(0x6865_6172_6b65_6e01);
    let iters = fuzz::iters(10_000);
    let make = |i: usize| {
        if i < seeds.len() {
            return seeds[i].clone();
        }
        let mut rng = fuzz::rng_for(seed, i);
        let s = &seeds[rand::Rng::gen_range(&mut rng, 0..seeds.len())];
        fuzz::mutate_bytes(&mut rng, s, &seeds)
    };
    let report = fuzz::run("decode", iters, 2, make, |w, b| check_input(&dir, w, b));
    std::fs::remove_dir_all(&dir).ok();
    eprintln!(
        "decode: the most one input held: {:.1} MB peak, {:.1} MB in one block (limit {} MB)",
        MAX_PEAK.load(Ordering::Relaxed) as f64 / 1e6,
        MAX_BLOCK.load(Ordering::Relaxed) as f64 / 1e6,
        ALLOC_LIMIT >> 20
    );
    fuzz::assert_clean("decode", &report);
    // Mutation must keep a good share decodable, or it tests only the probe.
    assert!(
        report.accepted * 5 >= report.inputs,
        "{}",
        report.line("decode")
    );
}

#[test]
fn the_allocation_counter_sees_what_this_thread_allocates() {
    // The bound above is only worth something if the counter sees a big block.
    let base = reset_alloc();
    let v = vec![1u8; ALLOC_LIMIT + 1];
    assert!(LARGEST.with(Cell::get) > ALLOC_LIMIT);
    assert!((PEAK.with(Cell::get) - base) as usize > ALLOC_LIMIT);
    drop(v);
    assert!(LIVE.with(Cell::get) - base < 1 << 10);
}
