//! SIGHUP reloads the configuration file of a running daemon (real audio on stdin):
//! valid changes take effect without restarting the source, invalid files are
//! reported and the running configuration stays, and events open across a reload
//! are ended exactly once.

mod common;

use common::free_port;

use std::path::Path;
use std::time::Duration;

use common::service::{s16le, tmp, Daemon};
use serde_json::Value;

/// A config file: statuses every second (the tests follow stream time through them)
/// plus `extra`.
fn write_config(path: &Path, extra: &str) {
    let text = format!("[detection]\nstatus_interval_s = 1\n{extra}");
    std::fs::write(path, text).unwrap();
}

const GUNSHOT_OFF: &str = "\n[detection.groups.gunshot]\nenabled = false\n";

fn start(dir: &Path, config: &Path) -> (Daemon, Vec<u8>) {
    let (rate, gunshots) = s16le("gunshots.wav");
    let cfg = config.display().to_string();
    let state = dir.join("state").display().to_string();
    let mut d = Daemon::spawn(
        rate,
        &["--config", &cfg, "--state-dir", &state],
        &[],
        false,
        Duration::ZERO,
    );
    d.wait_listening();
    (d, gunshots)
}

fn gunshot_starts(ev: &[Value]) -> Vec<&Value> {
    ev.iter()
        .filter(|e| e["group"] == "gunshot" && e["state"] == "start")
        .collect()
}

/// Waits for the stderr line that confirms a reload (or reports why not), after line
/// `from`; returns its index.
fn wait_reload(d: &mut Daemon, from: usize, what: &str) -> usize {
    d.stderr
        .wait_for(from, Duration::from_secs(30), |l| l.contains(what))
        .unwrap_or_else(|| panic!("no {what:?} on stderr: {}", d.stderr.text()))
}

/// Every start has exactly one end with its id, and no id starts twice.
fn assert_paired(ev: &[Value]) {
    use std::collections::HashMap;
    let mut n: HashMap<String, (usize, usize)> = HashMap::new();
    for e in ev {
        let c = n.entry(e["id"].as_str().unwrap().to_string()).or_default();
        match e["state"].as_str().unwrap() {
            "start" => c.0 += 1,
            "end" => c.1 += 1,
            s => panic!("state {s}"),
        }
    }
    for (id, (s, e)) in n {
        assert_eq!((s, e), (1, 1), "event {id}: {s} starts, {e} ends: {ev:#?}");
    }
}

