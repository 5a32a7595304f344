//! The daemon against a real broker: Debian's mosquitto on a free loopback port,
//! checked with a real subscriber (mosquitto_sub).

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{audio, models_dir};
use serde_json::Value;

struct Broker {
    child: Child,
    dir: PathBuf,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hearken-mqtt-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn start_broker(port: u16, tag: &str) -> Broker {
    let dir = tmp(&format!("broker-{tag}"));
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
    )
    .unwrap();
    let child = Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto is installed by tools/test.sh (apt-get install mosquitto)");
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "mosquitto did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Broker { child, dir }
}

/// Subscribes to everything and collects `topic payload` lines until killed.
fn subscribe(port: u16) -> Child {
    let child = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            "#",
            "-v",
            "-q",
            "1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto_sub");
    std::thread::sleep(Duration::from_millis(300));
    child
}

fn collect(mut sub: Child) -> Vec<(String, String)> {
    std::thread::sleep(Duration::from_millis(500));
    let _ = sub.kill();
    let out = sub.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            l.split_once(' ')
                .map(|(t, p)| (t.to_string(), p.to_string()))
        })
        .collect()
}

fn hearken(file: &str, port: u16, state: &Path, fast: bool) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hearken"));
    c.env("HEARKEN_MODELS", models_dir())
        .args(["run", "--node-id", "testnode", "--mqtt"])
        .arg(format!("mqtt://127.0.0.1:{port}"))
        .arg("--state-dir")
        .arg(state)
        .arg("--source")
        .arg(format!("file:{}", audio(file).display()));
    if fast {
        c.arg("--fast");
    }
    c
}

/// The next message on `topic` (a retained one at once), or "" after `wait_s`.
fn sub_once(port: u16, topic: &str, wait_s: u32) -> String {
    let out = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            topic,
            "-C",
            "1",
        ])
        .args(["-W", &wait_s.to_string()])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Runs hearken to the end and insists it succeeded.
