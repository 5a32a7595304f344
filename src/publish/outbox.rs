//! The durable outbox: a crash-safe on-disk queue of outgoing MQTT messages.
//!
//! Every message is appended to `outbox.log` and fsync'd before [`Outbox::push`]
//! returns, and leaves the queue only when [`Outbox::ack`] marks it delivered (the
//! publisher calls it after the broker's PUBACK). A broker outage or a restart
//! therefore loses nothing: [`Outbox::open`] replays the log and hands back the
//! pending messages, oldest first.
//!
//! # On-disk format
//!
//! The directory holds `outbox.log` (the log), `outbox.lock` (an advisory `flock`
//! held while an [`Outbox`] is open, so two processes never share a log) and, briefly
//! during compaction, `outbox.log.tmp`.
//!
//! `outbox.log` starts with the 8-byte magic `HKOUTBX1`, followed by records. Each
//! record is framed as
//!
//! ```text
//! len: u32 LE   length of body in bytes (1 ..= MAX_RECORD_BYTES)
//! crc: u32 LE   CRC-32 (IEEE, as in zlib/PNG) of body
//! body: len bytes, starting with a kind byte:
//!   1 push  seq u64 | qos u8 | flags u8 (bit 0 = retain) | topic_len u16 | payload_len u32
//!           | topic (UTF-8) | payload
//!   2 ack   seq u64              the message was delivered (older logs)
//!   3 drop  seq u64              the message was dropped to respect max_bytes
//!   4 meta  next_seq u64 | dropped u64   written first by every compaction
//!   5 acked a push record delivered: the push's own bytes with this kind byte
//! ```
//!
//! All integers are little-endian. A push (or acked) body must be exactly as long as
//! its fields say; ack and drop bodies are 9 bytes, meta bodies 17.
//!
//! # Acknowledging in place
//!
//! [`Outbox::ack`] does not append: it rewrites the delivered push record's CRC and
//! kind byte (5 contiguous bytes, one `pwrite`) so the record reads as *acked*. A
//! delivered message therefore never needs new disk space to be forgotten, which
//! keeps delivery going on a full disk. If a crash tears that write the record no
//! longer checks out and recovery skips it: the message was delivered, so skipping
//! it is right.
//!
//! # Recovery
//!
//! [`Outbox::open`] reads the whole log. A record whose frame or CRC does not check
//! out is never trusted: the reader scans forward byte by byte for the next position
//! where a structurally valid record with a matching CRC starts. If one is found the
//! bad bytes were a corrupt middle region: they are skipped and counted
//! ([`Recovery::corrupt_regions`]); a push inside it is lost, an ack inside it makes
//! its message come back (a duplicate, which QoS 1 allows anyway). If none is found
//! the bad bytes are a torn tail (a write cut short by a crash or power loss) and
//! are ignored ([`Recovery::torn_tail_bytes`]). Either way every valid record before
//! and after survives, and the log is rewritten clean before the outbox is used.
//!
//! A log that does not start with the magic (all zeros after a power cut, another
//! program's file) is not deleted: it is renamed to `outbox.log.damaged-<unix time>`
//! ([`Recovery::moved_aside`]), logged at error, and a new log is started. A log cut
//! short inside its magic is started afresh with a warning.
//!
//! # A full disk
//!
//! The log keeps [`RESERVE_BYTES`] preallocated past its end (`fallocate` with
//! `FALLOC_FL_KEEP_SIZE`, where the filesystem supports it), so pushes keep being
//! durable for a while after the filesystem fills. When a write still fails the
//! message is kept in memory (within the same `max_bytes` bound), delivered like any
//! other, and [`Outbox::problem`] says why; [`Outbox::retry`] writes the held
//! messages once space returns. Only a crash while messages are held loses them.
//!
//! # Compaction and the size bound
//!
//! Acked records stay in the log until it exceeds both [`COMPACT_MIN_BYTES`] and
//! twice the live bytes (the framed size of the pending push records). Compaction
//! then writes a meta record and the live pushes to `outbox.log.tmp`, fsyncs it,
//! renames it over `outbox.log` and fsyncs the directory; a crash at any point
//! leaves either the old or the new log, both complete.
//!
//! When live bytes would exceed `max_bytes`, the oldest pending messages are dropped
//! (a drop record each, in the same fsync'd write as the push that caused it),
//! counted in [`Outbox::dropped`] (persisted across restarts) and logged with
//! `tracing::warn!`.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Name of the log file inside the outbox directory.
pub const LOG_FILE: &str = "outbox.log";
const TMP_FILE: &str = "outbox.log.tmp";
const LOCK_FILE: &str = "outbox.lock";
const MAGIC: &[u8; 8] = b"HKOUTBX1";

/// Bytes of the frame header (`len` and `crc`) before each record body.
const FRAME_HEADER: usize = 8;
/// Largest record body accepted, in bytes; larger lengths mark a record as corrupt.
pub const MAX_RECORD_BYTES: usize = 16 << 20;
/// The log is never compacted while smaller than this many bytes.
pub const COMPACT_MIN_BYTES: u64 = 64 << 10;
/// Disk space kept allocated past the end of the log, so that pushes stay durable
/// for a while after the filesystem fills (a few hundred events).
pub const RESERVE_BYTES: u64 = 256 << 10;

const KIND_PUSH: u8 = 1;
const KIND_ACK: u8 = 2;
const KIND_DROP: u8 = 3;
const KIND_META: u8 = 4;
const KIND_ACKED: u8 = 5;
/// Body bytes of a push record before its topic: kind, seq, qos, flags, topic_len,
/// payload_len.
const PUSH_FIXED: usize = 1 + 8 + 1 + 1 + 2 + 4;
const SEQ_BODY: usize = 1 + 8;
const META_BODY: usize = 1 + 8 + 8;

/// One pending outgoing message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    /// Sequence number: unique and increasing for the life of the outbox directory
    /// (it keeps increasing across restarts); the first message gets 1.
    pub seq: u64,
    /// Full MQTT topic name.
    pub topic: String,
    /// Payload bytes.
    pub payload: Vec<u8>,
    /// MQTT QoS level (0, 1 or 2).
    pub qos: u8,
    /// Whether the broker keeps the message for later subscribers.
    pub retain: bool,
}

impl OutboxEntry {
    /// Bytes this entry's push record takes in the log, frame included.
    fn framed_len(&self) -> u64 {
        (FRAME_HEADER + PUSH_FIXED + self.topic.len() + self.payload.len()) as u64
    }
}

/// A pending entry and where its push record starts in the log (`None` while the
/// disk refuses it and it is held in memory only).
#[derive(Debug, Clone)]
struct Slot {
    entry: OutboxEntry,
    at: Option<u64>,
}

