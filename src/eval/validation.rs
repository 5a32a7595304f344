//! The validation set `hearken train` leaves beside its detectors, so that
//! `hearken adapt` can tell what a change costs in recall without the training
//! recordings: for every event of the out-of-fold calibration mixtures, the hops
//! around it with the detector's out-of-fold score and, where that score reaches the
//! detector's `off` threshold, the model's pooled embedding and class log-odds
//! (8-bit, as in the home store). Hops under `off` can neither start nor hold an event after adapting
//! (which only lowers scores and raises thresholds), so their score is enough.
//!
//! File `validation.hkv`: the magic `HKVALID1`, a `u32 LE` length and that many
//! bytes of JSON ([`Header`]), the events (below), and the CRC-32 of everything
//! before it (`u32 LE`). Per event: group index `u16`, onset and offset `f32`
//! seconds, hop count `u16`; per hop: start, end and score `f32`, then the
//! embedding and the class log-odds, each as length `u16` (0 or the model's),
//! scale `f32` and that many `i8`.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::publish::outbox::crc32;

/// File name in a detectors folder.
pub const FILE: &str = "validation.hkv";
const MAGIC: &[u8; 8] = b"HKVALID1";

/// What the events belong to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// Model whose embedding the hops carry.
    pub model: String,
    /// Embedding size.
    pub embedding_dim: usize,
    /// Window and hop the scores were made with, seconds.
    pub window_s: f64,
    /// See `window_s`.
    pub hop_s: f64,
    /// Groups, indexed by the events.
    pub groups: Vec<String>,
    /// Hours of event-free background the calibration mixtures held.
    pub background_h: f64,
}

/// One hop of a validation event.
#[derive(Debug, Clone, PartialEq)]
pub struct ValHop {
    /// Window start, seconds of its mixture.
    pub start_s: f32,
    /// Window end.
    pub end_s: f32,
    /// The detector's out-of-fold score (0 where its gate closed).
    pub score: f32,
    /// Pooled embedding; empty when `score` is under the detector's `off`.
    pub embedding: Vec<f32>,
    /// Log-odds of the model's class scores (max-pooled); empty likewise.
    pub classes: Vec<f32>,
}

/// One event of the calibration mixtures, with the hops around it.
#[derive(Debug, Clone, PartialEq)]
pub struct ValEvent {
    /// Index into [`Header::groups`].
    pub group: usize,
    /// Event onset, seconds of its mixture.
    pub onset_s: f32,
    /// Event offset.
    pub offset_s: f32,
    /// Hops from shortly before the onset to shortly after the offset, in order.
    pub hops: Vec<ValHop>,
}

/// A whole validation set.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidationSet {
    /// What it belongs to.
    pub header: Header,
    /// Events of every group.
    pub events: Vec<ValEvent>,
}

pub use crate::store::quantise;

