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
    start_broker_with(port, tag, "allow_anonymous true\n")
}

/// mosquitto on `port` with extra configuration lines (TLS, passwords).
fn start_broker_with(port: u16, tag: &str, extra: &str) -> Broker {
    let dir = tmp(&format!("broker-{tag}"));
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\npersistence false\n{extra}"),
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
fn subscribe(port: u16) -> Sub {
    subscribe_with(port, &[])
}

/// A running mosquitto_sub, writing to a file (a pipe nobody reads until the end
/// would fill at 64 KiB and stall it).
struct Sub {
    child: Child,
    out: PathBuf,
}

/// [`subscribe`] with extra mosquitto_sub arguments (TLS, login).
fn subscribe_with(port: u16, extra: &[&str]) -> Sub {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let out = std::env::temp_dir().join(format!(
        "hearken-mqtt-sub-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let child = Command::new("mosquitto_sub")
        .args(extra)
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
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto_sub");
    std::thread::sleep(Duration::from_millis(300));
    Sub { child, out }
}

fn collect(mut sub: Sub) -> Vec<(String, String)> {
    std::thread::sleep(Duration::from_millis(500));
    let _ = sub.child.kill();
    let _ = sub.child.wait();
    let text = std::fs::read(&sub.out).unwrap();
    let _ = std::fs::remove_file(&sub.out);
    String::from_utf8_lossy(&text)
        .lines()
        .filter_map(|l| {
            l.split_once(' ')
                .map(|(t, p)| (t.to_string(), p.to_string()))
        })
        .collect()
}

fn hearken(file: &str, port: u16, state: &Path, fast: bool) -> Command {
    hearken_url(file, &format!("mqtt://127.0.0.1:{port}"), state, fast)
}

fn hearken_url(file: &str, url: &str, state: &Path, fast: bool) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hearken"));
    c.env("HEARKEN_MODELS", models_dir())
        .args(["run", "--node-id", "testnode", "--mqtt", url])
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

/// A run on audio without events delivers no event message: nothing old was left
/// in the outbox or the open-events file of `state`.
fn assert_nothing_stale(port: u16, state: &Path) {
    let sub = subscribe(port);
    run_ok(hearken("speech_sample1.wav", port, state, true));
    let ev = events(&collect(sub));
    assert!(ev.is_empty(), "stale events delivered again: {ev:?}");
}

/// Checks every discovery config among `msgs` against Home Assistant's own
/// schemas (tools/ha-schema-check.py, in `dir`); returns how many there were.
fn assert_ha_accepts(msgs: &[(String, String)], dir: &Path) -> usize {
    let configs: Vec<Value> = msgs
        .iter()
        .filter(|(t, _)| t.starts_with("homeassistant/") && t.ends_with("/config"))
        .map(|(t, p)| serde_json::json!({"topic": t, "payload": serde_json::from_str::<Value>(p).unwrap()}))
        .collect();
    let file = dir.join("discovery.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&configs).unwrap()).unwrap();
    let check = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tools/ha-schema-check.py"
        ))
        .arg(&file)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&check.stdout);
    eprintln!("{report}");
    assert!(
        check.status.success() && report.contains("all valid"),
        "Home Assistant rejects a discovery config:\n{report}\n{}",
        String::from_utf8_lossy(&check.stderr)
    );
    configs.len()
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
    // The true state first (no group is ever unknown), then the event.
    assert_eq!(states, vec!["OFF", "ON", "OFF"]);
    // Every group's state is published on connect, not only the ones with events.
    for g in ["glass", "smoke_alarm", "scream", "siren"] {
        let t = format!("hearken/testnode/{g}/state");
        assert!(
            msgs.iter().any(|(x, p)| *x == t && p == "OFF"),
            "no initial state on {t}"
        );
    }
    let problem = msgs
        .iter()
        .find(|(t, _)| t == "hearken/testnode/problem")
        .expect("a problem state on connect");
    assert_eq!(problem.1, r#"{"state":"OFF"}"#);

    // Every config as received passes Home Assistant's own discovery schemas
    // (tools/ha-schema-check.py runs them from the homeassistant package).
    assert_eq!(assert_ha_accepts(&msgs, &state), 3 * 10 + 3, "{topics:?}");
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
    assert_nothing_stale(port, &state);
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

/// Writes a self-signed CA and a server and a client certificate signed by it
/// (openssl), returning the directory.
fn throwaway_ca(tag: &str) -> PathBuf {
    let dir = tmp(&format!("ca-{tag}"));
    let sh = |args: &str| {
        let st = Command::new("sh")
            .arg("-c")
            .arg(args)
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "openssl: {args}");
    };
    sh("openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=hearken-test-ca -keyout ca.key -out ca.pem");
    for (name, cn, ext) in [
        (
            "server",
            "localhost",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ),
        ("client", "hearken-client", "extendedKeyUsage=clientAuth"),
    ] {
        sh(&format!(
            "openssl req -newkey rsa:2048 -nodes -subj /CN={cn} -keyout {name}.key -out {name}.csr"
        ));
        std::fs::write(dir.join(format!("{name}.ext")), format!("{ext}\n")).unwrap();
        sh(&format!("openssl x509 -req -in {name}.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile {name}.ext -out {name}.pem"));
    }
    // mosquitto started as root reads its key as the `mosquitto` user.
    sh("chmod 644 *.key");
    dir
}

fn run_with_config(cfg: &Path, file: &str) -> std::process::Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hearken"));
    c.env("HEARKEN_MODELS", models_dir())
        .args(["run", "--fast", "--node-id", "testnode", "--config"])
        .arg(cfg)
        .arg("--source")
        .arg(format!("file:{}", audio(file).display()));
    c.output().unwrap()
}

#[test]
fn tls_with_a_throwaway_ca_and_client_certificates() {
    let ca = throwaway_ca("tls");
    let port = free_port();
    let _broker = start_broker_with(
        port,
        "tls",
        &format!(
            "allow_anonymous true\ncafile {0}/ca.pem\ncertfile {0}/server.pem\nkeyfile {0}/server.key\nrequire_certificate true\n",
            ca.display()
        ),
    );
    let d = ca.display();
    let tls_args = [
        "--cafile".to_string(),
        format!("{d}/ca.pem"),
        "--cert".to_string(),
        format!("{d}/client.pem"),
        "--key".to_string(),
        format!("{d}/client.key"),
    ];
    let tls_args: Vec<&str> = tls_args.iter().map(String::as_str).collect();
    let sub = subscribe_with(port, &tls_args);
    let state = tmp("state-tls");
    let cfg = state.join("hearken.toml");
    let write_cfg = |ca_file: &str| {
        std::fs::write(
            &cfg,
            format!(
                "[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\nqos = 2\ntls = true\nca_file = \"{ca_file}\"\nclient_cert_file = \"{d}/client.pem\"\nclient_key_file = \"{d}/client.key\"\nstate_dir = \"{}\"\n",
                state.display()
            ),
        )
        .unwrap()
    };

    // A CA that did not sign the broker's certificate: refused, and said so;
    // the event waits in the outbox.
    let other = throwaway_ca("tls-other");
    write_cfg(&format!("{}/ca.pem", other.display()));
    let out = run_with_config(&cfg, "gunshots.wav");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("ca_file") && err.contains("outbox"), "{err}");

    // The right CA: connected over TLS with the client certificate, at QoS 2;
    // the waiting event and the new one arrive.
    write_cfg(&format!("{d}/ca.pem"));
    let out = run_with_config(&cfg, "gunshots.wav");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let msgs = collect(sub);
    assert!(
        msgs.iter()
            .any(|(t, p)| t == "hearken/testnode/status" && p == "online"),
        "{msgs:?}"
    );
    let ev = events(&msgs);
    assert_eq!(ev.len(), 4, "two events, start and end each: {ev:#?}");
    assert_ne!(ev[0]["id"], ev[2]["id"]);

    // A missing CA file stops the daemon at start, naming the file.
    write_cfg("/nonexistent/ca.pem");
    let out = run_with_config(&cfg, "gunshots.wav");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("/nonexistent/ca.pem"),
        "{err}"
    );
    for d in [&ca, &other, &state] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn a_wrong_password_is_a_clear_error_and_the_right_one_works() {
    let port = free_port();
    let dir = tmp("passwd");
    let pw = dir.join("passwd");
    let st = Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(&pw)
        .args(["alice", "s3cret"])
        .status()
        .unwrap();
    assert!(st.success());
    let _broker = start_broker_with(
        port,
        "passwd",
        &format!("allow_anonymous false\npassword_file {}\n", pw.display()),
    );
    let state = tmp("state-passwd");
    let run = |login: &str| {
        hearken_url(
            "gunshots.wav",
            &format!("mqtt://{login}@127.0.0.1:{port}"),
            &state,
            true,
        )
        .output()
        .unwrap()
    };
    let out = run("alice:wrong");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("refused") && err.contains("check the user name and password"),
        "{err}"
    );
    let sub = subscribe_with(port, &["-u", "alice", "-P", "s3cret"]);
    let out = run("alice:s3cret");
    assert!(out.status.success());
    // The event kept from the refused run arrives with the new one.
    assert_eq!(events(&collect(sub)).len(), 4);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&state);
}