/// What [`Outbox::open`] found while replaying the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Valid records replayed.
    pub records: usize,
    /// Bytes at the end of the log that held no valid record (a torn final write);
    /// ignored.
    pub torn_tail_bytes: u64,
    /// Corrupt regions in the middle of the log, each followed by valid records;
    /// skipped.
    pub corrupt_regions: usize,
    /// Total bytes of those corrupt regions.
    pub corrupt_bytes: u64,
    /// Pending messages dropped at open because they exceeded `max_bytes` (which may
    /// have been lowered since the last run); also counted in [`Outbox::dropped`].
    pub dropped_on_open: u64,
    /// Where a log that was not an outbox log (bad magic) was moved before a new one
    /// was started.
    pub moved_aside: Option<PathBuf>,
    /// Bytes of a log cut short inside its magic (started afresh).
    pub truncated_header_bytes: u64,
}

impl Recovery {
    /// True if the log held anything that was not a valid record.
    pub fn damaged(&self) -> bool {
        self.torn_tail_bytes > 0
            || self.corrupt_regions > 0
            || self.moved_aside.is_some()
            || self.truncated_header_bytes > 0
    }
}

/// A crash-safe on-disk queue of outgoing MQTT messages; see the [module
/// docs](self) for the format and the guarantees.
#[derive(Debug)]
pub struct Outbox {
    dir: PathBuf,
    path: PathBuf,
    /// Read-write handle on the current log (`None` when the log could not even be
    /// created; everything is then held in memory until [`Outbox::retry`] succeeds).
    file: Option<File>,
    /// Length of the log as written by us; the next record goes here.
    file_len: u64,
    /// End of the space preallocated for the log (0 when none is).
    reserved_to: u64,
    /// No compaction is tried before the log is this long (after one failed).
    next_compact_at: u64,
    entries: VecDeque<Slot>,
    /// Sum of `framed_len` over `entries`.
    live_bytes: u64,
    max_bytes: u64,
    next_seq: u64,
    dropped: u64,
    recovery: Recovery,
    /// Why the log cannot be written now, while it cannot.
    problem: Option<String>,
    /// Holds the advisory lock for as long as the outbox is open.
    _lock: File,
}

