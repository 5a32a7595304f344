//! The home store: what the model made of this home's sound, kept so that
//! `hearken adapt` can teach the detectors the household's own false alarms.
//!
//! It never holds audio. For every analysis window the daemon counts the window,
//! and for the windows that matter to a detector — those where some group's score
//! (before any home correction) reaches that group's `off` threshold — it keeps the
//! model's pooled embedding and the log-odds of its AudioSet class scores (both
//! quantised to 8 bits), each group's score, the time and the level. A pooled
//! embedding of a 2 s window is a summary a few hundred numbers
//! long: speech cannot be played back from it. Windows under every `off` threshold
//! can never start or hold an event, and adaptation only ever lowers scores and
//! raises thresholds, so they cannot become false alarms later either: they are
//! tallied (count, seconds, each group's highest score) once a minute. Events and
//! the household's "false alarm" / "that was real" verdicts are kept too.
//!
//! # On disk
//!
//! `<state dir>/home/` holds segment files `<unix ms>.hks`, oldest first by name.
//! Each starts with the 8-byte magic `HKHOME01`, followed by records framed as in
//! the outbox (`len: u32 LE`, `crc: u32 LE` CRC-32 of the body, body). The body's
//! first byte is its kind:
//!
//! ```text
//! 1 header  dim u32 | hop_s f32 | model (u16 len, UTF-8) | groups u16 | each: u8 len, UTF-8
//! 2 window  wall_ms u64 | dbfs f32 | n u16 | n × (base f32, score f32, flags u8: 1 active)
//!           | dim u32 | scale f32 | dim × i8   (embedding = i8 × scale)
//!           | n u32 | scale f32 | n × i8       (class log-odds, likewise)
//! 3 tally   from_ms u64 | to_ms u64 | windows u32 | seconds f32 | n u16 | n × max base f32
//! 4 start   id [16] | wall_ms u64 | group (u8 len, UTF-8)
//! 5 end     id [16] | wall_ms u64
//! 6 mark    id [16] | wall_ms u64 | real u8    (0: a false alarm, 1: a real event)
//! ```
//!
//! A window's groups are those of the last header before it. Every process writes
//! its own segments (a new one at start, then whenever one reaches a sixteenth of
//! the size bound or a day of age), appending whole records and syncing once a
//! minute; it never rewrites a record. Readers trust a record only when its frame
//! and CRC check out: after a bad one they scan forward for the next good one (a
//! corrupt middle is skipped and counted, a torn tail is ignored), and a file that
//! does not start with the magic is reported and left out. After each sync the
//! oldest segments go until the folder is within the size bound, and any older
//! than the age bound go too.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use crossbeam_channel::{Receiver, RecvTimeoutError};
use uuid::Uuid;

use crate::publish::outbox::crc32;
use serde::{Deserialize, Serialize};

/// Folder of the store inside the state directory.
pub const DIR: &str = "home";
const MAGIC: &[u8; 8] = b"HKHOME01";
const MAX_RECORD_BYTES: usize = 1 << 20;
/// How often the writer syncs, tallies and applies the bounds (window time).
const TALLY_MS: u64 = 60_000;

/// How large and how old the store may grow.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Bytes of all segments together.
    pub max_bytes: u64,
    /// Age after which a segment is deleted.
    pub max_age: Duration,
}

/// One group's view of a window (what the detector reports for the store).
pub use crate::detect::GroupView;

/// A record of the store.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// The groups and model the following windows belong to.
    Header {
        /// Group names, in the order of each window's views.
        groups: Vec<String>,
        /// Embedding size.
        embedding_dim: u32,
        /// Seconds between windows.
        hop_s: f32,
        /// Model name.
        model: String,
    },
    /// A window that reached some group's `off` threshold.
    Window {
        /// Wall-clock time of the window end, ms since the Unix epoch.
        wall_ms: u64,
        /// Level, dBFS.
        dbfs: f32,
        /// One view per group of the header.
        views: Vec<GroupView>,
        /// The pooled embedding (dequantised when read).
        embedding: Vec<f32>,
        /// Log-odds of the model's class scores, max-pooled (dequantised).
        classes: Vec<f32>,
    },
    /// Windows counted between two times.
    Tally {
        /// First window's time, ms.
        from_ms: u64,
        /// Last window's time, ms.
        to_ms: u64,
        /// Windows counted.
        windows: u32,
        /// Seconds of audio they cover (windows × hop).
        seconds: f32,
        /// Each group's highest base score among them.
        max_base: Vec<f32>,
    },
    /// An event started.
    EventStart {
        /// Event id (as published).
        id: Uuid,
        /// When it started, ms.
        wall_ms: u64,
        /// Its group.
        group: String,
    },
    /// An event ended.
    EventEnd {
        /// Event id.
        id: Uuid,
        /// When it ended, ms.
        wall_ms: u64,
    },
    /// The household's verdict on an event.
    Mark {
        /// Event id.
        id: Uuid,
        /// When it was given, ms.
        wall_ms: u64,
        /// `true`: the event was real; `false`: a false alarm.
        real: bool,
    },
}