#[test]
fn a_group_removed_from_the_config_loses_its_home_assistant_entity() {
    let port = free_port();
    let _broker = start_broker(port, "removal");
    let state = tmp("state-removal");
    run_ok(hearken("speech_sample1.wav", port, &state, true));
    let topic = "homeassistant/binary_sensor/testnode/gunshot/config";
    assert!(sub_once(port, topic, 2).contains("unique_id"));
    let cfg = state.join("hearken.toml");
    std::fs::write(&cfg, "[detection.groups.gunshot]\nenabled = false\n").unwrap();
    let mut second = hearken("speech_sample1.wav", port, &state, true);
    second.arg("--config").arg(&cfg);
    let out = run_ok(second);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(topic), "{err}");
    // No retained config left (an empty retained payload deletes it), the other
    // groups keep theirs.
    assert_eq!(sub_once(port, topic, 2), "");
    assert_eq!(
        sub_once(port, "homeassistant/event/testnode/gunshot/config", 2),
        ""
    );
    assert!(
        sub_once(port, "homeassistant/binary_sensor/testnode/glass/config", 2)
            .contains("unique_id")
    );
    let _ = std::fs::remove_dir_all(&state);
}

/// gunshots.wav as raw s16le mono (its own format: 44.1 kHz, 16-bit, mono).
fn gunshots_pcm() -> Vec<u8> {
    let mut r = hound::WavReader::open(audio("gunshots.wav")).unwrap();
    let spec = r.spec();
    assert_eq!(
        (spec.sample_rate, spec.channels, spec.bits_per_sample),
        (44100, 1, 16)
    );
    r.samples::<i16>()
        .flat_map(|s| s.unwrap().to_le_bytes())
        .collect()
}