impl Outbox {
    /// Opens (creating `dir` and the log if needed) the outbox in `dir`, holding at
    /// most `max_bytes` of framed push records, and recovers the pending messages
    /// from the log, oldest first.
    ///
    /// A torn or corrupt log is repaired as the module docs describe (see
    /// [`Outbox::recovery`]); a log that is not an outbox log is moved aside; pending
    /// messages beyond `max_bytes` are dropped, oldest first. A log that cannot be
    /// rewritten (a full disk) is used as it is, or the outbox starts in memory, with
    /// [`Outbox::problem`] set. Fails if another process has the outbox open, or if
    /// the directory cannot be created or the log read.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Outbox> {
        fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create outbox directory", dir.display()))?;
        let lock = lock_dir(dir)?;
        let path = dir.join(LOG_FILE);
        let tmp = dir.join(TMP_FILE);
        match fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("{}: cannot remove", tmp.display())),
        }

        let mut data = match fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e).with_context(|| format!("{}: cannot read", path.display())),
        };
        let mut recovery = Recovery::default();
        // An empty log or a prefix of the magic is a log whose creation was cut short.
        let mut fresh = data.len() < MAGIC.len() && MAGIC.starts_with(&data);
        if fresh && !data.is_empty() {
            recovery.truncated_header_bytes = data.len() as u64;
            tracing::warn!(
                path = %path.display(),
                bytes = data.len(),
                "outbox: the log was cut short inside its header ({} bytes); starting a new one",
                data.len()
            );
        }
        if !fresh && !data.starts_with(MAGIC) {
            let aside = move_aside(&path)?;
            tracing::error!(
                path = %path.display(),
                moved_to = %aside.display(),
                "outbox: {} is not a hearken outbox log (damaged or foreign); moved it to {} and started a new outbox. Messages queued in it are lost; keep the file if you want to inspect it",
                path.display(),
                aside.display()
            );
            recovery.moved_aside = Some(aside);
            data.clear();
            fresh = true;
        }

        let mut state = State::default();
        if !fresh {
            let scan = scan(&data);
            recovery.records = scan.records.len();
            recovery.torn_tail_bytes = scan.torn_tail_bytes;
            recovery.corrupt_regions = scan.corrupt_regions;
            recovery.corrupt_bytes = scan.corrupt_bytes;
            for (r, at) in scan.records {
                state.apply(r, at);
            }
        }
        if recovery.torn_tail_bytes > 0 {
            tracing::warn!(
                path = %path.display(),
                bytes = recovery.torn_tail_bytes,
                "outbox: ignored a torn record at the end of the log"
            );
        }
        if recovery.corrupt_regions > 0 {
            tracing::warn!(
                path = %path.display(),
                regions = recovery.corrupt_regions,
                bytes = recovery.corrupt_bytes,
                "outbox: skipped corrupt records in the log; a message may be lost or repeated"
            );
        }

        let mut live_bytes: u64 = state.entries.iter().map(|s| s.entry.framed_len()).sum();
        while live_bytes > max_bytes {
            let Some(s) = state.entries.pop_front() else {
                break;
            };
            live_bytes -= s.entry.framed_len();
            state.dropped += 1;
            recovery.dropped_on_open += 1;
        }
        if recovery.dropped_on_open > 0 {
            tracing::warn!(
                dropped = recovery.dropped_on_open,
                max_bytes,
                "outbox: over its size bound at open; dropped the oldest messages"
            );
        }

        let mut outbox = Outbox {
            dir: dir.to_path_buf(),
            path,
            file: None,
            file_len: 0,
            reserved_to: 0,
            next_compact_at: 0,
            entries: state.entries,
            live_bytes,
            max_bytes,
            next_seq: state.next_seq,
            dropped: state.dropped,
            recovery,
            problem: None,
            _lock: lock,
        };
        let rewrite = fresh || outbox.recovery.damaged() || outbox.recovery.dropped_on_open > 0;
        let opened = if rewrite {
            outbox.compact()
        } else {
            outbox.reopen(data.len() as u64)
        };
        if let Err(e) = opened {
            // Keep going: an existing log is appended to as it is (recovery copes
            // with what lies before), else everything waits in memory.
            if !fresh && outbox.reopen(data.len() as u64).is_ok() {
                outbox.set_problem(format!("{e:#}"));
            } else {
                for s in &mut outbox.entries {
                    s.at = None;
                }
                outbox.set_problem(format!("{e:#}"));
            }
        }
        outbox.maybe_compact();
        Ok(outbox)
    }

    /// Opens the existing log read-write, `len` bytes long as read.
    fn reopen(&mut self, len: u64) -> Result<()> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.path)
            .with_context(|| format!("{}: cannot open for writing", self.path.display()))?;
        self.file = Some(file);
        self.file_len = len;
        self.reserved_to = 0;
        self.reserve();
        Ok(())
    }

    /// Appends a message and makes it durable (written and fsync'd) before returning
    /// its sequence number. If the queue would then exceed `max_bytes`, the oldest
    /// pending messages are dropped and counted. If the disk refuses the write, the
    /// message is held in memory instead (see [`Outbox::problem`]).
    ///
    /// Fails, leaving the queue unchanged, if `qos` is above 2, the topic is longer
    /// than 65535 bytes, or the message alone does not fit in `max_bytes` or
    /// [`MAX_RECORD_BYTES`].
    pub fn push(&mut self, topic: &str, payload: &[u8], qos: u8, retain: bool) -> Result<u64> {
        if qos > 2 {
            anyhow::bail!("outbox: invalid MQTT QoS {qos}");
        }
        if topic.len() > u16::MAX as usize {
            anyhow::bail!("outbox: topic of {} bytes is too long", topic.len());
        }
        let body_len = PUSH_FIXED + topic.len() + payload.len();
        let size = (FRAME_HEADER + body_len) as u64;
        if body_len > MAX_RECORD_BYTES || size > self.max_bytes {
            anyhow::bail!(
                "outbox: message of {size} bytes on {topic} exceeds the outbox size bound ({} bytes)",
                self.max_bytes.min((FRAME_HEADER + MAX_RECORD_BYTES) as u64)
            );
        }
        // Older held messages go to disk first when they can.
        self.retry();
        let entry = OutboxEntry {
            seq: self.next_seq,
            topic: topic.to_string(),
            payload: payload.to_vec(),
            qos,
            retain,
        };
        let mut buf = frame(&encode(&Record::Push(entry.clone())));

        // The oldest entries that must go to make room, dropped in the same write.
        let mut live = self.live_bytes + size;
        let mut n_drop = 0;
        for s in &self.entries {
            if live <= self.max_bytes {
                break;
            }
            live -= s.entry.framed_len();
            buf.extend_from_slice(&frame(&encode(&Record::Drop(s.entry.seq))));
            n_drop += 1;
        }
        let at = match self.append(&buf) {
            Ok(at) => Some(at),
            Err(e) => {
                self.set_problem(format!("{e:#}"));
                None
            }
        };

        let seq = entry.seq;
        self.next_seq += 1;
        self.entries.push_back(Slot { entry, at });
        let first_dropped = self.entries.front().map(|s| s.entry.seq);
        self.entries.drain(..n_drop);
        self.live_bytes = live;
        if n_drop > 0 {
            self.dropped += n_drop as u64;
            tracing::warn!(
                dropped = n_drop,
                first_seq = first_dropped,
                total_dropped = self.dropped,
                max_bytes = self.max_bytes,
                "outbox full: dropped the oldest pending messages"
            );
            self.maybe_compact();
        }
        Ok(seq)
    }

    /// Writes the messages held in memory (pushed while the disk refused them) to
    /// the log, oldest first; clears [`Outbox::problem`] once none is held. Returns
    /// true when nothing is held any more. Cheap when nothing is held.
    pub fn retry(&mut self) -> bool {
        if self.problem.is_none() {
            return true;
        }
        if self.file.is_none() {
            if let Err(e) = self.compact() {
                self.set_problem(format!("{e:#}"));
                return false;
            }
        }
        // Space for the log's reserve is the test that the disk has room again
        // (also when every held message was delivered meanwhile and nothing is left
        // to write).
        if let Err(e) = self.preallocate() {
            if e.raw_os_error() == Some(libc::ENOSPC) {
                let why = format!("{}: {e}", self.path.display());
                self.set_problem(why);
                return false;
            }
        }
        let held: Vec<usize> = (0..self.entries.len())
            .filter(|&i| self.entries[i].at.is_none())
            .collect();
        for i in held {
            let buf = frame(&encode(&Record::Push(self.entries[i].entry.clone())));
            match self.append(&buf) {
                Ok(at) => self.entries[i].at = Some(at),
                Err(e) => {
                    self.set_problem(format!("{e:#}"));
                    return false;
                }
            }
        }
        tracing::info!(
            path = %self.path.display(),
            "outbox: the log can be written again; every pending message is on disk"
        );
        self.problem = None;
        true
    }

    /// Why the outbox cannot write its log now (a full disk, an I/O error), while
    /// it cannot; messages pushed meanwhile are held in memory.
    pub fn problem(&self) -> Option<&str> {
        self.problem.as_deref()
    }

    /// Pending messages held in memory only (not yet on disk).
    pub fn held_in_memory(&self) -> usize {
        self.entries.iter().filter(|s| s.at.is_none()).count()
    }

    fn set_problem(&mut self, why: String) {
        if self.problem.is_none() {
            tracing::error!(
                path = %self.path.display(),
                "outbox: cannot write {} ({why}); new events are kept in memory (up to {} bytes) and still delivered, and are written when space returns. Free space in {}",
                self.path.display(),
                self.max_bytes,
                self.dir.display()
            );
        }
        self.problem = Some(why);
    }

    /// The pending messages, oldest first.
    pub fn pending(&self) -> impl Iterator<Item = &OutboxEntry> {
        self.entries.iter().map(|s| &s.entry)
    }

    /// The oldest pending message, if any.
    pub fn front(&self) -> Option<&OutboxEntry> {
        self.entries.front().map(|s| &s.entry)
    }

    /// Removes message `seq` and marks it delivered in the log, in place (no new disk
    /// space is needed; see the module docs). Acking a sequence number that is not
    /// pending (already acked or dropped) does nothing. The message leaves the queue
    /// even when the mark cannot be written; the error then says so, and after a
    /// restart the message may be delivered once more.
    pub fn ack(&mut self, seq: u64) -> Result<()> {
        let Ok(idx) = self.entries.binary_search_by_key(&seq, |s| s.entry.seq) else {
            return Ok(());
        };
        let Some(slot) = self.entries.remove(idx) else {
            return Ok(());
        };
        self.live_bytes -= slot.entry.framed_len();
        let marked = match (slot.at, self.file.as_ref()) {
            (Some(at), Some(file)) => mark_acked(file, at, &slot.entry).with_context(|| {
                format!(
                    "{}: cannot mark message {seq} delivered",
                    self.path.display()
                )
            }),
            _ => Ok(()),
        };
        self.maybe_compact();
        marked
    }

    /// Number of pending messages.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if no message is pending.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Messages dropped (oldest first) because the outbox exceeded its size bound,
    /// over the life of the outbox directory (persisted across restarts).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Framed bytes of the pending messages: what `max_bytes` bounds.
    pub fn live_bytes(&self) -> u64 {
        self.live_bytes
    }

    /// The size bound given to [`Outbox::open`].
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Current length of the log file in bytes.
    pub fn log_bytes(&self) -> u64 {
        self.file_len
    }

    /// Path of the log file.
    pub fn log_path(&self) -> &Path {
        &self.path
    }

    /// What [`Outbox::open`] found in the log.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// Rewrites the log with only the pending messages (atomically: temp file,
    /// fsync, rename, directory fsync). Called automatically when acked records make
    /// up most of a log larger than [`COMPACT_MIN_BYTES`]. Messages held in memory
    /// are written too.
    pub fn compact(&mut self) -> Result<()> {
        let (file, offsets, len) =
            write_snapshot(&self.dir, &self.entries, self.next_seq, self.dropped)?;
        for (s, at) in self.entries.iter_mut().zip(offsets) {
            s.at = Some(at);
        }
        self.file = Some(file);
        self.file_len = len;
        self.reserved_to = 0;
        self.next_compact_at = 0;
        self.reserve();
        if self.problem.take().is_some() {
            tracing::info!(
                path = %self.path.display(),
                "outbox: the log can be written again; every pending message is on disk"
            );
        }
        Ok(())
    }

    /// Compacts if the log is large and mostly dead; a failure is logged, not
    /// returned (the old log is still complete and in use).
    fn maybe_compact(&mut self) {
        if self.file_len > COMPACT_MIN_BYTES
            && self.file_len > 2 * self.live_bytes
            && self.file_len >= self.next_compact_at
        {
            if let Err(e) = self.compact() {
                // A full disk would fail every ack's attempt: wait for the log to grow.
                self.next_compact_at = self.file_len + COMPACT_MIN_BYTES / 2;
                tracing::warn!(path = %self.path.display(), "outbox: compaction failed: {e:#}");
            }
        }
    }

    /// Keeps [`RESERVE_BYTES`] allocated past the end of the log, best effort (a
    /// full disk or a filesystem without `fallocate` just gets no reserve).
    fn reserve(&mut self) {
        if self.file_len + RESERVE_BYTES / 2 < self.reserved_to {
            return;
        }
        let _ = self.preallocate();
    }

    /// Allocates [`RESERVE_BYTES`] past the end of the log (`fallocate` with
    /// `FALLOC_FL_KEEP_SIZE`: the log's length and contents stay as they are).
    fn preallocate(&mut self) -> io::Result<()> {
        let Some(file) = self.file.as_ref() else {
            return Ok(());
        };
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::io::AsRawFd;
            let (at, len) = (self.file_len, RESERVE_BYTES);
            // SAFETY: fallocate on a descriptor we own; KEEP_SIZE leaves the file's
            // length (and so its contents as read) unchanged.
            let rc = unsafe {
                libc::fallocate(
                    file.as_raw_fd(),
                    libc::FALLOC_FL_KEEP_SIZE,
                    at as libc::off_t,
                    len as libc::off_t,
                )
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            self.reserved_to = at + len;
        }
        #[cfg(not(target_os = "linux"))]
        let _ = file;
        Ok(())
    }

    /// Writes `buf` at the end of the log and fsyncs it; returns where it starts. On
    /// a failed write the log is cut back to its previous length (best effort;
    /// recovery copes if that fails too).
    fn append(&mut self, buf: &[u8]) -> Result<u64> {
        use std::os::unix::fs::FileExt;
        let at = self.file_len;
        let Some(file) = self.file.as_ref() else {
            anyhow::bail!("{}: no log is open", self.path.display());
        };
        if let Err(e) = file.write_all_at(buf, at).and_then(|()| file.sync_data()) {
            let _ = file.set_len(at);
            return Err(e).with_context(|| format!("{}: cannot append", self.path.display()));
        }
        self.file_len += buf.len() as u64;
        self.reserve();
        Ok(at)
    }
}