fn run_ok(mut c: Command) -> std::process::Output {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn events(msgs: &[(String, String)]) -> Vec<Value> {
    msgs.iter()
        .filter(|(t, _)| t == "hearken/testnode/event/gunshot")
        .map(|(_, p)| serde_json::from_str(p).unwrap())
        .collect()
}

#[test]
fn events_states_discovery_and_availability_reach_a_real_broker() {
    let port = free_port();
    let _broker = start_broker(port, "main");
    let sub = subscribe(port);
    let state = tmp("state-main");
    run_ok(hearken("gunshots.wav", port, &state, true));
    let msgs = collect(sub);
    let topics: Vec<&str> = msgs.iter().map(|(t, _)| t.as_str()).collect();

    // Availability: online first, offline last (clean shutdown).
    assert_eq!(
        msgs.first().map(|m| m.1.as_str()),
        Some("online"),
        "{topics:?}"
    );
    let status: Vec<&str> = msgs
        .iter()
        .filter(|(t, _)| t == "hearken/testnode/status")
        .map(|(_, p)| p.as_str())
        .collect();
    assert_eq!(status.last(), Some(&"offline"));

    // Discovery: a binary_sensor and an event entity per group, two sensors.
    for g in ["glass", "gunshot", "smoke_alarm", "scream", "siren"] {
        for comp in ["binary_sensor", "event"] {
            let t = format!("homeassistant/{comp}/testnode/{g}/config");
            let (_, p) = msgs
                .iter()
                .find(|(x, _)| *x == t)
                .unwrap_or_else(|| panic!("no {t}"));
            let v: Value = serde_json::from_str(p).unwrap();
            for k in ["unique_id", "state_topic", "availability_topic", "device"] {
                assert!(!v[k].is_null(), "{t} lacks {k}");
            }
        }
    }
    let bs: Value = serde_json::from_str(
        &msgs
            .iter()
            .find(|(t, _)| t == "homeassistant/binary_sensor/testnode/smoke_alarm/config")
            .unwrap()
            .1,
    )
    .unwrap();
    assert_eq!(bs["device_class"], "smoke");
    assert_eq!(bs["state_topic"], "hearken/testnode/smoke_alarm/state");
    for s in ["top", "loudness"] {
        let t = format!("homeassistant/sensor/testnode/{s}/config");
        assert!(topics.contains(&t.as_str()), "no {t}");
    }

    // The gunshot event: start then end with one id; state ON then OFF.
    let ev = events(&msgs);
    assert_eq!(ev.len(), 2, "{ev:#?}");
    assert_eq!(
        (ev[0]["state"].as_str(), ev[1]["state"].as_str()),
        (Some("start"), Some("end"))
    );
    assert_eq!(ev[0]["id"], ev[1]["id"]);
    assert_eq!(ev[0]["node"], "testnode");
    let states: Vec<&str> = msgs
        .iter()
        .filter(|(t, _)| t == "hearken/testnode/gunshot/state")
        .map(|(_, p)| p.as_str())
        .collect();
    assert_eq!(states, vec!["ON", "OFF"]);
    let _ = std::fs::remove_dir_all(&state);
}

#[test]
fn kill_9_makes_the_broker_say_offline() {
    let port = free_port();
    let _broker = start_broker(port, "kill");
    let state = tmp("state-kill");
    let cfg = state.join("fast-status.toml");
    std::fs::write(&cfg, "[detection]\nstatus_interval_s = 1.0\n").unwrap();
    let mut child = hearken("gunshots.wav", port, &state, false)
        .arg("--config")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while sub_once(port, "hearken/testnode/status", 3) != "online" {
        assert!(t.elapsed() < Duration::from_secs(20), "never online");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The diagnostic topic carries the top labels and the level.
    let top = sub_once(port, "hearken/testnode/top", 8);
    let top: Value = serde_json::from_str(&top).expect("a top report within 8 s");
    assert!(top["top"].is_array() && top["dbfs"].is_number(), "{top}");
    child.kill().unwrap(); // SIGKILL: no clean shutdown, the Last Will fires.
    child.wait().unwrap();
    let t = Instant::now();
    while sub_once(port, "hearken/testnode/status", 3) != "offline" {
        assert!(t.elapsed() < Duration::from_secs(20), "no Last Will");
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = std::fs::remove_dir_all(&state);
}

#[test]
fn events_made_while_the_broker_is_down_arrive_after_a_restart() {
    let port = free_port();
    let state = tmp("state-outage");
    // Broker down: the daemon runs anyway and keeps the events on disk.
    let out = run_ok(hearken("gunshots.wav", port, &state, true));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("outbox"), "{err}");
    // Broker up; hearken restarted on audio without events: the outbox drains.
    let _broker = start_broker(port, "outage");
    let sub = subscribe(port);
    run_ok(hearken("speech_sample1.wav", port, &state, true));
    let msgs = collect(sub);
    let ev = events(&msgs);
    eprintln!(
        "outage: {} event messages delivered after restart ({} starts, {} ends)",
        ev.len(),
        ev.iter().filter(|e| e["state"] == "start").count(),
        ev.iter().filter(|e| e["state"] == "end").count()
    );
    // Both messages of the one event, in order; QoS 1 would allow a duplicate.
    assert!(ev.len() >= 2, "{msgs:?}");
    assert_eq!(ev[0]["state"], "start");
    assert_eq!(ev.last().unwrap()["state"], "end");
    assert!(ev.iter().all(|e| e["id"] == ev[0]["id"]));
    // Nothing left behind: a third run sends nothing old.
    let sub = subscribe(port);
    run_ok(hearken("speech_sample1.wav", port, &state, true));
    assert!(events(&collect(sub)).is_empty());
    let _ = std::fs::remove_dir_all(&state);
}

#[test]
fn the_config_file_chooses_broker_and_topics() {
    let port = free_port();
    let _broker = start_broker(port, "cfg");
    let sub = subscribe(port);
    let state = tmp("state-cfg");
    let cfg = state.join("hearken.toml");
    std::fs::write(
        &cfg,
        format!(
            "[node]\nid = \"cfgnode\"\n\n[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\nbase_topic = \"home/sound\"\nstate_dir = \"{}\"\n",
            state.join("st").display()
        ),
    )
    .unwrap();
    let mut c = Command::new(env!("CARGO_BIN_EXE_hearken"));
    c.env("HEARKEN_MODELS", models_dir())
        .args(["run", "--fast", "--config"])
        .arg(&cfg)
        .arg("--source")
        .arg(format!("file:{}", audio("gunshots.wav").display()));
    run_ok(c);
    let msgs = collect(sub);
    assert!(
        msgs.iter()
            .any(|(t, p)| t == "home/sound/cfgnode/status" && p == "online"),
        "{msgs:?}"
    );
    assert!(msgs
        .iter()
        .any(|(t, _)| t == "home/sound/cfgnode/event/gunshot"));
    assert!(
        state.join("st/outbox").is_dir(),
        "the outbox lives in mqtt.state_dir"
    );
    let _ = std::fs::remove_dir_all(&state);
}