#[test]
fn the_embedded_broker_serves_a_subscriber_without_any_other_broker() {
    use std::io::Write;
    let port = free_port();
    let state = tmp("state-embedded");
    let mut child = Command::new(env!("CARGO_BIN_EXE_hearken"))
        .env("HEARKEN_MODELS", models_dir())
        .args([
            "run",
            "--node-id",
            "testnode",
            "--embedded-broker",
            "--source",
            "stdin:44100:1",
        ])
        .arg("--state-dir")
        .arg(&state)
        .arg("--config")
        .arg({
            let cfg = state.join("hearken.toml");
            std::fs::write(
                &cfg,
                format!("[mqtt]\nembedded_listen = \"127.0.0.1:{port}\"\n"),
            )
            .unwrap();
            cfg
        })
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the embedded broker never listened"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let sub = subscribe(port);
    assert_eq!(sub_once(port, "hearken/testnode/status", 5), "online");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&gunshots_pcm()).unwrap();
    drop(stdin);
    // Events are published before hearken exits; the broker dies with it.
    let t = Instant::now();
    let mut got = Vec::new();
    let mut sub = Some(sub);
    while t.elapsed() < Duration::from_secs(30) {
        if sub_once(port, "hearken/testnode/gunshot/state", 1) == "OFF" {
            got = collect(sub.take().unwrap());
            break;
        }
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("embedded MQTT broker listening"), "{err}");
    let ev = events(&got);
    assert_eq!(ev.len(), 2, "{got:?}\n{err}");
    assert!(got
        .iter()
        .any(|(t, _)| t == "homeassistant/binary_sensor/testnode/gunshot/config"));
    let _ = std::fs::remove_dir_all(&state);
}

