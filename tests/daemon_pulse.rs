//! The whole daemon listening to a "microphone": cpal capture from the ALSA `pulse`
//! device of a private PulseAudio daemon whose null sink `paplay` plays a real
//! gunshot recording into. The event must arrive, in real time, and again after
//! the sound server vanished and came back (an unplugged, replugged microphone).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime};

use common::pulse::{start_pulse, wait_with_timeout};
use serde_json::Value;

/// hearken on the ALSA `pulse` device, with its stderr lines so far and to come.
struct Listening {
    child: Child,
    rx: Receiver<String>,
    log: Vec<String>,
}

impl Listening {
    /// Starts hearken and waits until it listens.
    fn start() -> Listening {
        Listening::start_with(&["--source", "device:pulse"])
    }

    /// Starts hearken with these source arguments and waits until it listens.
    fn start_with(sources: &[&str]) -> Listening {
        let mut child = Command::new(env!("CARGO_BIN_EXE_hearken"))
            .env("HEARKEN_MODELS", common::models_dir())
            .args(["run", "--print-events", "--http", ""])
            .args(sources)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut l = Listening {
            child,
            rx,
            log: Vec::new(),
        };
        l.wait_for("listening on", Duration::from_secs(60));
        l
    }

    /// Reads stderr lines until one contains `what`; panics after `limit`.
    fn wait_for(&mut self, what: &str, limit: Duration) {
        let t = Instant::now();
        loop {
            match self.rx.recv_timeout(Duration::from_millis(200)) {
                Ok(l) => {
                    let hit = l.contains(what);
                    self.log.push(l);
                    if hit {
                        return;
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("hearken ended before {what:?}: {:#?}", self.log)
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            assert!(
                t.elapsed() < limit,
                "no {what:?} within {limit:?}: {:#?}",
                self.log
            );
        }
    }

    /// Plays gunshots.wav into the microphone, lets it pass the windows, stops
    /// hearken with SIGTERM, and returns when the clip started and the gunshot
    /// start events.
    fn play_gunshots_and_stop(self) -> (SystemTime, Vec<Value>, Vec<String>) {
        let (at, events, log) = self.play_gunshots_and_stop_all();
        let gun = events
            .into_iter()
            .filter(|e| e["group"] == "gunshot" && e["state"] == "start")
            .collect();
        (at, gun, log)
    }

    /// [`Listening::play_gunshots_and_stop`], returning every event message.
    fn play_gunshots_and_stop_all(mut self) -> (SystemTime, Vec<Value>, Vec<String>) {
        // Give the ALSA pulse plugin time to start.
        std::thread::sleep(Duration::from_secs(3));
        let played_at = SystemTime::now();
        let clip = hearken::shared_dir().join("audio/gunshots.wav");
        let mut player = Command::new("paplay")
            .arg("--device=hearken_null")
            .arg(&clip)
            .spawn()
            .expect("paplay");
        let st = wait_with_timeout(&mut player, Duration::from_secs(30)).expect("paplay hung");
        assert!(st.success());
        std::thread::sleep(Duration::from_secs(3));
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let out = self.child.wait_with_output().unwrap();
        self.log.extend(self.rx.try_iter());
        assert!(out.status.success(), "{:#?}", self.log);
        let events = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .collect();
        (played_at, events, self.log)
    }
}

/// The start messages among `events`.
fn starts_of(events: &[Value]) -> Vec<&Value> {
    events.iter().filter(|e| e["state"] == "start").collect()
}

/// How many of `starts` came from `source` for `group`.
fn count_of(starts: &[&Value], source: &str, group: &str) -> usize {
    starts
        .iter()
        .filter(|e| e["source"] == source && e["group"] == group)
        .count()
}

#[test]
fn a_gunshot_played_into_the_microphone_raises_an_event() {
    let Some(_pulse) = start_pulse() else {
        return;
    };
    let (played_at, gun, log) = Listening::start().play_gunshots_and_stop();
    assert_eq!(gun.len(), 1, "events: {gun:#?}\nlog: {log:?}");
    // The event's wall-clock onset lies near the first shot (0.58 s into the clip),
    // allowing for the sound server's buffering.
    let started: SystemTime =
        humantime::parse_rfc3339(gun[0]["started_at"].as_str().unwrap()).unwrap();
    let shot = played_at + Duration::from_millis(580);
    let diff = match started.duration_since(shot) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    };
    assert!(
        diff.abs() < 2.5,
        "event onset {diff:+.2} s from the first shot"
    );
}

#[test]
fn the_microphone_vanishes_and_comes_back_and_detection_resumes() {
    let Some(pulse) = start_pulse() else {
        return;
    };
    let mut l = Listening::start();
    std::thread::sleep(Duration::from_secs(2));
    // Unplugged: the sound server goes away with the stream.
    pulse.kill();
    l.wait_for("audio device lost", Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(2));
    // Plugged back in: hearken reopens it by itself.
    pulse.restart();
    l.wait_for("audio device back", Duration::from_secs(30));
    let (_, gun, log) = l.play_gunshots_and_stop();
    assert_eq!(gun.len(), 1, "log: {log:#?}");
}

#[test]
fn a_microphone_and_a_file_in_one_daemon_each_raise_their_own_events() {
    let Some(_pulse) = start_pulse() else {
        return;
    };
    // The microphone hears gunshots; the file is a dog barking, in real time.
    let dog = format!(
        "file=file:{}",
        hearken::shared_dir().join("audio/dog.wav").display()
    );
    let mut l = Listening::start_with(&["--source", "mic=device:pulse", "--source", &dog]);
    l.wait_for("listening on file", Duration::from_secs(60));
    let (_, events, log) = l.play_gunshots_and_stop_all();
    let starts = starts_of(&events);
    let of = |source: &str, group: &str| count_of(&starts, source, group);
    assert_eq!(of("mic", "gunshot"), 1, "{starts:#?}\nlog: {log:#?}");
    assert_eq!(of("file", "gunshot"), 0, "{starts:#?}");
    assert!(of("file", "dog_bark") >= 1, "{starts:#?}\nlog: {log:#?}");
    assert_eq!(of("mic", "dog_bark"), 0, "{starts:#?}");
    assert!(
        starts
            .iter()
            .all(|e| e["source"] == "mic" || e["source"] == "file"),
        "{starts:#?}"
    );
}

#[test]
fn a_microphone_that_appears_after_start_is_opened_and_heard() {
    let Some(pulse) = start_pulse() else {
        return;
    };
    // No sound server yet: the microphone cannot be opened when hearken starts.
    pulse.kill();
    let dog = format!(
        "file=file:{}",
        hearken::shared_dir().join("audio/dog.wav").display()
    );
    let mut l = Listening::start_with(&["--source", "mic=device:pulse", "--source", &dog]);
    assert!(
        l.log
            .iter()
            .any(|x| x.contains("mic") && x.contains("tried again every")),
        "{:#?}",
        l.log
    );
    // The file (11 s) ends while the microphone is still missing: hearken stays up
    // for it, and opens it once the sound server is there.
    std::thread::sleep(Duration::from_secs(14));
    pulse.restart();
    l.wait_for("source mic is open now", Duration::from_secs(40));
    let (_, events, log) = l.play_gunshots_and_stop_all();
    let starts = starts_of(&events);
    let of = |source: &str, group: &str| count_of(&starts, source, group);
    assert_eq!(of("mic", "gunshot"), 1, "{starts:#?}\nlog: {log:#?}");
    assert!(of("file", "dog_bark") >= 1, "{starts:#?}\nlog: {log:#?}");
}
