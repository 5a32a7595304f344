//! The local HTTP API against `hearken run` on real recordings: IBM MAX's and
//! SIFIS-Home's curl lines, the live routes, Prometheus metrics (checked by
//! promtool), evidence clips, bad requests and the token.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use common::{audio, free_port, models_dir, spawn_on_stdin, succeeds};
use hearken::eval::run::write_wav;
use serde_json::Value;

fn hearken() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hearken"));
    c.env("HEARKEN_MODELS", models_dir());
    c
}

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hearken-http-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs curl with `args` (plus `-s` and the status code at the end): (status, body).
fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .arg("-s")
        .args(["-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl is installed (tools/test.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn get(port: u16, path: &str) -> (u16, String) {
    curl(&[&format!("http://127.0.0.1:{port}{path}")])
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

fn wait_until<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_healthy(port: u16, child: &mut Child) {
    wait_until("the HTTP server answers /healthz", 60, || {
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            if let Some(e) = child.stderr.as_mut() {
                let _ = std::io::Read::read_to_string(e, &mut err);
            }
            panic!("hearken exited ({status}) before serving: {err}");
        }
        (get(port, "/healthz") == (200, "ok\n".into())).then_some(())
    });
}

/// Mono s16le bytes of `samples`.
fn s16le(samples: &[f32]) -> Vec<u8> {
    samples
        .iter()
        .flat_map(|v| ((v.clamp(-1.0, 1.0) * 32767.0) as i16).to_le_bytes())
        .collect()
}

/// A recording decoded to mono, with its rate.
fn mono(path: &Path) -> (u32, Vec<f32>) {
    let mut dec = hearken::audio::FileDecoder::open(path).unwrap();
    let rate = dec.info().sample_rate;
    let mut out = Vec::new();
    while dec.next_chunk(&mut out).unwrap() {}
    (rate, out)
}

fn resample(samples: &[f32], from: u32, to: u32) -> Vec<f32> {
    let mut rs = hearken::audio::StreamResampler::new(from, to).unwrap();
    let mut out = Vec::new();
    rs.push(samples, &mut out);
    rs.finish(&mut out);
    out
}

/// The daemon on piped stdin (mono at `rate`), serving HTTP on a free port.
struct Daemon {
    child: Child,
    stdin: Option<ChildStdin>,
    port: u16,
    state: PathBuf,
}

impl Daemon {
    fn start(tag: &str, config: &str, rate: u32) -> Daemon {
        Daemon::start_on(tag, config, rate, Some(free_port()))
    }

    /// `port` None: no `--http`, so the daemon listens where the configuration
    /// says (the default, 8765).
    fn start_on(tag: &str, config: &str, rate: u32, port: Option<u16>) -> Daemon {
        let dir = tempdir(tag);
        let cfg = dir.join("hearken.toml");
        std::fs::write(&cfg, config).unwrap();
        let state = dir.join("state");
        let mut cmd = hearken();
        cmd.args(["run", "--print-events", "--config"])
            .arg(&cfg)
            .arg("--state-dir")
            .arg(&state);
        if let Some(p) = port {
            cmd.args(["--http", &format!("127.0.0.1:{p}")]);
        }
        let port = port.unwrap_or(8765);
        let (mut child, stdin) = spawn_on_stdin(&mut cmd, rate);
        wait_healthy(port, &mut child);
        Daemon {
            child,
            stdin: Some(stdin),
            port,
            state,
        }
    }

    fn feed(&mut self, samples: &[f32]) {
        self.stdin
            .as_mut()
            .unwrap()
            .write_all(&s16le(samples))
            .unwrap();
    }

    /// Closes stdin and waits for a clean exit; returns stderr.
    fn finish(mut self) -> String {
        drop(self.stdin.take());
        let out = self.child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "hearken failed: {err}");
        assert!(!err.contains("panicked"), "{err}");
        if let Some(dir) = self.state.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
        err
    }
}