fn put_str(b: &mut Vec<u8>, s: &str, wide: bool) {
    let s = &s.as_bytes()[..s.len().min(if wide { u16::MAX as usize } else { 255 })];
    if wide {
        b.extend_from_slice(&(s.len() as u16).to_le_bytes());
    } else {
        b.push(s.len() as u8);
    }
    b.extend_from_slice(s);
}

/// The record's body (kind byte first).
pub fn encode(r: &Record) -> Vec<u8> {
    let mut b = Vec::new();
    match r {
        Record::Header {
            groups,
            embedding_dim,
            hop_s,
            model,
        } => {
            b.push(1);
            b.extend_from_slice(&embedding_dim.to_le_bytes());
            b.extend_from_slice(&hop_s.to_le_bytes());
            put_str(&mut b, model, true);
            b.extend_from_slice(&(groups.len().min(u16::MAX as usize) as u16).to_le_bytes());
            for g in groups.iter().take(u16::MAX as usize) {
                put_str(&mut b, g, false);
            }
        }
        Record::Window {
            wall_ms,
            dbfs,
            views,
            embedding,
            classes,
        } => {
            b.push(2);
            b.extend_from_slice(&wall_ms.to_le_bytes());
            b.extend_from_slice(&dbfs.to_le_bytes());
            b.extend_from_slice(&(views.len() as u16).to_le_bytes());
            for v in views {
                b.extend_from_slice(&v.base.to_le_bytes());
                b.extend_from_slice(&v.score.to_le_bytes());
                b.push(v.active as u8);
            }
            for v in [embedding, classes] {
                let (scale, q) = quantise(v);
                b.extend_from_slice(&(q.len() as u32).to_le_bytes());
                b.extend_from_slice(&scale.to_le_bytes());
                b.extend(q.iter().map(|&v| v as u8));
            }
        }
        Record::Tally {
            from_ms,
            to_ms,
            windows,
            seconds,
            max_base,
        } => {
            b.push(3);
            b.extend_from_slice(&from_ms.to_le_bytes());
            b.extend_from_slice(&to_ms.to_le_bytes());
            b.extend_from_slice(&windows.to_le_bytes());
            b.extend_from_slice(&seconds.to_le_bytes());
            b.extend_from_slice(&(max_base.len() as u16).to_le_bytes());
            for m in max_base {
                b.extend_from_slice(&m.to_le_bytes());
            }
        }
        Record::EventStart { id, wall_ms, group } => {
            b.push(4);
            b.extend_from_slice(id.as_bytes());
            b.extend_from_slice(&wall_ms.to_le_bytes());
            put_str(&mut b, group, false);
        }
        Record::EventEnd { id, wall_ms } => {
            b.push(5);
            b.extend_from_slice(id.as_bytes());
            b.extend_from_slice(&wall_ms.to_le_bytes());
        }
        Record::Mark { id, wall_ms, real } => {
            b.push(6);
            b.extend_from_slice(id.as_bytes());
            b.extend_from_slice(&wall_ms.to_le_bytes());
            b.push(*real as u8);
        }
    }
    b
}

/// A cursor over a record body that fails (None) instead of reading past the end.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    }
    fn f32(&mut self) -> Option<f32> {
        self.u32().map(f32::from_bits)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    }
    fn id(&mut self) -> Option<Uuid> {
        self.take(16)
            .map(|b| Uuid::from_bytes(b.try_into().unwrap()))
    }
    fn str(&mut self, wide: bool) -> Option<String> {
        let n = if wide {
            self.u16()? as usize
        } else {
            self.u8()? as usize
        };
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
}

/// Parses a record body; `None` when it is malformed or has bytes left over.
pub fn decode(body: &[u8]) -> Option<Record> {
    let mut c = Cursor(body);
    let r = match c.u8()? {
        1 => {
            let embedding_dim = c.u32()?;
            let hop_s = c.f32()?;
            let model = c.str(true)?;
            let n = c.u16()? as usize;
            let groups = (0..n).map(|_| c.str(false)).collect::<Option<Vec<_>>>()?;
            Record::Header {
                groups,
                embedding_dim,
                hop_s,
                model,
            }
        }
        2 => {
            let wall_ms = c.u64()?;
            let dbfs = c.f32()?;
            let n = c.u16()? as usize;
            let views = (0..n)
                .map(|_| {
                    Some(GroupView {
                        base: c.f32()?,
                        score: c.f32()?,
                        active: c.u8()? & 1 == 1,
                    })
                })
                .collect::<Option<Vec<_>>>()?;
            let mut vector = || -> Option<Vec<f32>> {
                let n = c.u32()? as usize;
                let scale = c.f32()?;
                Some(c.take(n)?.iter().map(|&v| v as i8 as f32 * scale).collect())
            };
            let embedding = vector()?;
            let classes = vector()?;
            Record::Window {
                wall_ms,
                dbfs,
                views,
                embedding,
                classes,
            }
        }
        3 => {
            let from_ms = c.u64()?;
            let to_ms = c.u64()?;
            let windows = c.u32()?;
            let seconds = c.f32()?;
            let n = c.u16()? as usize;
            let max_base = (0..n).map(|_| c.f32()).collect::<Option<Vec<_>>>()?;
            Record::Tally {
                from_ms,
                to_ms,
                windows,
                seconds,
                max_base,
            }
        }
        4 => Record::EventStart {
            id: c.id()?,
            wall_ms: c.u64()?,
            group: c.str(false)?,
        },
        5 => Record::EventEnd {
            id: c.id()?,
            wall_ms: c.u64()?,
        },
        6 => Record::Mark {
            id: c.id()?,
            wall_ms: c.u64()?,
            real: c.u8()? == 1,
        },
        _ => return None,
    };
    c.0.is_empty().then_some(r)
}