#[test]
fn a_valid_reload_takes_effect_without_restarting_the_source() {
    let dir = tmp("reload-valid");
    let config = dir.join("hearken.toml");
    let port = free_port();
    let http = format!("[http]\nlisten = \"127.0.0.1:{port}\"\n");
    write_config(&config, &format!("{http}{GUNSHOT_OFF}"));
    let (mut d, gunshots) = start(&dir, &config);
    assert!(!d.stderr.text().contains("gunshot"), "{}", d.stderr.text());
    let metrics = || {
        let out = std::process::Command::new("curl")
            .args(["-s", &format!("http://127.0.0.1:{port}/metrics")])
            .output()
            .expect("curl is installed (tools/test.sh installs it)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let m = metrics();
    assert!(
        m.contains("hearken_events_total{group=\"glass\"} 0") && !m.contains("group=\"gunshot\""),
        "{m}"
    );

    // Gunshots while the group is off: no event. Wait until they have left the
    // 10 s window before reloading.
    let at = d.feeder().queue(gunshots.clone());
    d.wait_stream_time(at + 10.6 + 11.0, Duration::from_secs(90));
    assert!(gunshot_starts(&d.events()).is_empty(), "{:#?}", d.events());

    // The default groups again; SIGHUP.
    write_config(&config, &http);
    let from = d.stderr.seen.len();
    d.signal(libc::SIGHUP);
    let i = wait_reload(&mut d, from, "configuration reloaded");
    assert!(d.stderr.seen[i].contains("gunshot"), "{}", d.stderr.seen[i]);
    // /metrics counts the group's events from the reload on (none yet).
    let m = metrics();
    assert!(
        m.contains("hearken_events_total{group=\"gunshot\"} 0"),
        "{m}"
    );

    let at2 = d.feeder().queue(gunshots);
    let got = d.stdout.wait_for(0, Duration::from_secs(90), |l| {
        l.contains("\"group\":\"gunshot\"") && l.contains("\"state\":\"start\"")
    });
    assert!(
        got.is_some(),
        "no gunshot after the reload: {}",
        d.stderr.text()
    );
    let st = d.finish(Duration::from_secs(60));
    assert!(st.success(), "{}", d.stderr.text());
    let ev = d.events();
    let gun = gunshot_starts(&ev);
    assert_eq!(gun.len(), 1, "{ev:#?}");
    let start_s = gun[0]["start_s"].as_f64().unwrap();
    assert!(
        start_s >= at2 - 1.0,
        "gunshot at {start_s} s, fed at {at2} s"
    );
    assert_paired(&ev);
    // One source for the whole run.
    assert_eq!(d.stderr.text().matches("listening on").count(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_invalid_config_is_reported_and_the_running_one_stays() {
    let dir = tmp("reload-invalid");
    let config = dir.join("hearken.toml");
    write_config(&config, "");
    let (mut d, gunshots) = start(&dir, &config);
    let shown = config.display().to_string();

    // A TOML syntax error.
    std::fs::write(&config, "[detection\nstatus_interval_s = 1\n").unwrap();
    let from = d.stderr.seen.len();
    d.signal(libc::SIGHUP);
    let i = wait_reload(&mut d, from, "keeping the current configuration");
    assert!(d.stderr.seen[i].contains(&shown), "{}", d.stderr.seen[i]);

    // An unknown key: named with its table.
    write_config(&config, "\n[detection.groups.gunshot]\nloudness = 3\n");
    let from = i + 1;
    d.signal(libc::SIGHUP);
    let i = wait_reload(&mut d, from, "keeping the current configuration");
    let line = &d.stderr.seen[i];
    assert!(line.contains(&shown) && line.contains("loudness"), "{line}");

    // A label the model does not have: named with its key.
    write_config(
        &config,
        "\n[detection.groups.gunshot]\nlabels = [\"Laser blaster\"]\n",
    );
    d.signal(libc::SIGHUP);
    let i = wait_reload(&mut d, i + 1, "keeping the current configuration");
    let line = &d.stderr.seen[i];
    assert!(
        line.contains(&shown) && line.contains("detection.groups.gunshot.labels"),
        "{line}"
    );
    assert!(!d.stderr.text().contains("configuration reloaded"));

    // The old configuration still detects.
    d.feeder().queue(gunshots);
    let got = d.stdout.wait_for(0, Duration::from_secs(90), |l| {
        l.contains("\"group\":\"gunshot\"") && l.contains("\"state\":\"start\"")
    });
    assert!(got.is_some(), "no gunshot: {}", d.stderr.text());
    let st = d.finish(Duration::from_secs(60));
    assert!(st.success(), "{}", d.stderr.text());
    assert_paired(&d.events());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn restart_only_keys_are_kept_with_a_warning() {
    let dir = tmp("reload-restart");
    let config = dir.join("hearken.toml");
    write_config(&config, "");
    let (mut d, _) = start(&dir, &config);
    write_config(&config, "[model]\nhop_s = 0.5\n[node]\nroom = \"hall\"\n");
    // (The [detection] table comes first in the file; [model] after it is fine.)
    let from = d.stderr.seen.len();
    d.signal(libc::SIGHUP);
    let i = wait_reload(&mut d, from, "restart to apply");
    assert!(
        d.stderr.seen[i].contains("model.hop_s"),
        "{}",
        d.stderr.seen[i]
    );
    wait_reload(&mut d, from, "configuration reloaded");
    let st = d.finish(Duration::from_secs(60));
    assert!(st.success(), "{}", d.stderr.text());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Reloads while a gunshot event is open: `remove` disables the group (its event ends
/// at the reload) or else an unrelated change keeps it (the event goes on and ends
/// normally). Either way: one start, one end.
fn event_open_across_a_reload(name: &str, remove: bool) {
    let dir = tmp(name);
    let config = dir.join("hearken.toml");
    write_config(&config, "");
    let (mut d, gunshots) = start(&dir, &config);
    d.feeder().queue(gunshots);
    let start = d
        .stdout
        .wait_for(0, Duration::from_secs(90), |l| {
            l.contains("\"group\":\"gunshot\"") && l.contains("\"state\":\"start\"")
        })
        .unwrap_or_else(|| panic!("no gunshot: {}", d.stderr.text()));
    let id = serde_json::from_str::<Value>(&d.stdout.seen[start]).unwrap()["id"].clone();
    let ended = |d: &Daemon| {
        d.events()
            .iter()
            .any(|e| e["id"] == id && e["state"] == "end")
    };
    assert!(
        !ended(&d),
        "the event ended before the reload: try a longer clip"
    );
    write_config(
        &config,
        if remove {
            GUNSHOT_OFF
        } else {
            "\n[node]\nroom = \"hall\"\n[detection.groups.dog_bark]\nenabled = false\n"
        },
    );
    let from = d.stderr.seen.len();
    d.signal(libc::SIGHUP);
    wait_reload(&mut d, from, "configuration reloaded");
    let closed = d.stdout.wait_for(0, Duration::from_secs(60), |l| {
        l.contains(id.as_str().unwrap()) && l.contains("\"state\":\"end\"")
    });
    assert!(closed.is_some(), "never ended: {}", d.stdout.text());
    let st = d.finish(Duration::from_secs(60));
    assert!(st.success(), "{}", d.stderr.text());
    let ev = d.events();
    assert_eq!(gunshot_starts(&ev).len(), 1, "{ev:#?}");
    assert_paired(&ev);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_event_open_across_a_reload_that_keeps_its_group_ends_once() {
    event_open_across_a_reload("reload-keep", false);
}

#[test]
fn an_event_open_across_a_reload_that_removes_its_group_ends_once() {
    event_open_across_a_reload("reload-remove", true);
}

#[test]
fn sighup_without_a_config_file_is_harmless() {
    let (rate, _) = s16le("gunshots.wav");
    let mut d = Daemon::spawn(rate, &[], &[], false, Duration::ZERO);
    d.wait_listening();
    d.signal(libc::SIGHUP);
    wait_reload(&mut d, 0, "nothing to reload");
    let st = d.finish(Duration::from_secs(60));
    assert!(st.success(), "{}", d.stderr.text());
}

/// Kills the child when dropped.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Events queued while the configured broker is unreachable reach the broker a
/// reload points hearken to: the publisher is restarted on the same durable outbox.
#[test]
fn a_reload_that_changes_the_broker_carries_queued_events_over() {
    use std::process::{Command, Stdio};
    let dir = tmp("reload-mqtt");
    let port = free_port();
    let dead_port = free_port();
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\npersistence false\nallow_anonymous true\n"),
    )
    .unwrap();
    let Ok(broker) = Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    else {
        eprintln!("skipping: mosquitto is not installed (tools/system-deps.sh mosquitto)");
        return;
    };
    let _broker = Killed(broker);
    let t = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "mosquitto did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut sub = Killed(
        Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["-t", "hearken/+/event/#", "-q", "1", "-v"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto_sub"),
    );
    let mut sub_lines = common::service::Lines::read(sub.0.stdout.take().unwrap());

    let config = dir.join("hearken.toml");
    let mqtt = |p: u16| format!("\n[mqtt]\nhost = \"127.0.0.1\"\nport = {p}\n");
    write_config(&config, &mqtt(dead_port));
    let (rate, gunshots) = s16le("gunshots.wav");
    let cfg = config.display().to_string();
    let state = dir.join("state").display().to_string();
    let mut d = Daemon::spawn(
        rate,
        &[
            "--config",
            &cfg,
            "--state-dir",
            &state,
            "--node-id",
            "reloadnode",
        ],
        &[],
        false,
        Duration::ZERO,
    );
    d.wait_listening();
    d.feeder().queue(gunshots);
    let got = d.stdout.wait_for(0, Duration::from_secs(90), |l| {
        l.contains("\"group\":\"gunshot\"") && l.contains("\"state\":\"start\"")
    });
    assert!(got.is_some(), "no gunshot: {}", d.stderr.text());
    let id = serde_json::from_str::<Value>(&d.stdout.seen[got.unwrap()]).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Nothing reached the broker yet.
    assert!(sub_lines
        .wait_for(0, Duration::from_millis(500), |_| true)
        .is_none());

    write_config(&config, &mqtt(port));
    let from = d.stderr.seen.len();
    d.signal(libc::SIGHUP);
    wait_reload(&mut d, from, "configuration reloaded");
    let delivered = sub_lines.wait_for(0, Duration::from_secs(60), |l| {
        l.starts_with("hearken/reloadnode/event/gunshot ") && l.contains(&id)
    });
    assert!(
        delivered.is_some(),
        "the queued event never reached the new broker: {}\n{}",
        sub_lines.text(),
        d.stderr.text()
    );
    let st = d.finish(Duration::from_secs(60));
    assert!(st.success(), "{}", d.stderr.text());
    let _ = std::fs::remove_dir_all(&dir);
}