/// MAX's shape: exactly `status` and `predictions`, five of `{label_id, label,
/// probability}` in falling order.
fn assert_max_shape(v: &Value, extra: &[&str]) {
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
    let mut want = vec!["predictions", "status"];
    want.extend_from_slice(extra);
    want.sort();
    assert_eq!(keys, want, "{v}");
    assert_eq!(v["status"], "ok");
    let p = v["predictions"].as_array().unwrap();
    assert_eq!(p.len(), 5, "{v}");
    for item in p {
        let mut k: Vec<&str> = item
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        k.sort();
        assert_eq!(k, ["label", "label_id", "probability"]);
    }
    let probs: Vec<f64> = p
        .iter()
        .map(|i| i["probability"].as_f64().unwrap())
        .collect();
    assert!(probs.windows(2).all(|w| w[0] >= w[1]), "{probs:?}");
}

const GUN_LABELS: [&str; 4] = ["Gunshot, gunfire", "Machine gun", "Cap gun", "Fusillade"];

fn has_gun_label(v: &Value) -> bool {
    v["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| GUN_LABELS.contains(&p["label"].as_str().unwrap()))
}

#[test]
fn max_and_sifis_curl_lines_and_the_live_routes_work_against_hearken_run() {
    let (rate, gun) = mono(&audio("gunshots.wav"));
    // On the default address when it is free (nothing else here listens there), so
    // the curl lines below run exactly as docs/http.md and the issue write them.
    let default_free = std::net::TcpListener::bind("127.0.0.1:8765").is_ok();
    let mut d = Daemon::start_on(
        "api",
        "[privacy]\nevidence_clips = true\n[http]\nmax_upload_mb = 2\n",
        rate,
        (!default_free).then(free_port),
    );
    let port = d.port;
    let base = format!("http://127.0.0.1:{port}");

    // Live updates, read by a browser-like client from the start.
    let mut sse = Command::new("curl")
        .args(["-sN", "--max-time", "120", &format!("{base}/events/stream")])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = BufReader::new(sse.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in reader.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(300));

    // A second of quiet, the gunshots, then enough quiet for the clip to be cut.
    d.feed(&vec![0.0; rate as usize]);
    d.feed(&gun);
    d.feed(&vec![0.0; 8 * rate as usize]);

    let mut kinds = Vec::new();
    let event = wait_until("a gunshot event on /events/stream", 60, || {
        while let Ok(line) = rx.try_recv() {
            if let Some(k) = line.strip_prefix("event: ") {
                kinds.push(k.to_string());
            }
            if let Some(data) = line.strip_prefix("data: ") {
                let v = json(data);
                if kinds.last().map(String::as_str) == Some("event") {
                    return Some(v);
                }
            }
        }
        None
    });
    assert!(kinds.contains(&"status".to_string()), "{kinds:?}");
    assert_eq!(event["group"], "gunshot");
    assert_eq!(event["state"], "start");
    let id = event["id"].as_str().unwrap().to_string();
    let _ = sse.kill();
    let _ = sse.wait();

    // /events: the gunshot, newest first, with its clip once cut.
    let clip = wait_until("the event's clip on /events", 60, || {
        let (code, body) = get(port, "/events?limit=5");
        assert_eq!(code, 200);
        let list = json(&body);
        let e = list
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == id.as_str())
            .cloned()?;
        e["clip"].as_str().map(str::to_string)
    });
    assert!(clip.ends_with(".flac"), "{clip}");
    assert!(clip.contains("-gunshot-"), "{clip}");
    let saved = d.state.join("clips").join(&clip);
    let (clip_rate, clip_audio) = mono(&saved);
    assert_eq!(clip_rate, 32_000, "the model's rate");
    let secs = clip_audio.len() as f64 / clip_rate as f64;
    assert!((6.0..=10.5).contains(&secs), "{secs} s");
    // Audio only to a client with the token: there is none here.
    assert_eq!(get(port, &format!("/clips/{clip}")).0, 403);
    let (code, body) = get(port, "/events?limit=1");
    assert_eq!(code, 200);
    assert_eq!(json(&body).as_array().unwrap().len(), 1);

    // /status
    let (code, body) = get(port, "/status");
    assert_eq!(code, 200);
    let s = json(&body);
    assert!(s["source"].as_str().unwrap().contains("stdin"), "{s}");
    assert_eq!(s["broker"], "off");
    assert!(s["uptime_s"].as_f64().unwrap() > 0.0);
    assert!(s["dbfs"].as_f64().is_some());
    assert!(s["events"].as_u64().unwrap() >= 1);
    let groups = s["groups"].as_array().unwrap();
    assert!(groups.iter().any(|g| g["group"] == "gunshot"), "{s}");

    // /metrics: Prometheus' own checker accepts it.
    let (code, metrics) = get(port, "/metrics");
    assert_eq!(code, 200);
    assert!(
        metrics.contains("hearken_events_total{group=\"gunshot\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("hearken_clips_saved_total 1"), "{metrics}");
    assert!(metrics.contains("# TYPE hearken_inference_seconds histogram"));
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; tools/test.sh installs it)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    // MAX's curl line, verbatim (from a folder with the shared assets at ../shared),
    // but for the port when 8765 was taken.
    let here = d.state.parent().unwrap().join("cwd");
    std::fs::create_dir_all(&here).unwrap();
    let _ = std::os::unix::fs::symlink(
        common::shared().canonicalize().unwrap(),
        here.parent().unwrap().join("shared"),
    );
    let line = format!(
        "curl -F \"audio=@../shared/audio/gunshots.wav\" -XPOST http://127.0.0.1:{port}/model/predict"
    );
    let out = Command::new("sh")
        .args(["-c", &line])
        .current_dir(&here)
        .output()
        .unwrap();
    let body = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{line}: {body}");
    let v = json(&body);
    assert_max_shape(&v, &[]);
    assert_eq!(v["predictions"][0]["label"], "Gunshot, gunfire", "{v}");
    assert_eq!(v["predictions"][0]["label_id"], "/m/032s66");
    let gunshots = format!("audio=@{}", audio("gunshots.wav").display());
    let predict = format!("{base}/model/predict");

    // start_time as MAX has it: past the shots, no gunshot on top.
    let (code, body) = curl(&["-F", &gunshots, "-F", "start_time=9.5", "-XPOST", &predict]);
    assert_eq!(code, 200, "{body}");
    assert_ne!(json(&body)["predictions"][0]["label"], "Gunshot, gunfire");

    // SIFIS-Home's routes (both spellings of scramble) in the same shape.
    for method in ["scrample", "scramble"] {
        let url = format!("{base}/model/predict/anonymized_audio/{method}/alice/user/req-1");
        let (code, body) = curl(&["-F", &gunshots, "-XPOST", &url]);
        assert_eq!(code, 200, "{body}");
        let v = json(&body);
        assert_max_shape(&v, &["anonymization"]);
        assert!(has_gun_label(&v), "{v}");
        let a = &v["anonymization"];
        assert_eq!(a["method"], "scramble");
        assert_eq!(a["requested"], method);
        assert_eq!(a["requestor_id"], "alice");
        assert_eq!(a["requestor_type"], "user");
        assert_eq!(a["request_id"], "req-1");
        assert_eq!(a["settings"]["block_s"], 0.5);
    }
    // dp_noise on a stereo file: noise is added to each channel before the mix.
    let dir = d.state.parent().unwrap().to_path_buf();
    let stereo = dir.join("stereo.wav");
    write_wav(&stereo, &gun, rate, 2).unwrap();
    let url = format!("{base}/model/predict/anonymized_audio/dp_noise/hub-7/service/42");
    let (code, body) = curl(&[
        "-F",
        &format!("audio=@{}", stereo.display()),
        "-XPOST",
        &url,
    ]);
    assert_eq!(code, 200, "{body}");
    let v = json(&body);
    assert_max_shape(&v, &["anonymization"]);
    assert!(has_gun_label(&v), "{v}");
    assert_eq!(v["anonymization"]["method"], "dp_noise");
    assert_eq!(v["anonymization"]["request_id"], "42");

    // Bad requests: 4xx with a reason, never a panic.
    let garbage = dir.join("garbage.wav");
    std::fs::write(&garbage, b"RIFF\x10\x00\x00\x00WAVEjunkjunkjunk").unwrap();
    let empty = dir.join("empty.wav");
    std::fs::write(&empty, b"").unwrap();
    let huge = dir.join("huge.wav");
    std::fs::write(&huge, vec![0u8; 3_000_000]).unwrap();
    let at = |p: &Path| format!("audio=@{}", p.display());
    let cases: Vec<(Vec<String>, u16, &str)> = vec![
        (vec!["-XPOST".into(), predict.clone()], 400, "multipart"),
        (
            vec![
                "-XPOST".into(),
                "-H".into(),
                "Content-Type: multipart/form-data; boundary=XYZ".into(),
                "--data-binary".into(),
                "--XYZ\r\nContent-Disposition: form-data; name=\"audio\"; filename=\"a.wav\"\r\n\r\nRIFF".into(),
                predict.clone(),
            ],
            400,
            "multipart",
        ),
        (
            vec!["-F".into(), "other=@/dev/null".into(), "-XPOST".into(), predict.clone()],
            400,
            "no field named audio",
        ),
        (vec!["-F".into(), at(&garbage), "-XPOST".into(), predict.clone()], 400, "garbage.wav"),
        (vec!["-F".into(), at(&empty), "-XPOST".into(), predict.clone()], 400, "empty"),
        (vec!["-F".into(), at(&huge), "-XPOST".into(), predict.clone()], 413, "limit"),
        (
            vec!["-F".into(), gunshots.clone(), "-F".into(), "start_time=-3".into(), "-XPOST".into(), predict.clone()],
            400,
            "start_time",
        ),
        (
            vec!["-F".into(), gunshots.clone(), "-F".into(), "start_time=60".into(), "-XPOST".into(), predict.clone()],
            400,
            "past the end",
        ),
        (
            vec!["-F".into(), gunshots.clone(), "-XPOST".into(), format!("{base}/model/predict/anonymized_audio/blur/a/b/c")],
            404,
            "unknown anonymization method",
        ),
        (vec![format!("{base}/model/predict")], 405, "not allowed"),
        (vec![format!("{base}/nothing/here")], 404, "no route"),
        (vec![format!("{base}/events?limit=lots")], 400, "limit"),
        (vec![format!("{base}/clips/..%2f..%2fetc%2fpasswd")], 403, "authenticated"),
    ];
    for (args, want, says) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, body) = curl(&args);
        assert_eq!(code, want, "{args:?}: {body}");
        assert!(body.contains(says), "{args:?}: {body}");
        assert_eq!(json(&body)["status"], "error");
    }
    assert_eq!(get(port, "/healthz"), (200, "ok\n".into()), "still serving");
    // The page itself.
    let (code, page) = get(port, "/");
    assert_eq!(code, 200);
    assert!(page.contains("<title>hearken</title>"));

    let err = d.finish();
    assert!(
        err.contains("HTTP API and page on http://127.0.0.1:"),
        "{err}"
    );
}