fn frame(body: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32(body).to_le_bytes());
    out.extend_from_slice(body);
}

/// The record starting at `pos` and the position after it, if its frame and CRC
/// check out.
fn parse_at(data: &[u8], pos: usize) -> Option<(Record, usize)> {
    let header = data.get(pos..pos + 8)?;
    let len = u32::from_le_bytes(header[..4].try_into().unwrap()) as usize;
    if len == 0 || len > MAX_RECORD_BYTES {
        return None;
    }
    let body = data.get(pos + 8..pos + 8 + len)?;
    if crc32(body) != u32::from_le_bytes(header[4..].try_into().unwrap()) {
        return None;
    }
    Some((decode(body)?, pos + 8 + len))
}

/// A window as read back, with its groups named.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredWindow {
    /// Time of the window end, ms since the Unix epoch.
    pub wall_ms: u64,
    /// Level, dBFS.
    pub dbfs: f32,
    /// The groups of `views`, in order.
    pub groups: Arc<Vec<String>>,
    /// One per group.
    pub views: Vec<GroupView>,
    /// Pooled embedding.
    pub embedding: Vec<f32>,
    /// Log-odds of the model's class scores (max-pooled).
    pub classes: Vec<f32>,
}

impl StoredWindow {
    /// This window's view of `group`, if it was running.
    pub fn view(&self, group: &str) -> Option<&GroupView> {
        let i = self.groups.iter().position(|g| g == group)?;
        self.views.get(i)
    }
}

/// An event as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    /// Event id.
    pub id: Uuid,
    /// Group.
    pub group: String,
    /// Start, ms.
    pub start_ms: u64,
    /// End, ms (none: still open when the store was read, or cut by a crash).
    pub end_ms: Option<u64>,
}

/// Everything the store holds, with what was wrong with it.
#[derive(Debug, Clone, Default)]
pub struct Contents {
    /// Kept windows, oldest first.
    pub windows: Vec<StoredWindow>,
    /// Seconds of audio counted (every window, kept or not).
    pub observed_s: f64,
    /// Windows counted.
    pub counted: u64,
    /// Events, oldest first.
    pub events: Vec<StoredEvent>,
    /// Verdicts: event id, time, real.
    pub marks: Vec<(Uuid, u64, bool)>,
    /// Model named by the headers (the last one).
    pub model: Option<String>,
    /// Segment files read.
    pub files: usize,
    /// Their bytes.
    pub bytes: u64,
    /// Files left out, with why.
    pub damaged: Vec<(PathBuf, String)>,
    /// Corrupt regions skipped inside files.
    pub corrupt_regions: usize,
    /// Bytes of torn tails ignored.
    pub torn_tail_bytes: u64,
}

/// Segment files in `dir`, oldest first (by name).
fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(e) => e
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "hks"))
            .collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