impl ValidationSet {
    /// The set as file bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = MAGIC.to_vec();
        let head = serde_json::to_vec(&self.header).expect("a header always serialises");
        b.extend_from_slice(&(head.len() as u32).to_le_bytes());
        b.extend_from_slice(&head);
        for e in &self.events {
            b.extend_from_slice(&(e.group as u16).to_le_bytes());
            b.extend_from_slice(&e.onset_s.to_le_bytes());
            b.extend_from_slice(&e.offset_s.to_le_bytes());
            let hops = &e.hops[..e.hops.len().min(u16::MAX as usize)];
            b.extend_from_slice(&(hops.len() as u16).to_le_bytes());
            for h in hops {
                for v in [h.start_s, h.end_s, h.score] {
                    b.extend_from_slice(&v.to_le_bytes());
                }
                for v in [&h.embedding, &h.classes] {
                    let (scale, q) = quantise(v);
                    b.extend_from_slice(&(q.len() as u16).to_le_bytes());
                    b.extend_from_slice(&scale.to_le_bytes());
                    b.extend(q.iter().map(|&v| v as u8));
                }
            }
        }
        let c = crc32(&b);
        b.extend_from_slice(&c.to_le_bytes());
        b
    }

    /// Parses file bytes; errors say what is wrong.
    pub fn from_bytes(data: &[u8]) -> Result<ValidationSet> {
        if data.len() < MAGIC.len() + 8 || &data[..MAGIC.len()] != MAGIC {
            bail!("not a validation set (no HKVALID1 magic)");
        }
        let (body, tail) = data.split_at(data.len() - 4);
        if crc32(body) != u32::from_le_bytes(tail.try_into().unwrap()) {
            bail!("damaged: its checksum does not match");
        }
        let mut c = &body[MAGIC.len()..];
        let mut take = |n: usize| -> Result<&[u8]> {
            if c.len() < n {
                bail!("cut short");
            }
            let (a, b) = c.split_at(n);
            c = b;
            Ok(a)
        };
        let n = u32::from_le_bytes(take(4)?.try_into().unwrap()) as usize;
        let header: Header =
            serde_json::from_slice(take(n)?).map_err(|e| anyhow!("bad header: {e}"))?;
        let mut events = Vec::new();
        let f = |b: &[u8]| f32::from_le_bytes(b.try_into().unwrap());
        let u16_ = |b: &[u8]| u16::from_le_bytes(b.try_into().unwrap()) as usize;
        loop {
            let Ok(g) = take(2) else { break };
            let group = u16_(g);
            if group >= header.groups.len() {
                bail!("an event names group {group} of {}", header.groups.len());
            }
            let onset_s = f(take(4)?);
            let offset_s = f(take(4)?);
            let n = u16_(take(2)?);
            let mut hops = Vec::with_capacity(n);
            for _ in 0..n {
                let start_s = f(take(4)?);
                let end_s = f(take(4)?);
                let score = f(take(4)?);
                let d = u16_(take(2)?);
                let scale = f(take(4)?);
                if d != 0 && d != header.embedding_dim {
                    bail!(
                        "a hop's embedding has {d} values, not {}",
                        header.embedding_dim
                    );
                }
                let embedding = take(d)?.iter().map(|&v| v as i8 as f32 * scale).collect();
                let n = u16_(take(2)?);
                let scale = f(take(4)?);
                let classes = take(n)?.iter().map(|&v| v as i8 as f32 * scale).collect();
                hops.push(ValHop {
                    start_s,
                    end_s,
                    score,
                    embedding,
                    classes,
                });
            }
            events.push(ValEvent {
                group,
                onset_s,
                offset_s,
                hops,
            });
        }
        Ok(ValidationSet { header, events })
    }

    /// Writes the set into the detectors folder `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let p = dir.join(FILE);
        std::fs::write(&p, self.to_bytes())
            .with_context(|| format!("cannot write the validation set {}", p.display()))
    }

    /// Reads `dir`'s validation set; `None` when there is none.
    pub fn load(dir: &Path) -> Result<Option<ValidationSet>> {
        let p = dir.join(FILE);
        match std::fs::read(&p) {
            Ok(d) => ValidationSet::from_bytes(&d).map(Some).map_err(|e| {
                anyhow!(
                    "validation set {}: {e:#}; retrain the detectors with `hearken train`",
                    p.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(anyhow!(
                "cannot read the validation set {}: {e}",
                p.display()
            )),
        }
    }

    /// The events of `group`.
    pub fn of<'a>(&'a self, group: &str) -> impl Iterator<Item = &'a ValEvent> + 'a {
        let i = self.header.groups.iter().position(|g| g == group);
        self.events.iter().filter(move |e| Some(e.group) == i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set() -> ValidationSet {
        ValidationSet {
            header: Header {
                model: "m".into(),
                embedding_dim: 3,
                window_s: 2.0,
                hop_s: 0.5,
                groups: vec!["glass".into(), "siren".into()],
                background_h: 1.5,
            },
            events: vec![ValEvent {
                group: 1,
                onset_s: 3.0,
                offset_s: 4.5,
                hops: vec![
                    ValHop {
                        start_s: 1.0,
                        end_s: 3.0,
                        score: 0.1,
                        embedding: vec![],
                        classes: vec![],
                    },
                    ValHop {
                        start_s: 1.5,
                        end_s: 3.5,
                        score: 0.9,
                        embedding: vec![1.0, -1.0, 0.0],
                        classes: vec![-127.0, 127.0],
                    },
                ],
            }],
        }
    }

    #[test]
    fn a_set_round_trips_and_damage_is_refused() {
        let s = set();
        let b = s.to_bytes();
        let back = ValidationSet::from_bytes(&b).unwrap();
        assert_eq!(back, s, "these values quantise exactly");
        assert_eq!(back.of("siren").count(), 1);
        assert_eq!(back.of("glass").count(), 0);
        let mut bad = b.clone();
        bad[20] ^= 1;
        assert!(ValidationSet::from_bytes(&bad).is_err());
        assert!(ValidationSet::from_bytes(&b[..b.len() - 3]).is_err());
        assert!(ValidationSet::from_bytes(b"nonsense").is_err());
    }
}