/// Rewrites the CRC and kind byte of the push record of `e` at `at` so that it reads
/// as acked: 5 contiguous bytes, then fsync.
fn mark_acked(file: &File, at: u64, e: &OutboxEntry) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut body = encode(&Record::Push(e.clone()));
    body[0] = KIND_ACKED;
    let mut patch = [0u8; 5];
    patch[..4].copy_from_slice(&crc32(&body).to_le_bytes());
    patch[4] = KIND_ACKED;
    file.write_all_at(&patch, at + 4)?;
    file.sync_data()
}

/// Renames a damaged log to `outbox.log.damaged-<unix seconds>` (with a counter if
/// that exists) and returns the new path.
fn move_aside(path: &Path) -> Result<PathBuf> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut n = 0;
    loop {
        let name = match n {
            0 => format!("{LOG_FILE}.damaged-{secs}"),
            _ => format!("{LOG_FILE}.damaged-{secs}-{n}"),
        };
        let aside = path.with_file_name(name);
        if !aside.exists() {
            fs::rename(path, &aside).with_context(|| {
                format!(
                    "{}: not a hearken outbox log, and it cannot be moved aside to {}; move it away to start afresh",
                    path.display(),
                    aside.display()
                )
            })?;
            return Ok(aside);
        }
        n += 1;
    }
}

/// A decoded log record.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Record {
    Push(OutboxEntry),
    /// A push record marked delivered in place.
    Acked(u64),
    Ack(u64),
    Drop(u64),
    Meta {
        next_seq: u64,
        dropped: u64,
    },
}

/// State rebuilt by replaying records.
#[derive(Debug)]
struct State {
    entries: VecDeque<Slot>,
    next_seq: u64,
    dropped: u64,
}

impl Default for State {
    fn default() -> State {
        State {
            entries: VecDeque::new(),
            next_seq: 1,
            dropped: 0,
        }
    }
}