/// Reads every segment in `dir` (a missing folder is an empty store).
pub fn read(dir: &Path) -> Result<Contents> {
    let mut out = Contents::default();
    match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => {
            return Err(anyhow::anyhow!(
                "cannot read the home store {}: {e}",
                dir.display()
            ))
        }
        Ok(m) if !m.is_dir() => {
            anyhow::bail!("the home store {} is not a folder", dir.display())
        }
        Ok(_) => {}
    }
    let mut open: std::collections::HashMap<Uuid, usize> = Default::default();
    for path in segments(dir) {
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(e) => {
                out.damaged.push((path, format!("cannot be read: {e}")));
                continue;
            }
        };
        if data.len() < MAGIC.len() || &data[..MAGIC.len()] != MAGIC {
            out.damaged
                .push((path, "does not start as a home-store segment".into()));
            continue;
        }
        out.files += 1;
        out.bytes += data.len() as u64;
        let mut groups: Arc<Vec<String>> = Arc::new(Vec::new());
        let mut pos = MAGIC.len();
        while pos < data.len() {
            let Some((r, next)) = parse_at(&data, pos) else {
                match (pos + 1..data.len()).find(|&p| parse_at(&data, p).is_some()) {
                    Some(p) => {
                        out.corrupt_regions += 1;
                        pos = p;
                        continue;
                    }
                    None => {
                        out.torn_tail_bytes += (data.len() - pos) as u64;
                        break;
                    }
                }
            };
            pos = next;
            match r {
                Record::Header {
                    groups: g, model, ..
                } => {
                    groups = Arc::new(g);
                    out.model = Some(model);
                }
                Record::Window {
                    wall_ms,
                    dbfs,
                    views,
                    embedding,
                    classes,
                } => {
                    if views.len() == groups.len() {
                        out.windows.push(StoredWindow {
                            wall_ms,
                            dbfs,
                            groups: groups.clone(),
                            views,
                            embedding,
                            classes,
                        });
                    }
                }
                Record::Tally {
                    windows, seconds, ..
                } => {
                    out.counted += windows as u64;
                    if seconds.is_finite() && seconds > 0.0 {
                        out.observed_s += seconds as f64;
                    }
                }
                Record::EventStart { id, wall_ms, group } => {
                    open.insert(id, out.events.len());
                    out.events.push(StoredEvent {
                        id,
                        group,
                        start_ms: wall_ms,
                        end_ms: None,
                    });
                }
                Record::EventEnd { id, wall_ms } => {
                    if let Some(i) = open.remove(&id) {
                        out.events[i].end_ms = Some(wall_ms);
                    }
                }
                Record::Mark { id, wall_ms, real } => out.marks.push((id, wall_ms, real)),
            }
        }
    }
    out.windows.sort_by_key(|w| w.wall_ms);
    out.events.sort_by_key(|e| e.start_ms);
    Ok(out)
}

/// The latest event of each group in the newest `files` segments of `dir`, so a
/// verdict on "the latest event" given after a restart still finds the event.
pub fn latest_events(dir: &Path, files: usize) -> HashMap<String, Uuid> {
    let mut latest: HashMap<String, (u64, Uuid)> = HashMap::new();
    for path in segments(dir).into_iter().rev().take(files) {
        let Ok(data) = std::fs::read(&path) else {
            continue;
        };
        if data.len() < MAGIC.len() || &data[..MAGIC.len()] != MAGIC {
            continue;
        }
        let mut pos = MAGIC.len();
        while let Some((r, next)) = parse_at(&data, pos) {
            pos = next;
            if let Record::EventStart { id, wall_ms, group } = r {
                let e = latest.entry(group).or_insert((wall_ms, id));
                if wall_ms >= e.0 {
                    *e = (wall_ms, id);
                }
            }
        }
    }
    latest.into_iter().map(|(g, (_, id))| (g, id)).collect()
}

/// Appends records to this process's segments and keeps the folder within its
/// bounds. Writes are buffered; [`Writer::flush`] writes (and, asked to, syncs).
pub struct Writer {
    dir: PathBuf,
    limits: Limits,
    file: Option<(File, PathBuf, u64, SystemTime)>,
    header: Option<Vec<u8>>,
    buf: Vec<u8>,
    problem: Option<String>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Writer {
    /// A writer for the store in `dir` (created if missing), applying `limits` at
    /// once.
    pub fn open(dir: &Path, limits: Limits) -> Result<Writer> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the home store {}", dir.display()))?;
        let mut w = Writer {
            dir: dir.to_path_buf(),
            limits,
            file: None,
            header: None,
            buf: Vec::new(),
            problem: None,
        };
        w.enforce_limits();
        Ok(w)
    }

    /// Why the last write failed, if it did (records are dropped until one works).
    pub fn problem(&self) -> Option<&str> {
        self.problem.as_deref()
    }

    /// Buffers `r`. A header starts a new segment with the next write when it
    /// differs from the current one, and is repeated at the head of every segment.
    pub fn push(&mut self, r: &Record) {
        let body = encode(r);
        if let Record::Header { .. } = r {
            if self.header.as_ref() != Some(&body) {
                self.header = Some(body);
                self.close_segment();
            }
            return;
        }
        frame(&body, &mut self.buf);
    }

    fn close_segment(&mut self) {
        if !self.buf.is_empty() {
            let _ = self.write_buffer();
        }
        self.file = None;
    }