#[test]
fn a_clip_is_saved_for_an_alarm_and_suppressed_for_the_same_alarm_over_speech() {
    let dir = tempdir("clips");
    let alarm_path = common::shared()
        .join("eval-dev/clips/alarm_beep__tinyalert__alarm.6gnkde9a.ingestion-7f474ccdc-jxr84.wav");
    // A smoke alarm keeps beeping: a second of quiet, then the 2 s recording four
    // times over.
    let (rate, beeps) = mono(&alarm_path);
    let mut alarm = vec![0.0f32; rate as usize];
    for _ in 0..4 {
        alarm.extend_from_slice(&beeps);
    }
    let (srate, speech) = mono(&audio("speech_sample1.wav"));
    let speech = resample(&speech, srate, rate);
    let rms = |x: &[f32]| (x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32).sqrt();
    let gain = rms(&beeps) / rms(&speech);
    let mut mixed: Vec<f32> = alarm
        .iter()
        .enumerate()
        .map(|(i, a)| a + gain * speech[i % speech.len()])
        .collect();
    let peak = mixed.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    mixed.iter_mut().for_each(|v| *v *= 0.9 / peak);
    let plain = dir.join("alarm.wav");
    let over_speech = dir.join("alarm-over-speech.wav");
    write_wav(&plain, &alarm, rate, 1).unwrap();
    write_wav(&over_speech, &mixed, rate, 1).unwrap();
    let cfg = dir.join("hearken.toml");
    std::fs::write(
        &cfg,
        "[privacy]\nevidence_clips = true\n[http]\nlisten = \"\"\n",
    )
    .unwrap();

    let run = |file: &Path, state: &Path| {
        let out = succeeds(
            hearken()
                .args(["run", "--fast", "--print-events", "--config"])
                .arg(&cfg)
                .arg("--state-dir")
                .arg(state)
                .arg("--source")
                .arg(format!("file:{}", file.display())),
            "hearken run",
        );
        let events: Vec<Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(json)
            .collect();
        let clips: Vec<PathBuf> = std::fs::read_dir(state.join("clips"))
            .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        (
            events,
            clips,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let alarm_found = |events: &[Value]| {
        events
            .iter()
            .any(|e| e["group"] == "smoke_alarm" && e["state"] == "start")
    };
    let (events, clips, log) = run(&plain, &dir.join("state-plain"));
    assert!(alarm_found(&events), "{events:?}");
    assert_eq!(clips.len(), 1, "{clips:?}\n{log}");
    assert!(clips[0].to_string_lossy().contains("-smoke_alarm-"));
    let (_, audio) = mono(&clips[0]);
    assert!(audio.len() > 32_000 * 5, "{} samples", audio.len());
    assert!(log.contains("evidence clip saved"), "{log}");

    let (events, clips, log) = run(&over_speech, &dir.join("state-speech"));
    assert!(
        alarm_found(&events),
        "the alarm is still found over speech: {events:?}"
    );
    assert!(clips.is_empty(), "no clip where speech is heard: {clips:?}");
    assert!(log.contains("not saved: speech heard"), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_token_guards_every_route_but_healthz_and_other_addresses_need_one() {
    let mut d = Daemon::start(
        "token",
        "[http]\ntoken = \"s3cret-token\"\n[learning]\nstore = false\n",
        16_000,
    );
    let port = d.port;
    d.feed(&vec![0.0; 16_000]);
    let base = format!("http://127.0.0.1:{port}");
    let (code, body) = get(port, "/status");
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("Bearer"), "{body}");
    assert_eq!(
        curl(&[
            "-H",
            "Authorization: Bearer wrong",
            &format!("{base}/status")
        ])
        .0,
        401
    );
    let (code, body) = curl(&[
        "-H",
        "Authorization: Bearer s3cret-token",
        &format!("{base}/status"),
    ]);
    assert_eq!(code, 200, "{body}");
    assert_eq!(get(port, "/status?access_token=s3cret-token").0, 200);
    assert_eq!(get(port, "/healthz").0, 200, "health checks need no token");
    // With the token, a clip that does not exist is simply not found.
    let (code, _) = curl(&[
        "-H",
        "Authorization: Bearer s3cret-token",
        &format!("{base}/clips/none.flac"),
    ]);
    assert_eq!(code, 404);
    d.finish();

    // Listening beyond loopback without a token: refused by check-config and run.
    let dir = tempdir("open");
    let cfg = dir.join("open.toml");
    std::fs::write(&cfg, "[http]\nlisten = \"0.0.0.0:8765\"\n").unwrap();
    let out = hearken().arg("check-config").arg(&cfg).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("http.listen") && err.contains("token"),
        "{err}"
    );
    let out = hearken()
        .args(["run", "--source", "stdin:16000:1", "--http", "0.0.0.0:0"])
        .arg("--state-dir")
        .arg(dir.join("state"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--http") && err.contains("token"), "{err}");
}

/// A DevTools-protocol session with one page of headless Chromium.
struct Browser {
    child: Child,
    ws: tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>,
    next_id: u64,
}

impl Browser {
    fn start(dir: &Path) -> Browser {
        let profile = dir.join("chromium-profile");
        let child = Command::new("chromium")
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--remote-debugging-port=0",
                "--window-size=420,900",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromium (Debian's package; tools/test.sh installs it)");
        let port: u16 = wait_until("Chromium's DevTools port", 60, || {
            let text = std::fs::read_to_string(profile.join("DevToolsActivePort")).ok()?;
            text.lines().next()?.trim().parse().ok()
        });
        let url = wait_until("Chromium's page target", 30, || {
            let (code, body) = curl(&[&format!("http://127.0.0.1:{port}/json/list")]);
            if code != 200 {
                return None;
            }
            let targets: Value = serde_json::from_str(&body).ok()?;
            targets
                .as_array()?
                .iter()
                .find(|t| t["type"] == "page")
                .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(str::to_string))
        });
        let (ws, _) = tungstenite::connect(url.as_str()).expect("DevTools websocket");
        Browser {
            child,
            ws,
            next_id: 1,
        }
    }

    /// Sends a DevTools command and returns its result.
    fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let msg = serde_json::json!({ "id": id, "method": method, "params": params });
        self.ws
            .send(tungstenite::Message::Text(msg.to_string()))
            .unwrap();
        loop {
            let m = self.ws.read().expect("DevTools message");
            let tungstenite::Message::Text(text) = m else {
                continue;
            };
            let v: Value = serde_json::from_str(&text).unwrap();
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// Evaluates `expr` (returning a string) in the page.
    fn eval(&mut self, expr: &str) -> String {
        let r = self.call(
            "Runtime.evaluate",
            serde_json::json!({ "expression": expr, "returnByValue": true }),
        );
        r["result"]["value"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_page_shows_the_level_moving_and_an_event_appearing_in_headless_chromium() {
    let dir = tempdir("page");
    // Four seconds of rain, then the gunshots, then rain, played in real time from a
    // file.
    let (rate, gun) = mono(&audio("gunshots.wav"));
    let (rrate, rain) = mono(&audio("rain.wav"));
    let mut clip: Vec<f32> = resample(&rain, rrate, rate)
        .into_iter()
        .take(4 * rate as usize)
        .collect();
    clip.extend_from_slice(&gun);
    // More rain, so the daemon still runs while the page classifies a file.
    let more: Vec<f32> = clip[..4 * rate as usize].to_vec();
    for _ in 0..4 {
        clip.extend_from_slice(&more);
    }
    let file = dir.join("rain-then-gunshots.wav");
    write_wav(&file, &clip, rate, 1).unwrap();
    let port = free_port();
    let mut child = hearken()
        .args(["run", "--source"])
        .arg(format!("file:{}", file.display()))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(["--http", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_healthy(port, &mut child);

    let mut b = Browser::start(&dir);
    b.call(
        "Page.navigate",
        serde_json::json!({ "url": format!("http://127.0.0.1:{port}/") }),
    );
    let probe = "JSON.stringify({updates: document.getElementById('level').dataset.updates, \
                 level: document.getElementById('level').textContent, \
                 groups: document.getElementById('groups').textContent, \
                 events: [...document.querySelectorAll('#events li')].map(li => li.textContent)})";
    let mut levels = std::collections::BTreeSet::new();
    let seen = wait_until(
        "the page shows a moving level and the gunshot event",
        30,
        || {
            let v: Value = serde_json::from_str(&b.eval(probe)).ok()?;
            if let Some(l) = v["level"].as_str() {
                levels.insert(l.to_string());
            }
            let updates: u64 = v["updates"].as_str()?.parse().ok()?;
            let gunshot = v["events"]
                .as_array()?
                .iter()
                .any(|e| e.as_str().is_some_and(|t| t.starts_with("gunshot")));
            (updates >= 3 && levels.len() >= 3 && gunshot).then_some(v)
        },
    );
    assert!(
        seen["groups"].as_str().unwrap().contains("gunshot"),
        "{seen}"
    );
    // The file drop: a file given to the page's file input is classified through
    // /model/predict and its labels shown.
    let root = b.call("DOM.getDocument", serde_json::json!({}))["root"]["nodeId"].clone();
    let input = b.call(
        "DOM.querySelector",
        serde_json::json!({ "nodeId": root, "selector": "#file" }),
    )["nodeId"]
        .clone();
    b.call(
        "DOM.setFileInputFiles",
        // A plain absolute path: Chromium cannot read a file named through `..`.
        serde_json::json!({
            "nodeId": input,
            "files": [audio("gunshots.wav").canonicalize().unwrap()]
        }),
    );

    let shown = wait_until("the page shows the file's labels", 30, || {
        let t = b.eval("document.getElementById('predictions').textContent");
        t.contains("Gunshot, gunfire").then_some(t)
    });
    assert!(!shown.contains("classifying"), "{shown}");
    // A picture of it, for the record (target/, never committed).
    let shot = b.call(
        "Page.captureScreenshot",
        serde_json::json!({ "format": "png", "captureBeyondViewport": true }),
    );
    let png = base64_decode(shot["data"].as_str().unwrap());
    assert_eq!(&png[1..4], b"PNG");
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("http-page.png");
    std::fs::write(&out, &png).unwrap();
    drop(b);
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Standard base64 (DevTools' screenshots), without a dependency for one call.
fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    } as u32;
    let bytes: Vec<u8> = s.bytes().filter(|&c| c != b'=' && c != b'\n').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= val(c) << (18 - 6 * i);
        }
        let n = chunk.len() * 6 / 8;
        out.extend_from_slice(&acc.to_be_bytes()[1..1 + n]);
    }
    out
}