impl State {
    /// Applies record `r`, found at byte `at` of the log.
    fn apply(&mut self, r: Record, at: u64) {
        match r {
            Record::Push(entry) => {
                self.next_seq = self.next_seq.max(entry.seq.saturating_add(1));
                let seq = entry.seq;
                let slot = Slot {
                    entry,
                    at: Some(at),
                };
                match self.entries.binary_search_by_key(&seq, |x| x.entry.seq) {
                    Ok(i) => self.entries[i] = slot,
                    Err(i) => self.entries.insert(i, slot),
                }
            }
            Record::Acked(seq) | Record::Ack(seq) | Record::Drop(seq) => {
                self.next_seq = self.next_seq.max(seq.saturating_add(1));
                if let Ok(i) = self.entries.binary_search_by_key(&seq, |x| x.entry.seq) {
                    self.entries.remove(i);
                }
                if matches!(r, Record::Drop(_)) {
                    self.dropped += 1;
                }
            }
            Record::Meta { next_seq, dropped } => {
                self.next_seq = self.next_seq.max(next_seq);
                self.dropped = dropped;
            }
        }
    }
}

fn encode(r: &Record) -> Vec<u8> {
    match r {
        Record::Push(e) => {
            let mut b = Vec::with_capacity(PUSH_FIXED + e.topic.len() + e.payload.len());
            b.push(KIND_PUSH);
            b.extend_from_slice(&e.seq.to_le_bytes());
            b.push(e.qos);
            b.push(u8::from(e.retain));
            b.extend_from_slice(&(e.topic.len() as u16).to_le_bytes());
            b.extend_from_slice(&(e.payload.len() as u32).to_le_bytes());
            b.extend_from_slice(e.topic.as_bytes());
            b.extend_from_slice(&e.payload);
            b
        }
        Record::Acked(_) => unreachable!("acked records are made in place by mark_acked"),
        Record::Ack(seq) | Record::Drop(seq) => {
            let mut b = Vec::with_capacity(SEQ_BODY);
            b.push(if matches!(r, Record::Ack(_)) {
                KIND_ACK
            } else {
                KIND_DROP
            });
            b.extend_from_slice(&seq.to_le_bytes());
            b
        }
        Record::Meta { next_seq, dropped } => {
            let mut b = Vec::with_capacity(META_BODY);
            b.push(KIND_META);
            b.extend_from_slice(&next_seq.to_le_bytes());
            b.extend_from_slice(&dropped.to_le_bytes());
            b
        }
    }
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(FRAME_HEADER + body.len());
    b.extend_from_slice(&(body.len() as u32).to_le_bytes());
    b.extend_from_slice(&crc32(body).to_le_bytes());
    b.extend_from_slice(body);
    b
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Decodes a body whose structure is consistent (exact lengths, valid fields), or
/// `None`. Does not check the CRC.
fn decode(b: &[u8]) -> Option<Record> {
    match *b.first()? {
        kind @ (KIND_PUSH | KIND_ACKED) => {
            if b.len() < PUSH_FIXED {
                return None;
            }
            let seq = u64_at(b, 1);
            let qos = b[9];
            let flags = b[10];
            let topic_len = u16_at(b, 11) as usize;
            let payload_len = u32_at(b, 13) as usize;
            if qos > 2 || flags > 1 || PUSH_FIXED + topic_len + payload_len != b.len() {
                return None;
            }
            let topic = std::str::from_utf8(&b[PUSH_FIXED..PUSH_FIXED + topic_len]).ok()?;
            if kind == KIND_ACKED {
                return Some(Record::Acked(seq));
            }
            Some(Record::Push(OutboxEntry {
                seq,
                topic: topic.to_string(),
                payload: b[PUSH_FIXED + topic_len..].to_vec(),
                qos,
                retain: flags == 1,
            }))
        }
        KIND_ACK if b.len() == SEQ_BODY => Some(Record::Ack(u64_at(b, 1))),
        KIND_DROP if b.len() == SEQ_BODY => Some(Record::Drop(u64_at(b, 1))),
        KIND_META if b.len() == META_BODY => Some(Record::Meta {
            next_seq: u64_at(b, 1),
            dropped: u64_at(b, 9),
        }),
        _ => None,
    }
}

/// The record framed at `pos` and the position after it, if it is complete,
/// structurally valid and its CRC matches.
fn parse_at(data: &[u8], pos: usize) -> Option<(Record, usize)> {
    let header = data.get(pos..pos.checked_add(FRAME_HEADER)?)?;
    let len = u32_at(header, 0) as usize;
    if len == 0 || len > MAX_RECORD_BYTES {
        return None;
    }
    let start = pos + FRAME_HEADER;
    let body = data.get(start..start.checked_add(len)?)?;
    let record = decode(body)?;
    (crc32(body) == u32_at(header, 4)).then_some((record, start + len))
}

#[derive(Debug, Default)]
struct Scan {
    /// Each valid record with the byte offset its frame starts at.
    records: Vec<(Record, u64)>,
    torn_tail_bytes: u64,
    corrupt_regions: usize,
    corrupt_bytes: u64,
}

/// Reads every valid record after the magic, resynchronising past corrupt regions.
fn scan(data: &[u8]) -> Scan {
    let mut s = Scan::default();
    let mut pos = MAGIC.len();
    while pos < data.len() {
        if let Some((r, end)) = parse_at(data, pos) {
            s.records.push((r, pos as u64));
            pos = end;
            continue;
        }
        match (pos + 1..data.len()).find(|&p| parse_at(data, p).is_some()) {
            Some(next) => {
                s.corrupt_regions += 1;
                s.corrupt_bytes += (next - pos) as u64;
                pos = next;
            }
            None => {
                s.torn_tail_bytes = (data.len() - pos) as u64;
                break;
            }
        }
    }
    s
}

/// Atomically replaces the log with the magic, a meta record and `entries`; returns
/// a read-write handle on the new log, where each entry's record starts, and the
/// log's length.
fn write_snapshot(
    dir: &Path,
    entries: &VecDeque<Slot>,
    next_seq: u64,
    dropped: u64,
) -> Result<(File, Vec<u64>, u64)> {
    let path = dir.join(LOG_FILE);
    let tmp = dir.join(TMP_FILE);
    let mut buf = MAGIC.to_vec();
    buf.extend_from_slice(&frame(&encode(&Record::Meta { next_seq, dropped })));
    let mut offsets = Vec::with_capacity(entries.len());
    for s in entries {
        offsets.push(buf.len() as u64);
        buf.extend_from_slice(&frame(&encode(&Record::Push(s.entry.clone()))));
    }
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("{}: cannot remove", tmp.display())),
    }
    // The handle stays valid for the log after the rename.
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&tmp)
        .with_context(|| format!("{}: cannot create", tmp.display()))?;
    if let Err(e) = file.write_all(&buf).and_then(|()| file.sync_all()) {
        // A half-written copy would only take the space a full disk lacks.
        drop(file);
        let _ = fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("{}: cannot write", tmp.display()));
    }
    fs::rename(&tmp, &path)
        .with_context(|| format!("cannot rename {} over {}", tmp.display(), path.display()))?;
    sync_dir(dir)?;
    Ok((file, offsets, buf.len() as u64))
}