    fn new_segment(&mut self) -> std::io::Result<()> {
        let mut ms = now_ms();
        let (mut f, path) = loop {
            let path = self.dir.join(format!("{ms:016}.hks"));
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(f) => break (f, path),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => ms += 1,
                Err(e) => return Err(e),
            }
        };
        let mut head = MAGIC.to_vec();
        if let Some(h) = &self.header {
            frame(h, &mut head);
        }
        f.write_all(&head)?;
        self.file = Some((f, path, head.len() as u64, SystemTime::now()));
        Ok(())
    }

    fn write_buffer(&mut self) -> std::io::Result<()> {
        let segment_max = (self.limits.max_bytes / 16).max(64 * 1024);
        let stale = |t: &SystemTime| t.elapsed().is_ok_and(|a| a > Duration::from_secs(86_400));
        if self
            .file
            .as_ref()
            .is_some_and(|(_, _, n, t)| *n >= segment_max || stale(t))
        {
            self.file = None;
        }
        if self.file.is_none() {
            self.new_segment()?;
        }
        let (f, _, n, _) = self.file.as_mut().expect("opened above");
        let r = f.write_all(&self.buf);
        match r {
            Ok(()) => {
                *n += self.buf.len() as u64;
                self.buf.clear();
                Ok(())
            }
            Err(e) => {
                // The segment may now end in a torn record: readers skip it, and
                // the next write goes to a fresh segment.
                self.file = None;
                self.buf.clear();
                Err(e)
            }
        }
    }

    /// Writes what is buffered; with `sync`, also syncs it and applies the
    /// limits. A failure (a full disk) drops the buffered records, is kept in
    /// [`Writer::problem`] and is returned once.
    pub fn flush(&mut self, sync: bool) -> Result<(), String> {
        let mut result = Ok(());
        if !self.buf.is_empty() {
            match self.write_buffer() {
                Ok(()) => self.problem = None,
                Err(e) => {
                    let m = format!(
                        "cannot write to the home store {}: {e}; its records are dropped until writing works again",
                        self.dir.display()
                    );
                    if self.problem.as_deref() != Some(m.as_str()) {
                        result = Err(m.clone());
                    }
                    self.problem = Some(m);
                }
            }
        }
        if sync {
            if let Some((f, ..)) = &self.file {
                let _ = f.sync_data();
            }
            self.enforce_limits();
        }
        result
    }

    /// Deletes segments older than the age bound, then the oldest until the
    /// folder is within the size bound (never the one being written).
    fn enforce_limits(&mut self) {
        let current = self.file.as_ref().map(|(_, p, ..)| p.clone());
        let mut segs: Vec<(PathBuf, u64, SystemTime)> = segments(&self.dir)
            .into_iter()
            .filter(|p| Some(p) != current.as_ref())
            .filter_map(|p| {
                let m = std::fs::metadata(&p).ok()?;
                Some((p, m.len(), m.modified().unwrap_or(UNIX_EPOCH)))
            })
            .collect();
        let mut total: u64 =
            segs.iter().map(|s| s.1).sum::<u64>() + self.file.as_ref().map_or(0, |(_, _, n, _)| *n);
        segs.retain(|(p, len, modified)| {
            let old = modified.elapsed().is_ok_and(|a| a > self.limits.max_age);
            if old && std::fs::remove_file(p).is_ok() {
                total -= len;
                return false;
            }
            true
        });
        for (p, len, _) in &segs {
            if total <= self.limits.max_bytes {
                break;
            }
            if std::fs::remove_file(p).is_ok() {
                total -= len;
            }
        }
    }
}

/// What the inference thread tells the store about.
#[derive(Debug, Clone)]
pub enum HomeMsg {
    /// The groups (and their order in later windows) changed: a
    /// [`Record::Header`].
    Groups(Record),
    /// One scored window, a [`Record::Window`]: counted, and kept when it carries
    /// an embedding (the sender leaves it out of windows that are not candidates,
    /// [`is_candidate`], and of those the gate skipped).
    Window(Record),
    /// An event of `source` started or ended ([`Record::EventStart`],
    /// [`Record::EventEnd`]).
    Event {
        /// The source that heard it.
        source: String,
        /// The record.
        record: Record,
    },
    /// A verdict on an event: the one with `id`, or without one the latest
    /// event of `group` (what a Home Assistant button per group sends).
    Mark {
        /// Event id.
        id: Option<Uuid>,
        /// Group, when no id is given.
        group: Option<String>,
        /// The source whose latest event of `group` is meant (`None`: any
        /// source's).
        source: Option<String>,
        /// When, ms.
        wall_ms: u64,
        /// Real or a false alarm.
        real: bool,
    },
}

pub use crate::detect::trained::log_odds;

/// The publisher's [`FeedbackSink`](crate::publish::feedback::FeedbackSink) for a
/// store fed by `tx`: each verdict becomes a [`HomeMsg::Mark`], stamped now. It
/// never waits: a verdict that finds the store's queue full is logged and dropped.
pub fn feedback_sink(
    tx: crossbeam_channel::Sender<HomeMsg>,
) -> crate::publish::feedback::FeedbackSink {
    std::sync::Arc::new(move |f: crate::publish::feedback::Feedback| {
        let msg = HomeMsg::Mark {
            id: f.event_id,
            group: Some(f.group.clone()),
            source: f.source.clone(),
            wall_ms: now_ms(),
            real: f.real,
        };
        if tx.try_send(msg).is_err() {
            tracing::warn!(
                group = %f.group,
                "a verdict on a {} event could not reach the home store (it is behind or stopped); not kept",
                f.group
            );
        }
    })
}

/// Whether a window is kept: some group's base score reaches its floor.
pub fn is_candidate(views: &[GroupView], floors: &[f32]) -> bool {
    views
        .iter()
        .zip(floors)
        .any(|(v, &f)| v.base > 0.0 && v.base >= f)
}

struct Tally {
    from_ms: u64,
    to_ms: u64,
    windows: u32,
    seconds: f64,
    max_base: Vec<f32>,
}

