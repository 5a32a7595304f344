//! Real capture through cpal on a machine without a sound card: a private PulseAudio
//! daemon with a null sink (tools/pulse-null-sink.sh), ALSA's `pulse` device capturing
//! its monitor, and `paplay` playing a real recording into the sink.
//!
//! Skipped (with a message) only when the PulseAudio packages cannot be installed.

use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hearken::audio::source::{Source, SourceOptions, SourceSpec};
use hearken::audio::{rms_dbfs, FileDecoder};
use ringbuf::traits::Consumer;

mod common;
use common::pulse::start_pulse;

fn energy_seconds(samples: &[f32], rate: u32) -> f64 {
    samples
        .iter()
        .map(|&x| (x as f64) * (x as f64))
        .sum::<f64>()
        / rate as f64
}

#[test]
fn captures_what_paplay_plays_into_the_null_sink() {
    let Some(pulse) = start_pulse() else {
        return;
    };
    let clip = hearken::shared_dir().join("audio/gunshots.wav");
    let (clip_rate, reference) = {
        let mut dec = FileDecoder::open(&clip).unwrap();
        let mut all = Vec::new();
        while dec.next_chunk(&mut all).unwrap() {}
        (dec.info().sample_rate, all)
    };
    let clip_s = reference.len() as f64 / clip_rate as f64;

    let opts = SourceOptions {
        ring_seconds: 2.0,
        realtime: true,
    };
    let (source, ring) = Source::start(&SourceSpec::Device("pulse".into()), &opts)
        .expect("cannot capture from ALSA device 'pulse'");
    eprintln!("capturing: {}", source.description);
    let rate = source.sample_rate;
    let mut ring = ring;
    let mut captured: Vec<f32> = Vec::new();
    let mut buf = vec![0.0f32; 4096];
    let mut pull = |captured: &mut Vec<f32>| loop {
        let n = ring.pop_slice(&mut buf);
        captured.extend_from_slice(&buf[..n]);
        if n == 0 {
            break;
        }
    };

    // The PulseAudio ALSA plugin takes a moment (up to ~2 s) before the first period.
    let t_start = Instant::now();
    while source.stats.samples.load(Ordering::Relaxed) == 0 {
        assert!(
            t_start.elapsed() < Duration::from_secs(10),
            "no audio callback within 10 s"
        );
        std::thread::sleep(Duration::from_millis(5));
        pull(&mut captured);
    }
    let started_after = t_start.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(300));
    pull(&mut captured);
    let silence_len = captured.len();

    // Measure the delivery rate from here to the end.
    let t0 = Instant::now();
    let n0 = source.stats.samples.load(Ordering::Relaxed);
    let mut player = Command::new("paplay")
        .arg("--device=hearken_null")
        .arg(&clip)
        .stdin(Stdio::null())
        .spawn()
        .expect("cannot run paplay");
    let play_limit = Duration::from_secs_f64(clip_s + 8.0);
    let mut played_at: Option<Instant> = None;
    loop {
        std::thread::sleep(Duration::from_millis(5));
        pull(&mut captured);
        match played_at {
            None => match player.try_wait().expect("paplay wait") {
                Some(status) => {
                    assert!(status.success(), "paplay failed: {status}");
                    played_at = Some(Instant::now());
                }
                None if t0.elapsed() > play_limit => {
                    let _ = player.kill();
                    let _ = player.wait();
                    panic!("paplay did not finish within {play_limit:?}");
                }
                None => {}
            },
            Some(at) => {
                // Done once the capture's tail is silent again (the clip has drained
                // through the sink and the plugin), or after a generous limit.
                let tail = &captured[captured.len().saturating_sub(rate as usize / 4)..];
                let quiet = at.elapsed() > Duration::from_millis(300) && rms_dbfs(tail) < -80.0;
                if quiet || at.elapsed() > Duration::from_secs(5) {
                    break;
                }
            }
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let n1 = source.stats.samples.load(Ordering::Relaxed);
    pull(&mut captured);
    let overruns = source.stats.overruns.load(Ordering::Relaxed);
    let error = source.error();
    let t_stop = Instant::now();
    source.stop();
    assert!(t_stop.elapsed() < Duration::from_secs(2), "stop() hung");
    drop(pulse);
    eprintln!("first callback after {started_after:.2} s");

    // Sample count: about rate × duration.
    let delivered = (n1 - n0) as f64;
    let expected = rate as f64 * elapsed;
    eprintln!(
        "{rate} Hz: {delivered} samples in {elapsed:.2} s (expected ~{expected:.0}), {overruns} overruns"
    );
    assert!(
        (delivered / expected - 1.0).abs() < 0.1,
        "delivered {delivered} samples in {elapsed:.2} s at {rate} Hz"
    );
    assert_eq!(overruns, 0, "the drained ring overflowed");
    assert_eq!(error, None);
    assert!(
        captured.len() as f64 >= rate as f64 * clip_s,
        "only {} samples",
        captured.len()
    );

    // Real audio arrived: loud, with the clip's energy (same level, any alignment).
    let silence = &captured[..silence_len];
    let level = rms_dbfs(&captured);
    let ratio_db =
        10.0 * (energy_seconds(&captured, rate) / energy_seconds(&reference, clip_rate)).log10();
    let peak = captured.iter().fold(0.0f32, |m, &x| m.max(x.abs()));
    eprintln!(
        "silence before: {:.1} dB; capture: {level:.1} dBFS, peak {peak:.3}, energy vs clip {ratio_db:+.2} dB",
        rms_dbfs(silence)
    );
    assert!(
        rms_dbfs(silence) < -80.0,
        "the null sink was not silent before playback"
    );
    assert!(
        level > -45.0,
        "captured level {level:.1} dBFS: no real audio"
    );
    assert!(
        ratio_db.abs() < 3.0,
        "captured energy differs from the clip by {ratio_db:+.2} dB"
    );
}