/// Makes a rename or creation in `dir` durable.
fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("{}: cannot fsync directory", dir.display()))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Takes an exclusive advisory lock on `dir/outbox.lock`, failing at once if
/// another open outbox holds it.
fn lock_dir(dir: &Path) -> Result<File> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("{}: cannot open", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::io::AsRawFd;
        // SAFETY: flock on a file descriptor we own, kept open as long as the lock.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::WouldBlock {
                anyhow::bail!(
                    "{}: the outbox is already open (another hearken using this state directory?)",
                    dir.display()
                );
            }
            return Err(err).with_context(|| format!("{}: cannot lock", path.display()));
        }
    }
    Ok(file)
}

/// CRC-32 lookup table (IEEE 802.3, reflected polynomial 0xEDB88320).
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// CRC-32 (IEEE) of `data`, as computed by zlib.
pub(crate) fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c = CRC_TABLE[((c ^ b as u32) & 0xFF) as usize] ^ (c >> 8);
    }
    !c
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{SystemTime, UNIX_EPOCH};

    const BIG: u64 = 1 << 30;

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            let p = std::env::temp_dir().join(format!(
                "hearken-outbox-{name}-{}-{nanos}",
                std::process::id()
            ));
            let _ = fs::remove_dir_all(&p);
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn seqs(o: &Outbox) -> Vec<u64> {
        o.pending().map(|e| e.seq).collect()
    }

    fn payloads(o: &Outbox) -> Vec<Vec<u8>> {
        o.pending().map(|e| e.payload.clone()).collect()
    }

    fn log_len(d: &TempDir) -> u64 {
        fs::metadata(d.0.join(LOG_FILE)).unwrap().len()
    }

    #[test]
    fn crc32_matches_reference() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn missing_dir_is_created() {
        let d = TempDir::new("mkdir");
        let nested = d.0.join("a/b/state");
        let o = Outbox::open(&nested, BIG).unwrap();
        assert!(o.is_empty());
        assert_eq!(o.len(), 0);
        assert!(nested.join(LOG_FILE).is_file());
        assert_eq!(o.recovery(), &Recovery::default());
    }

    #[test]
    fn push_ack_reopen_keeps_unacked_in_order() {
        let d = TempDir::new("reopen");
        {
            let mut o = Outbox::open(&d.0, BIG).unwrap();
            for i in 0..5u8 {
                let seq = o.push(&format!("t/{i}"), &[i; 3], i % 3, i == 4).unwrap();
                assert_eq!(seq, u64::from(i) + 1);
            }
            o.ack(2).unwrap();
            o.ack(4).unwrap();
            o.ack(4).unwrap(); // already acked: no-op
            o.ack(99).unwrap(); // never pushed: no-op
            assert_eq!(seqs(&o), vec![1, 3, 5]);
        }
        let o = Outbox::open(&d.0, BIG).unwrap();
        assert_eq!(seqs(&o), vec![1, 3, 5]);
        let e: Vec<&OutboxEntry> = o.pending().collect();
        assert_eq!(e[0].topic, "t/0");
        assert_eq!(e[0].payload, vec![0; 3]);
        assert_eq!((e[0].qos, e[0].retain), (0, false));
        assert_eq!(e[2].topic, "t/4");
        assert_eq!((e[2].qos, e[2].retain), (1, true));
        assert_eq!(e[1].qos, 2);
        assert_eq!(o.len(), 3);
        assert!(!o.recovery().damaged());
        assert_eq!(o.front().map(|e| e.seq), Some(1));
    }

    #[test]
    fn seq_continues_after_reopen() {
        let d = TempDir::new("seq");
        {
            let mut o = Outbox::open(&d.0, BIG).unwrap();
            o.push("a", b"1", 1, false).unwrap();
            o.push("a", b"2", 1, false).unwrap();
            o.ack(1).unwrap();
            o.ack(2).unwrap();
        }
        {
            // Everything acked, nothing pending: the next seq still follows.
            let mut o = Outbox::open(&d.0, BIG).unwrap();
            assert!(o.is_empty());
            assert_eq!(o.push("a", b"3", 1, false).unwrap(), 3);
            o.ack(3).unwrap();
            // After a compaction only the meta record remembers the sequence.
            o.compact().unwrap();
        }
        let mut o = Outbox::open(&d.0, BIG).unwrap();
        assert!(o.is_empty());
        assert_eq!(o.push("a", b"4", 1, false).unwrap(), 4);
    }

    fn three(d: &TempDir) {
        let mut o = Outbox::open(&d.0, BIG).unwrap();
        o.push("t", b"{\"n\":1}", 1, false).unwrap();
        o.push("t", b"{\"n\":2}", 1, false).unwrap();
        o.push("t", b"{\"n\":3}", 1, false).unwrap();
    }

    #[test]
    fn torn_last_record_is_ignored() {
        let d = TempDir::new("torn");
        three(&d);
        let path = d.0.join(LOG_FILE);
        let len = log_len(&d);
        for cut in [1, 3, 8, 12] {
            // Fresh copy of the three records for each cut.
            let _ = fs::remove_dir_all(&d.0);
            three(&d);
            assert_eq!(log_len(&d), len);
            let f = OpenOptions::new().write(true).open(&path).unwrap();
            f.set_len(len - cut).unwrap();
            drop(f);
            let mut o = Outbox::open(&d.0, BIG).unwrap();
            assert_eq!(seqs(&o), vec![1, 2], "cut {cut}");
            assert_eq!(
                o.recovery().torn_tail_bytes,
                (FRAME_HEADER + PUSH_FIXED + 1 + 7) as u64 - cut,
                "cut {cut}"
            );
            assert_eq!(o.recovery().corrupt_regions, 0);
            // The log was rewritten clean: new pushes survive the next reopen.
            assert_eq!(o.push("t", b"{\"n\":4}", 1, false).unwrap(), 3);
            drop(o);
            let o = Outbox::open(&d.0, BIG).unwrap();
            assert_eq!(seqs(&o), vec![1, 2, 3]);
            assert!(!o.recovery().damaged());
        }
    }

    #[test]
    fn appended_garbage_is_ignored() {
        let d = TempDir::new("garbage");
        three(&d);
        let mut f = OpenOptions::new()
            .append(true)
            .open(d.0.join(LOG_FILE))
            .unwrap();
        f.write_all(b"\x07\x00\x00\x00garbage!!\xff").unwrap();
        drop(f);
        let o = Outbox::open(&d.0, BIG).unwrap();
        assert_eq!(seqs(&o), vec![1, 2, 3]);
        assert_eq!(o.recovery().torn_tail_bytes, 14);
        assert_eq!(payloads(&o)[2], b"{\"n\":3}".to_vec());
    }

    /// Offset of the `n`-th record (0-based) in a log of equal-sized records after
    /// the magic and a meta record.
    fn record_offset(n: u64) -> u64 {
        let meta = (FRAME_HEADER + META_BODY) as u64;
        let push = (FRAME_HEADER + PUSH_FIXED + 1 + 7) as u64;
        MAGIC.len() as u64 + meta + n * push
    }

    #[test]
    fn corrupt_middle_record_is_skipped_and_counted() {
        // Decision: a corrupt record in the middle is skipped (counted in
        // `Recovery::corrupt_regions`); the records after it still count.
        let d = TempDir::new("corrupt");
        let path = d.0.join(LOG_FILE);
        // Byte offsets inside the second record: its length, its CRC, its payload.
        let payload_byte = FRAME_HEADER + PUSH_FIXED + 1 + 3;
        for (what, at) in [("length", 0), ("crc", 5), ("payload", payload_byte)] {
            let _ = fs::remove_dir_all(&d.0);
            three(&d);
            let mut data = fs::read(&path).unwrap();
            data[record_offset(1) as usize + at] ^= 0x5A;
            fs::write(&path, &data).unwrap();
            let mut o = Outbox::open(&d.0, BIG).unwrap();
            assert_eq!(seqs(&o), vec![1, 3], "{what}");
            assert_eq!(o.recovery().corrupt_regions, 1, "{what}");
            assert_eq!(o.recovery().torn_tail_bytes, 0, "{what}");
            assert_eq!(
                o.recovery().corrupt_bytes,
                record_offset(2) - record_offset(1),
                "{what}"
            );
            // Seq continues past the highest valid record.
            assert_eq!(o.push("t", b"x", 1, false).unwrap(), 4);
            drop(o);
            let o = Outbox::open(&d.0, BIG).unwrap();
            assert_eq!(seqs(&o), vec![1, 3, 4]);
            assert!(!o.recovery().damaged());
        }
    }

    #[test]
    fn a_torn_in_place_ack_loses_nothing_undelivered() {
        let d = TempDir::new("corrupt-ack");
        {
            let mut o = Outbox::open(&d.0, BIG).unwrap();
            o.push("t", b"1", 1, false).unwrap();
            o.ack(1).unwrap();
            o.push("t", b"2", 1, false).unwrap();
        }
        let path = d.0.join(LOG_FILE);
        let mut data = fs::read(&path).unwrap();
        // The acked push follows magic and meta; its kind byte is after the frame.
        let acked = MAGIC.len() + FRAME_HEADER + META_BODY;
        assert_eq!(data[acked + FRAME_HEADER], KIND_ACKED);
        // A write torn between the CRC and the kind byte: the record no longer
        // checks out and is skipped, which is right for a delivered message.
        data[acked + FRAME_HEADER] = KIND_PUSH;
        fs::write(&path, &data).unwrap();
        let o = Outbox::open(&d.0, BIG).unwrap();
        assert_eq!(seqs(&o), vec![2]);
        assert_eq!(o.recovery().corrupt_regions, 1);
    }

    #[test]
    fn ack_marks_in_place_and_needs_no_new_space() {
        let d = TempDir::new("ack-in-place");
        let mut o = Outbox::open(&d.0, BIG).unwrap();
        for i in 0..4u8 {
            o.push("t", &[i; 5], 1, false).unwrap();
        }
        let len = log_len(&d);
        o.ack(2).unwrap();
        o.ack(1).unwrap();
        assert_eq!(log_len(&d), len, "an ack must not grow the log");
        assert_eq!(o.log_bytes(), len);
        drop(o);
        let mut o = Outbox::open(&d.0, BIG).unwrap();
        assert_eq!(seqs(&o), vec![3, 4]);
        assert!(!o.recovery().damaged());
        assert_eq!(o.push("t", b"x", 1, false).unwrap(), 5);
    }

    #[test]
    fn writes_the_disk_refuses_are_held_in_memory_then_written() {
        let d = TempDir::new("held");
        let mut o = Outbox::open(&d.0, BIG).unwrap();
        o.push("t", b"on disk", 1, false).unwrap();
        let len = o.log_bytes();
        // A handle that cannot write stands in for a full disk.
        o.file = Some(File::open(d.0.join(LOG_FILE)).unwrap());
        assert_eq!(o.push("t", b"held 1", 1, false).unwrap(), 2);
        assert_eq!(o.push("t", b"held 2", 1, false).unwrap(), 3);
        assert!(o.problem().is_some());
        assert_eq!(o.held_in_memory(), 2);
        assert_eq!(seqs(&o), vec![1, 2, 3], "held messages are still delivered");
        assert_eq!(log_len(&d), len);
        o.ack(2).unwrap(); // delivered from memory: nothing to write
        assert!(!o.retry(), "still refused");
        assert!(o.problem().is_some());
        // Space returns.
        o.reopen(len).unwrap();
        assert!(o.retry());
        assert!(o.problem().is_none());
        assert_eq!(o.held_in_memory(), 0);
        drop(o);
        let o = Outbox::open(&d.0, BIG).unwrap();
        assert_eq!(seqs(&o), vec![1, 3]);
        assert_eq!(payloads(&o)[1], b"held 2".to_vec());
    }

    #[test]
    fn ack_records_of_older_logs_are_still_honoured() {
        let d = TempDir::new("legacy-ack");
        fs::create_dir_all(&d.0).unwrap();
        let mut data = MAGIC.to_vec();
        for seq in 1..=3 {
            data.extend(frame(&encode(&Record::Push(OutboxEntry {
                seq,
                topic: "t".into(),
                payload: vec![seq as u8],
                qos: 1,
                retain: false,
            }))));
        }
        data.extend(frame(&encode(&Record::Ack(2))));
        fs::write(d.0.join(LOG_FILE), &data).unwrap();
        let mut o = Outbox::open(&d.0, BIG).unwrap();
        assert_eq!(seqs(&o), vec![1, 3]);
        assert!(!o.recovery().damaged());
        o.ack(3).unwrap();
        drop(o);
        let o = Outbox::open(&d.0, BIG).unwrap();
        assert_eq!(seqs(&o), vec![1]);
    }

    #[test]
    fn compaction_keeps_live_entries_and_shrinks_the_log() {
        let d = TempDir::new("compact");
        let payload = vec![b'x'; 1000];
        let mut o = Outbox::open(&d.0, BIG).unwrap();
        let keep = o.push("keep/1", b"first", 1, true).unwrap();
        let mut max_len = 0;
        for i in 0..500 {
            let s = o.push("tmp", &payload, 1, false).unwrap();
            if i % 100 == 0 {
                o.push("keep/n", format!("{i}").as_bytes(), 1, false)
                    .unwrap();
            }
            o.ack(s).unwrap();
            max_len = max_len.max(o.log_bytes());
            assert_eq!(o.log_bytes(), log_len(&d));
        }
        // ~500 KB went through; the log never grew much past the threshold.
        assert!(max_len <= COMPACT_MIN_BYTES + 2048, "{max_len}");
        assert!(log_len(&d) <= COMPACT_MIN_BYTES + 2048);
        let live: Vec<(String, Vec<u8>)> = o
            .pending()
            .map(|e| (e.topic.clone(), e.payload.clone()))
            .collect();
        assert_eq!(live.len(), 6);
        assert_eq!(live[0], ("keep/1".to_string(), b"first".to_vec()));
        assert_eq!(live[5].1, b"400".to_vec());

        // An explicit compaction leaves only the live records.
        o.compact().unwrap();
        let expect = MAGIC.len() as u64 + (FRAME_HEADER + META_BODY) as u64 + o.live_bytes();
        assert_eq!(log_len(&d), expect);
        let before = seqs(&o);
        drop(o);
        assert!(!d.0.join(TMP_FILE).exists());
        let mut o = Outbox::open(&d.0, BIG).unwrap();
        assert_eq!(seqs(&o), before);
        assert_eq!(o.front().unwrap().seq, keep);
        assert!(o.front().unwrap().retain);
        assert!(o.push("t", b"", 0, false).unwrap() > *before.last().unwrap());
    }

    #[test]
    fn size_bound_drops_oldest_and_counts() {
        let d = TempDir::new("bound");
        // Each record: 8 frame + 17 fixed + 1 topic + 10 payload = 36 bytes.
        let max = 36 * 3;
        {
            let mut o = Outbox::open(&d.0, max).unwrap();
            for i in 0..5u8 {
                o.push("t", &[i; 10], 1, false).unwrap();
            }
            assert_eq!(seqs(&o), vec![3, 4, 5]);
            assert_eq!(o.dropped(), 2);
            assert_eq!(o.live_bytes(), max);
            // A bigger message drops two to make room.
            o.push("t", &[9; 40], 1, false).unwrap();
            assert_eq!(seqs(&o), vec![5, 6]);
            assert_eq!(o.dropped(), 4);
            // Too big to ever fit: refused, nothing dropped.
            assert!(o.push("t", &[0; 200], 1, false).is_err());
            assert_eq!(seqs(&o), vec![5, 6]);
            assert_eq!(o.dropped(), 4);
        }
        {
            // Persisted across a restart, including through a compaction.
            let mut o = Outbox::open(&d.0, max).unwrap();
            assert_eq!(seqs(&o), vec![5, 6]);
            assert_eq!(o.dropped(), 4);
            o.compact().unwrap();
        }
        {
            let o = Outbox::open(&d.0, max).unwrap();
            assert_eq!(o.dropped(), 4);
        }
        // A lower bound at open drops the oldest too, and remembers it.
        {
            let o = Outbox::open(&d.0, 100).unwrap();
            assert_eq!(seqs(&o), vec![6]);
            assert_eq!(o.dropped(), 5);
            assert_eq!(o.recovery().dropped_on_open, 1);
        }
        let o = Outbox::open(&d.0, max).unwrap();
        assert_eq!(seqs(&o), vec![6]);
        assert_eq!(o.dropped(), 5);
    }

    #[test]
    fn invalid_pushes_are_refused() {
        let d = TempDir::new("invalid");
        let mut o = Outbox::open(&d.0, BIG).unwrap();
        assert!(o.push("t", b"x", 3, false).is_err());
        let long = "x".repeat(70_000);
        assert!(o.push(&long, b"x", 1, false).is_err());
        assert!(o.is_empty());
        assert_eq!(o.push("t", b"x", 2, false).unwrap(), 1);
    }

    #[test]
    fn second_open_of_same_dir_is_refused() {
        let d = TempDir::new("lock");
        let o = Outbox::open(&d.0, BIG).unwrap();
        let err = Outbox::open(&d.0, BIG).unwrap_err();
        assert!(format!("{err:#}").contains("already open"), "{err:#}");
        drop(o);
        Outbox::open(&d.0, BIG).unwrap();
    }

    #[test]
    fn a_foreign_or_zeroed_log_is_moved_aside_not_clobbered() {
        for (tag, content) in [
            ("foreign", b"something else entirely".to_vec()),
            ("zeros", vec![0u8; 4096]),
        ] {
            let d = TempDir::new(tag);
            fs::create_dir_all(&d.0).unwrap();
            fs::write(d.0.join(LOG_FILE), &content).unwrap();
            let mut o = Outbox::open(&d.0, BIG).unwrap();
            assert!(o.is_empty(), "{tag}");
            let aside = o.recovery().moved_aside.clone().expect("moved aside");
            assert!(o.recovery().damaged());
            assert_eq!(fs::read(&aside).unwrap(), content, "{tag}: kept intact");
            assert!(aside
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("outbox.log.damaged-"));
            // The new log works and survives a reopen.
            o.push("t", b"x", 1, false).unwrap();
            drop(o);
            let o = Outbox::open(&d.0, BIG).unwrap();
            assert_eq!(seqs(&o), vec![1]);
            assert!(o.recovery().moved_aside.is_none());
        }
    }

    #[test]
    fn a_log_cut_inside_its_header_is_started_afresh_and_said() {
        let d = TempDir::new("torn-magic");
        fs::create_dir_all(&d.0).unwrap();
        fs::write(d.0.join(LOG_FILE), &MAGIC[..3]).unwrap();
        let o = Outbox::open(&d.0, BIG).unwrap();
        assert!(o.is_empty());
        assert_eq!(o.recovery().truncated_header_bytes, 3);
        assert!(o.recovery().damaged());
        drop(o);
        // An empty log is a normal first start, not damage.
        fs::write(d.0.join(LOG_FILE), b"").unwrap();
        let o = Outbox::open(&d.0, BIG).unwrap();
        assert_eq!(o.recovery(), &Recovery::default());
    }

    #[test]
    fn stale_temp_file_is_removed() {
        let d = TempDir::new("tmp");
        three(&d);
        fs::write(d.0.join(TMP_FILE), b"half a compaction").unwrap();
        let o = Outbox::open(&d.0, BIG).unwrap();
        assert_eq!(seqs(&o), vec![1, 2, 3]);
        assert!(!d.0.join(TMP_FILE).exists());
    }
}