/// Runs the store: writes what arrives on `rx` until every sender is gone, then
/// syncs. Meant for a thread of its own.
pub fn run(mut w: Writer, rx: Receiver<HomeMsg>) {
    let mut hop_s = 0f32;
    let mut tally: Option<Tally> = None;
    let mut last_write = std::time::Instant::now();
    // Events of earlier runs, for verdicts on "the latest" given after a restart
    // (the store does not record sources: any source's latest), and this run's
    // latest of each source.
    let mut latest = latest_events(&w.dir, 3);
    let mut latest_of: HashMap<(String, String), Uuid> = HashMap::new();
    let report = |r: Result<(), String>| {
        if let Err(m) = r {
            tracing::warn!("{m}");
        }
    };
    let close_tally = |w: &mut Writer, t: &mut Option<Tally>| {
        if let Some(t) = t.take() {
            w.push(&Record::Tally {
                from_ms: t.from_ms,
                to_ms: t.to_ms,
                windows: t.windows,
                seconds: t.seconds as f32,
                max_base: t.max_base,
            });
        }
    };
    loop {
        let msg = match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(m) => Some(m),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        match msg {
            None => {}
            Some(HomeMsg::Groups(header)) => {
                close_tally(&mut w, &mut tally);
                if let Record::Header { hop_s: h, .. } = &header {
                    hop_s = *h;
                }
                w.push(&header);
            }
            Some(HomeMsg::Window(window)) => {
                let Record::Window {
                    wall_ms,
                    ref views,
                    ref embedding,
                    ..
                } = window
                else {
                    continue;
                };
                if tally
                    .as_ref()
                    .is_some_and(|t| wall_ms.saturating_sub(t.from_ms) >= TALLY_MS)
                {
                    close_tally(&mut w, &mut tally);
                    report(w.flush(true));
                }
                let t = tally.get_or_insert_with(|| Tally {
                    from_ms: wall_ms,
                    to_ms: wall_ms,
                    windows: 0,
                    seconds: 0.0,
                    max_base: vec![0.0; views.len()],
                });
                t.to_ms = wall_ms;
                t.windows += 1;
                t.seconds += hop_s as f64;
                for (m, v) in t.max_base.iter_mut().zip(views) {
                    *m = m.max(v.base);
                }
                if !embedding.is_empty() {
                    w.push(&window);
                }
            }
            Some(HomeMsg::Event { source, record }) => {
                if let Record::EventStart { id, group, .. } = &record {
                    latest.insert(group.clone(), *id);
                    latest_of.insert((source, group.clone()), *id);
                }
                w.push(&record);
            }
            Some(HomeMsg::Mark {
                id,
                group,
                source,
                wall_ms,
                real,
            }) => match id.or_else(|| {
                let g = group.as_ref()?;
                source
                    .as_ref()
                    .and_then(|s| latest_of.get(&(s.clone(), g.clone())).copied())
                    .or_else(|| latest.get(g).copied())
            }) {
                Some(id) => {
                    w.push(&Record::Mark { id, wall_ms, real });
                    report(w.flush(true));
                    let verdict = if real { "real" } else { "a false alarm" };
                    tracing::info!(
                        event_id = %id,
                        real,
                        "feedback: event {id} marked {verdict} in the home store (the next `hearken adapt` uses it)"
                    );
                }
                None => tracing::warn!(
                    "a verdict on the latest {} event, but the home store has none; ignored",
                    group.as_deref().unwrap_or("?")
                ),
            },
        }
        if last_write.elapsed() >= Duration::from_secs(5) {
            last_write = std::time::Instant::now();
            report(w.flush(false));
        }
    }
    close_tally(&mut w, &mut tally);
    report(w.flush(true));
}

/// `e` as 8-bit values and their scale (`e ≈ q × scale`).
pub fn quantise(e: &[f32]) -> (f32, Vec<i8>) {
    let peak = e
        .iter()
        .filter(|x| x.is_finite())
        .fold(0f32, |m, x| m.max(x.abs()));
    let scale = if peak > 0.0 { peak / 127.0 } else { 1.0 };
    let q = e
        .iter()
        .map(|&x| {
            let q = if x.is_finite() {
                (x / scale).round()
            } else {
                0.0
            };
            q.clamp(-127.0, 127.0) as i8
        })
        .collect();
    (scale, q)
}

/// `[learning]`: what the daemon keeps of this home's sound (never audio) and the
/// targets `hearken adapt` works to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    expecting = "a table of learning settings"
)]
pub struct LearningConfig {
    /// Keep the home store in the state directory.
    pub store: bool,
    /// Days a stored window is kept (1..=365).
    pub days: f64,
    /// Size bound of the store in MB (1..=10000).
    pub max_mb: f64,
    /// False alarms per week `hearken adapt` works to (0..=1000).
    pub false_alarms_per_week: f64,
    /// Validation recall `hearken adapt` may give up to get there (0..=1).
    pub max_recall_drop: f64,
    /// Let the weekly timer (`hearken-adapt.timer`) adapt the detectors; `false`
    /// makes its runs (`hearken adapt --scheduled`) do nothing.
    pub weekly_adapt: bool,
}