/// Every message on `topic` until `n` have arrived or `wait_s` passed.
fn sub_n(port: u16, topic: &str, n: u32, wait_s: u32) -> Child {
    let child = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", topic])
        .args(["-C", &n.to_string(), "-W", &wait_s.to_string(), "-q", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto_sub");
    std::thread::sleep(Duration::from_millis(300));
    child
}

#[test]
fn kill_9_during_an_event_leaves_no_alarm_on_after_a_restart() {
    let port = free_port();
    let _broker = start_broker(port, "stuck");
    let state = tmp("state-stuck");
    // gunshots.wav in real time: a gunshot event starts after about a second and
    // lasts to the end of the file, 10 s later.
    let first = sub_n(port, "hearken/testnode/event/gunshot", 1, 40);
    // With the default 10 s status interval, the first diagnostic report still
    // comes with the first window: the sensors are not Unknown for 10 s.
    let top = sub_n(port, "hearken/testnode/top", 1, 6);
    let mut child = hearken("gunshots.wav", port, &state, false)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = first.wait_with_output().unwrap();
    let start: Value = serde_json::from_slice(&out.stdout).expect("a start within 40 s");
    assert_eq!(start["state"], "start");
    let top = top.wait_with_output().unwrap();
    let top: Value = serde_json::from_slice(&top.stdout).expect("a top report within 6 s");
    assert!(top["dbfs"].is_number(), "{top}");
    // A moment for the broker's PUBACK to be recorded (else the start is, rightly,
    // sent again after the restart: QoS 1 is at least once).
    std::thread::sleep(Duration::from_millis(800));
    child.kill().unwrap(); // SIGKILL while the event is open
    child.wait().unwrap();
    assert_eq!(
        sub_once(port, "hearken/testnode/gunshot/state", 3),
        "ON",
        "the dead process left its retained ON (the precondition)"
    );

    // The next start says the truth before anything else and closes the event.
    let sub = subscribe(port);
    run_ok(hearken("speech_sample1.wav", port, &state, true));
    let msgs = collect(sub);
    let ev = events(&msgs);
    let end = ev
        .iter()
        .find(|e| e["state"] == "end")
        .unwrap_or_else(|| panic!("no end after the restart: {msgs:?}"));
    assert_eq!(end["id"], start["id"]);
    assert_eq!(end["interrupted"], true);
    assert!(end["ended_at"].is_string());
    assert!(
        ev.iter().all(|e| e["state"] == "end"),
        "the start is not sent again: {ev:?}"
    );
    let states: Vec<&str> = msgs
        .iter()
        .filter(|(t, _)| t == "hearken/testnode/gunshot/state")
        .map(|(_, p)| p.as_str())
        .collect();
    // The retained ON the subscriber is handed first, then only the truth.
    assert_eq!(states, vec!["ON", "OFF"]);
    assert_eq!(sub_once(port, "hearken/testnode/gunshot/state", 3), "OFF");
    assert!(!state.join("open-events.json").exists());

    // Closed once: a third start publishes no second interrupted end.
    assert_nothing_stale(port, &state);
    let _ = std::fs::remove_dir_all(&state);
}

#[test]
fn a_damaged_outbox_is_moved_aside_and_the_daemon_starts() {
    let port = free_port();
    let _broker = start_broker(port, "damaged");
    let state = tmp("state-damaged");
    let dir = state.join("outbox");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("outbox.log"), vec![0u8; 8192]).unwrap();
    let sub = subscribe(port);
    let out = run_ok(hearken("gunshots.wav", port, &state, true));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not a hearken outbox log") && err.contains("moved it to"),
        "{err}"
    );
    assert_eq!(
        events(&collect(sub)).len(),
        2,
        "the daemon ran and delivered"
    );
    let aside: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("outbox.log.damaged-")
        })
        .collect();
    assert_eq!(aside.len(), 1);
    assert_eq!(std::fs::read(aside[0].path()).unwrap(), vec![0u8; 8192]);

    // A log cut inside its header is started afresh, with a warning.
    std::fs::write(dir.join("outbox.log"), b"HKO").unwrap();
    let out = run_ok(hearken("speech_sample1.wav", port, &state, true));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cut short inside its header"), "{err}");
    let _ = std::fs::remove_dir_all(&state);
}