impl Default for LearningConfig {
    fn default() -> Self {
        LearningConfig {
            store: true,
            days: 14.0,
            max_mb: 50.0,
            false_alarms_per_week: 1.0,
            max_recall_drop: 0.05,
            weekly_adapt: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempDir(PathBuf);
    impl TempDir {
        fn new(name: &str) -> TempDir {
            let p = std::env::temp_dir().join(format!(
                "hearken-store-{name}-{}-{}",
                std::process::id(),
                now_ms()
            ));
            let _ = std::fs::remove_dir_all(&p);
            TempDir(p)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const LIMITS: Limits = Limits {
        max_bytes: 50 << 20,
        max_age: Duration::from_secs(14 * 86_400),
    };

    fn header() -> Record {
        Record::Header {
            groups: vec!["glass".into(), "scream".into()],
            embedding_dim: 4,
            hop_s: 0.5,
            model: "efficientat-mn04".into(),
        }
    }

    fn window(ms: u64, base: f32) -> Record {
        Record::Window {
            wall_ms: ms,
            dbfs: -30.0,
            views: vec![
                GroupView {
                    base,
                    score: base * 0.5,
                    active: true,
                },
                GroupView {
                    base: 0.0,
                    score: 0.0,
                    active: false,
                },
            ],
            embedding: vec![1.0, -0.5, 0.25, 0.0],
            classes: vec![-13.0, 2.0],
        }
    }

    #[test]
    fn every_record_round_trips_and_the_embedding_keeps_8_bits() {
        let id = Uuid::new_v4();
        for r in [
            header(),
            window(7, 0.9),
            Record::Tally {
                from_ms: 1,
                to_ms: 2,
                windows: 3,
                seconds: 1.5,
                max_base: vec![0.1, 0.2],
            },
            Record::EventStart {
                id,
                wall_ms: 5,
                group: "glass".into(),
            },
            Record::EventEnd { id, wall_ms: 6 },
            Record::Mark {
                id,
                wall_ms: 9,
                real: false,
            },
        ] {
            let back = decode(&encode(&r)).expect("decodes");
            match (&r, &back) {
                (
                    Record::Window {
                        embedding: a,
                        classes: ca,
                        ..
                    },
                    Record::Window {
                        embedding: b,
                        classes: cb,
                        ..
                    },
                ) => {
                    for (x, y) in a.iter().zip(b) {
                        assert!((x - y).abs() <= 1.0 / 254.0 + 1e-6, "{x} vs {y}");
                    }
                    for (x, y) in ca.iter().zip(cb) {
                        assert!((x - y).abs() <= 13.0 / 254.0 + 1e-6, "{x} vs {y}");
                    }
                }
                _ => assert_eq!(r, back),
            }
        }
        // Trailing or missing bytes are malformed.
        let mut b = encode(&window(1, 0.5));
        b.push(0);
        assert!(decode(&b).is_none());
        b.truncate(b.len() - 2);
        assert!(decode(&b).is_none());
    }

    fn write_some(dir: &Path, n: u64) {
        let mut w = Writer::open(dir, LIMITS).unwrap();
        w.push(&header());
        for i in 0..n {
            w.push(&window(1000 + i, 0.5));
        }
        w.flush(true).unwrap();
    }

    #[test]
    fn windows_survive_a_restart_and_each_process_adds_a_segment() {
        let d = TempDir::new("restart");
        write_some(&d.0, 3);
        write_some(&d.0, 2);
        let c = read(&d.0).unwrap();
        assert_eq!(c.files, 2);
        assert_eq!(c.windows.len(), 5);
        assert_eq!(c.windows[0].groups[1], "scream");
        assert_eq!(c.windows[0].view("glass").unwrap().base, 0.5);
        assert!(c.damaged.is_empty() && c.corrupt_regions == 0);
    }

    #[test]
    fn a_torn_tail_and_a_corrupt_middle_lose_only_their_own_records() {
        let d = TempDir::new("corrupt");
        write_some(&d.0, 10);
        let seg = segments(&d.0).pop().unwrap();
        let mut data = std::fs::read(&seg).unwrap();
        // Corrupt the 4th window's body, then tear the last one in half.
        let rec = 8 + encode(&window(0, 0.5)).len();
        let first = MAGIC.len() + 8 + encode(&header()).len();
        data[first + 3 * rec + 12] ^= 0xFF;
        data.truncate(data.len() - rec / 2);
        std::fs::write(&seg, &data).unwrap();
        let c = read(&d.0).unwrap();
        assert_eq!(c.windows.len(), 8, "10 − the corrupt one − the torn one");
        assert_eq!(c.corrupt_regions, 1);
        assert!(c.torn_tail_bytes > 0);
        // A file that is not a segment is reported and left out.
        std::fs::write(d.0.join("0000000000000000.hks"), b"\0\0\0\0\0\0\0\0\0\0").unwrap();
        let c = read(&d.0).unwrap();
        assert_eq!(c.windows.len(), 8);
        assert_eq!(c.damaged.len(), 1, "{:?}", c.damaged);
    }

    #[test]
    fn the_size_bound_drops_the_oldest_segments_first() {
        let d = TempDir::new("bound");
        let limits = Limits {
            max_bytes: 200 * 1024,
            max_age: LIMITS.max_age,
        };
        let mut w = Writer::open(&d.0, limits).unwrap();
        w.push(&header());
        let mut ms = 0;
        for _ in 0..40 {
            for _ in 0..100 {
                ms += 500;
                w.push(&Record::Window {
                    wall_ms: ms,
                    dbfs: -20.0,
                    views: vec![
                        GroupView {
                            base: 0.6,
                            score: 0.6,
                            active: false,
                        };
                        2
                    ],
                    embedding: vec![0.3; 384],
                    classes: vec![-5.0; 527],
                });
            }
            w.flush(true).unwrap();
        }
        let bytes: u64 = segments(&d.0)
            .iter()
            .map(|p| std::fs::metadata(p).unwrap().len())
            .sum();
        assert!(bytes <= limits.max_bytes + 64 * 1024 + 50_000, "{bytes}");
        let c = read(&d.0).unwrap();
        assert!(
            c.windows.len() < 4000 && c.windows.len() > 100,
            "{}",
            c.windows.len()
        );
        assert_eq!(c.windows.last().unwrap().wall_ms, ms, "the newest stay");
    }

    #[test]
    fn the_thread_keeps_candidates_and_tallies_the_rest() {
        let d = TempDir::new("thread");
        let (tx, rx) = crossbeam_channel::unbounded();
        let w = Writer::open(&d.0, LIMITS).unwrap();
        let h = std::thread::spawn(move || run(w, rx));
        tx.send(HomeMsg::Groups(Record::Header {
            groups: vec!["glass".into()],
            embedding_dim: 2,
            hop_s: 0.5,
            model: "m".into(),
        }))
        .unwrap();
        for i in 0..600u64 {
            let base = if i % 100 == 0 { 0.4 } else { 0.1 };
            let views = vec![GroupView {
                base,
                score: base,
                active: false,
            }];
            // As the inference thread sends them: the summary only for candidates.
            let keep = is_candidate(&views, &[0.3]);
            assert_eq!(keep, base == 0.4);
            tx.send(HomeMsg::Window(Record::Window {
                wall_ms: 1_000_000 + i * 500,
                dbfs: -40.0,
                views,
                embedding: if keep { vec![0.5, 0.25] } else { Vec::new() },
                classes: if keep { vec![0.5] } else { Vec::new() },
            }))
            .unwrap();
        }
        let id = Uuid::new_v4();
        tx.send(HomeMsg::Event {
            source: "hall".into(),
            record: Record::EventStart {
                id,
                wall_ms: 1_000_000,
                group: "glass".into(),
            },
        })
        .unwrap();
        // Another source's glass event, later.
        let kitchen = Uuid::new_v4();
        tx.send(HomeMsg::Event {
            source: "kitchen".into(),
            record: Record::EventStart {
                id: kitchen,
                wall_ms: 1_050_000,
                group: "glass".into(),
            },
        })
        .unwrap();
        // By id; by group on a source's topic (a button names no event: that
        // source's latest one is meant, not the kitchen's); a group with no
        // event yet (ignored).
        for (id, group, wall_ms, real) in [
            (Some(id), None, 1_100_000, false),
            (None, Some("glass"), 1_200_000, true),
            (None, Some("siren"), 1_300_000, true),
        ] {
            tx.send(HomeMsg::Mark {
                id,
                group: group.map(String::from),
                source: Some("hall".into()),
                wall_ms,
                real,
            })
            .unwrap();
        }
        drop(tx);
        h.join().unwrap();
        let c = read(&d.0).unwrap();
        assert_eq!(c.windows.len(), 6);
        assert_eq!(c.counted, 600);
        assert!((c.observed_s - 300.0).abs() < 1e-3, "{}", c.observed_s);
        assert_eq!(c.events.len(), 2);
        assert_eq!(c.marks, vec![(id, 1_100_000, false), (id, 1_200_000, true)]);
        // After a restart, "the latest glass event" is the latest of any source.
        assert_eq!(latest_events(&d.0, 3).get("glass"), Some(&kitchen));
        let (tx, rx) = crossbeam_channel::unbounded();
        let w = Writer::open(&d.0, LIMITS).unwrap();
        let h = std::thread::spawn(move || run(w, rx));
        tx.send(HomeMsg::Mark {
            id: None,
            group: Some("glass".into()),
            source: Some("hall".into()),
            wall_ms: 1_400_000,
            real: false,
        })
        .unwrap();
        drop(tx);
        h.join().unwrap();
        let c = read(&d.0).unwrap();
        assert_eq!(c.marks.last(), Some(&(kitchen, 1_400_000, false)));
    }
}