/// A tmpfs of `kib` KiB mounted on `dir`, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, kib: u32) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={kib}k"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("mount");
        assert!(
            st.success(),
            "mounting a tmpfs needs root (CI runs as root)"
        );
        Tmpfs(dir.to_path_buf())
    }

    /// Fills the filesystem to the last byte with `filler`.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let p = self.0.join("filler");
        let mut f = std::fs::File::create(&p).unwrap();
        let chunk = vec![0xAAu8; 4096];
        while f.write_all(&chunk).is_ok() {}
        for _ in 0..4096 {
            if f.write_all(&[0xAA]).is_err() {
                break;
            }
        }
        let _ = f.sync_all();
        p
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_loses_no_event_and_does_not_stall_delivery() {
    let port = free_port();
    let root = tmp("state-full");
    let fs = Tmpfs::mount(&root, 1024);
    let (a, b) = (root.join("a"), root.join("b"));
    // Run A, broker down, disk free: one event (start + end) waits on disk.
    run_ok(hearken("gunshots.wav", port, &a, true));
    // Free the space the outbox keeps in reserve (a truncate to the same length
    // drops preallocated blocks), then fill the filesystem to the last byte.
    let log = a.join("outbox").join("outbox.log");
    let len = std::fs::metadata(&log).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&log).unwrap();
    f.set_len(len).unwrap();
    drop(f);
    let filler = fs.fill();

    // Run B, broker up, on a fresh state dir on the full disk, in real time: its
    // event is held in memory and delivered, the problem is raised at once, and
    // cleared once space returns.
    let _broker = start_broker(port, "full");
    let sub = subscribe(port);
    let problem = sub_n(port, "hearken/testnode/problem", 1, 30);
    let child = hearken("gunshots.wav", port, &b, false)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = problem.wait_with_output().unwrap();
    let seen = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        seen.contains(r#""state":"ON""#),
        "no problem raised: {seen}"
    );
    // Let the event start while the disk is still full.
    std::thread::sleep(Duration::from_secs(3));
    std::fs::remove_file(&filler).unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("cannot write"), "{err}");
    assert!(err.contains("can be written again"), "{err}");
    let msgs = collect(sub);
    let ev = events(&msgs);
    assert_eq!(ev.len(), 2, "B's start and end: {ev:?}");
    assert_eq!(ev[0]["id"], ev[1]["id"]);
    assert_eq!(
        (ev[0]["state"].as_str(), ev[1]["state"].as_str()),
        (Some("start"), Some("end"))
    );
    let problems: Vec<&str> = msgs
        .iter()
        .filter(|(t, _)| t == "hearken/testnode/problem")
        .map(|(_, p)| p.as_str())
        .collect();
    assert!(
        problems
            .first()
            .is_some_and(|p| p.contains(r#""state":"ON""#)),
        "{problems:?}"
    );
    assert_eq!(problems.last(), Some(&r#"{"state":"OFF"}"#), "{problems:?}");

    // Restart on A's state with the disk full again: A's messages are delivered
    // (marking them delivered needs no space), and only once.
    let filler = fs.fill();
    let sub = subscribe(port);
    run_ok(hearken("speech_sample1.wav", port, &a, true));
    let ev = events(&collect(sub));
    assert_eq!(ev.len(), 2, "A's start and end after the restart: {ev:?}");
    assert_eq!(ev[0]["id"], ev[1]["id"]);
    assert_nothing_stale(port, &a);
    std::fs::remove_file(&filler).unwrap();
    drop(fs);
    let _ = std::fs::remove_dir_all(&root);
}

/// "That was a false alarm" from Home Assistant reaches the home store: the button
/// discovery announces sends its payload to the group's feedback topic, the daemon
/// marks the group's latest event, and a JSON verdict naming an event marks that one.
#[test]
fn a_false_alarm_press_marks_the_event_in_the_home_store() {
    use common::service::{s16le, Daemon};
    let port = free_port();
    let _broker = start_broker(port, "feedback");
    let state = tmp("state-feedback");
    let (rate, gunshots) = s16le("gunshots.wav");
    let url = format!("mqtt://127.0.0.1:{port}");
    let st = state.display().to_string();
    let mut d = Daemon::spawn(
        rate,
        &["--mqtt", &url, "--node-id", "fbnode", "--state-dir", &st],
        &[],
        false,
        Duration::ZERO,
    );
    d.wait_listening();
    assert!(
        d.stderr
            .wait_for(0, Duration::from_secs(30), |l| l.contains(": connected"))
            .is_some(),
        "never connected: {}",
        d.stderr.text()
    );
    // What Home Assistant's button would send, taken from the retained config.
    let button: Value = serde_json::from_str(&sub_once(
        port,
        "homeassistant/button/fbnode/gunshot/config",
        5,
    ))
    .unwrap();
    let command_topic = button["command_topic"].as_str().unwrap().to_string();
    assert_eq!(command_topic, "hearken/fbnode/gunshot/feedback");
    let press = |payload: &str| {
        let st = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
            .args(["-t", &command_topic, "-m", payload])
            .status()
            .unwrap();
        assert!(st.success());
    };

    d.feeder().queue(gunshots);
    let at = d
        .stdout
        .wait_for(0, Duration::from_secs(90), |l| {
            l.contains("\"group\":\"gunshot\"") && l.contains("\"state\":\"start\"")
        })
        .unwrap_or_else(|| panic!("no gunshot event: {}", d.stderr.text()));
    let first: Value = serde_json::from_str(&d.stdout.seen[at]).unwrap();
    let first_id = first["id"].as_str().unwrap().to_string();
    // Let every event of the recording come (the press means the latest).
    d.wait_stream_time(25.0, Duration::from_secs(90));
    let ids: Vec<String> = d
        .events()
        .iter()
        .filter(|e| e["group"] == "gunshot" && e["state"] == "start")
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    let latest = ids.last().unwrap().clone();

    press(button["payload_press"].as_str().unwrap());
    let marked = |d: &mut Daemon, id: &str, what: &str| {
        let line = format!("event {id} marked {what}");
        assert!(
            d.stderr
                .wait_for(0, Duration::from_secs(20), |l| l.contains(&line))
                .is_some(),
            "no {line:?}: {}",
            d.stderr.text()
        );
    };
    marked(&mut d, &latest, "a false alarm");
    press(&format!(
        "{{\"verdict\": \"real\", \"event_id\": \"{first_id}\"}}"
    ));
    marked(&mut d, &first_id, "real");
    // A verdict hearken cannot take is refused with the reason, and nothing breaks.
    press("maybe");
    assert!(d
        .stderr
        .wait_for(0, Duration::from_secs(20), |l| l
            .contains("unknown verdict"))
        .is_some());
    assert!(d.finish(Duration::from_secs(60)).success());

    let c = hearken::store::read(&state.join("home")).unwrap();
    let marks: Vec<(String, bool)> = c
        .marks
        .iter()
        .map(|(id, _, real)| (id.to_string(), *real))
        .collect();
    assert_eq!(marks, [(latest.clone(), false), (first_id.clone(), true)]);
    assert!(c.events.iter().any(|e| e.id.to_string() == latest));
    let _ = std::fs::remove_dir_all(&state);
}

/// The messages of `topic`, parsed.
fn json_on(msgs: &[(String, String)], topic: &str) -> Vec<Value> {
    msgs.iter()
        .filter(|(t, _)| t == topic)
        .map(|(_, p)| serde_json::from_str(p).unwrap())
        .collect()
}

#[test]
fn several_sources_are_home_assistant_devices_with_their_own_events() {
    let port = free_port();
    let _broker = start_broker(port, "sources");
    let sub = subscribe(port);
    let state = tmp("state-sources");
    let cfg = state.join("hearken.toml");
    let gun = audio("gunshots.wav");
    // Three microphones: two hear gunshots; the garage's listens for glass and
    // smoke alarms only, so the same shots raise nothing there.
    std::fs::write(
        &cfg,
        format!(
            "[node]\nid = \"testnode\"\nroom = \"House\"\n\n\
             [[sources]]\nname = \"kitchen\"\nsource = \"file:{g}\"\nroom = \"Kitchen\"\n\n\
             [[sources]]\nname = \"hall\"\nsource = \"file:{g}\"\ngain_db = -3.0\n\n\
             [[sources]]\nname = \"garage\"\nsource = \"file:{g}\"\ngroups = [\"glass\", \"smoke_alarm\"]\n",
            g = gun.display()
        ),
    )
    .unwrap();
    let mut c = Command::new(env!("CARGO_BIN_EXE_hearken"));
    c.env("HEARKEN_MODELS", models_dir())
        .args(["run", "--fast", "--http", "", "--config"])
        .arg(&cfg)
        .args(["--mqtt", &format!("mqtt://127.0.0.1:{port}")])
        .arg("--state-dir")
        .arg(state.join("st"));
    run_ok(c);
    let msgs = collect(sub);
    let topics: Vec<&str> = msgs.iter().map(|(t, _)| t.as_str()).collect();

    // Each source's own events, naming it and its room; none on the node's topic.
    for (source, room) in [("kitchen", "Kitchen"), ("hall", "House")] {
        let ev = json_on(&msgs, &format!("hearken/testnode/{source}/event/gunshot"));
        assert_eq!(ev.len(), 2, "{source}: {ev:#?}");
        assert_eq!(ev[0]["id"], ev[1]["id"]);
        for e in &ev {
            assert_eq!(e["source"], source);
            assert_eq!(e["room"], room);
        }
        let states: Vec<&str> = msgs
            .iter()
            .filter(|(t, _)| *t == format!("hearken/testnode/{source}/gunshot/state"))
            .map(|(_, p)| p.as_str())
            .collect();
        assert_eq!(states, vec!["OFF", "ON", "OFF"], "{source}");
        assert!(
            msgs.iter()
                .any(|(t, p)| *t == format!("hearken/testnode/{source}/status") && p == "online"),
            "{source} availability: {topics:?}"
        );
    }
    assert!(
        !topics
            .iter()
            .any(|t| t.starts_with("hearken/testnode/garage/event/")
                || t.starts_with("hearken/testnode/event/")),
        "{topics:?}"
    );

    // Discovery: one device per source, via the node's device.
    let config = |t: &str| -> Value {
        serde_json::from_str(
            &msgs
                .iter()
                .find(|(x, _)| x == t)
                .unwrap_or_else(|| panic!("no {t}: {topics:?}"))
                .1,
        )
        .unwrap()
    };
    let kitchen = config("homeassistant/binary_sensor/testnode/kitchen--gunshot/config");
    assert_eq!(
        kitchen["device"]["identifiers"][0],
        "hearken_testnode_kitchen"
    );
    assert_eq!(kitchen["device"]["via_device"], "hearken_testnode");
    assert_eq!(kitchen["device"]["suggested_area"], "Kitchen");
    assert_eq!(
        kitchen["state_topic"],
        "hearken/testnode/kitchen/gunshot/state"
    );
    assert_eq!(kitchen["availability_mode"], "all");
    let hall = config("homeassistant/sensor/testnode/hall--loudness/config");
    assert_eq!(hall["device"]["identifiers"][0], "hearken_testnode_hall");
    assert_eq!(hall["state_topic"], "hearken/testnode/hall/top");
    let button = config("homeassistant/button/testnode/kitchen--glass/config");
    assert_eq!(
        button["command_topic"],
        "hearken/testnode/kitchen/glass/feedback"
    );
    config("homeassistant/binary_sensor/testnode/garage--glass/config");
    assert!(
        !topics.contains(&"homeassistant/binary_sensor/testnode/garage--gunshot/config"),
        "the garage does not watch gunshots"
    );
    let problem = config("homeassistant/binary_sensor/testnode/node-problem/config");
    assert_eq!(problem["device"]["identifiers"][0], "hearken_testnode");
    assert!(
        !topics.contains(&"homeassistant/binary_sensor/testnode/gunshot/config"),
        "no node-level group entities with [[sources]]"
    );

    // Every config passes Home Assistant's own discovery schemas: 10 groups × 3
    // entities + 2 sensors for two sources, 2 × 3 + 2 for the garage, and the
    // node's problem sensor.
    assert_eq!(
        assert_ha_accepts(&msgs, &state),
        2 * 32 + 8 + 1,
        "{topics:?}"
    );
    let _ = std::fs::remove_dir_all(&state);
}
