//! Scored mixtures on disk: what the pipeline said about every window of a training
//! mixture, with the mixture's truth, so `hearken train --cache DIR` can try other
//! candidates without running the model over hours of audio again.
//!
//! One file per mixture: the magic `HKHOPS3\n`, a JSON line with the truth and the
//! fold, then per window `start_s`, `end_s`, `hop_s` (f64), `dbfs` (f32) and five
//! length-prefixed (u32) f32 vectors (mean scores, max scores, embedding, a
//! fine-tuned network's group outputs and its own AudioSet scores), all
//! little-endian. Files are written to a temporary name and renamed, so a crash
//! never leaves a half file under the real name; a file that does not parse is
//! treated as absent.

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::metrics::TruthEvent;
use crate::detect::OwnedHop;

const MAGIC: &[u8] = b"HKHOPS3\n";

/// A mixture's truth, fold and background hours (the JSON line).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// Cross-validation fold.
    pub fold: usize,
    /// Background hours that count for false alarms.
    pub background_h: f64,
    /// Events placed.
    pub truth: Vec<TruthEvent>,
}

/// Writes `header` and `hops` to `path` (atomically: temporary file, then rename).
pub fn save(path: &Path, header: &Header, hops: &[OwnedHop]) -> Result<()> {
    let tmp = path.with_extension("partial");
    let write = || -> std::io::Result<()> {
        let mut w = BufWriter::new(std::fs::File::create(&tmp)?);
        w.write_all(MAGIC)?;
        serde_json::to_writer(&mut w, header)?;
        w.write_all(b"\n")?;
        w.write_all(&(hops.len() as u64).to_le_bytes())?;
        for h in hops {
            for v in [h.start_s, h.end_s, h.hop_s] {
                w.write_all(&v.to_le_bytes())?;
            }
            w.write_all(&h.dbfs.to_le_bytes())?;
            for v in [
                &h.scores_mean,
                &h.scores_max,
                &h.embedding,
                &h.heads,
                &h.net_scores,
            ] {
                w.write_all(&(v.len() as u32).to_le_bytes())?;
                for x in v.iter() {
                    w.write_all(&x.to_le_bytes())?;
                }
            }
        }
        w.into_inner().map_err(|e| e.into_error())?.sync_all()
    };
    write().with_context(|| format!("cannot write the mixture cache {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot write the mixture cache {}", path.display()))
}

/// Reads a file [`save`] wrote; `None` when it is missing or does not parse.
pub fn load(path: &Path) -> Option<(Header, Vec<OwnedHop>)> {
    let mut r = BufReader::new(std::fs::File::open(path).ok()?);
    let mut magic = [0u8; MAGIC.len()];
    r.read_exact(&mut magic).ok()?;
    if magic != MAGIC {
        return None;
    }
    let mut line = Vec::new();
    loop {
        let mut b = [0u8; 1];
        r.read_exact(&mut b).ok()?;
        if b[0] == b'\n' {
            break;
        }
        line.push(b[0]);
    }
    let header: Header = serde_json::from_slice(&line).ok()?;
    let n = u64::from_le_bytes(read_array(&mut r)?);
    let mut hops = Vec::with_capacity(n.min(1 << 20) as usize);
    for _ in 0..n {
        let f64_ = |r: &mut BufReader<_>| read_array(r).map(f64::from_le_bytes);
        let (start_s, end_s, hop_s) = (f64_(&mut r)?, f64_(&mut r)?, f64_(&mut r)?);
        let dbfs = f32::from_le_bytes(read_array(&mut r)?);
        let mut vecs = [Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new()];
        for v in vecs.iter_mut() {
            let len = u32::from_le_bytes(read_array(&mut r)?) as usize;
            if len > 1 << 16 {
                return None;
            }
            let mut bytes = vec![0u8; len * 4];
            r.read_exact(&mut bytes).ok()?;
            *v = bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect();
        }
        let [scores_mean, scores_max, embedding, heads, net_scores] = vecs;
        hops.push(OwnedHop {
            tones: Vec::new(),
            start_s,
            end_s,
            hop_s,
            scores_mean,
            scores_max,
            dbfs,
            embedding,
            heads,
            net_scores,
        });
    }
    // Trailing bytes mean the file is not what we wrote.
    r.read(&mut [0u8; 1]).ok().filter(|&k| k == 0)?;
    Some((header, hops))
}

fn read_array<const N: usize>(r: &mut impl Read) -> Option<[u8; N]> {
    let mut b = [0u8; N];
    r.read_exact(&mut b).ok()?;
    Some(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hop(i: usize) -> OwnedHop {
        OwnedHop {
            start_s: i as f64 * 0.5,
            end_s: i as f64 * 0.5 + 2.0,
            hop_s: 0.5,
            scores_mean: vec![0.1, 0.2 * i as f32],
            scores_max: vec![0.3, 0.4],
            dbfs: -31.5,
            embedding: vec![1.0, -2.0, 3.5],
            heads: vec![0.25],
            net_scores: vec![0.5, 0.125],
            tones: vec![],
        }
    }

    #[test]
    fn round_trips_and_refuses_damaged_files() {
        let dir = std::env::temp_dir().join(format!("hearken-hops-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.hops");
        let header = Header {
            fold: 1,
            background_h: 0.25,
            truth: vec![TruthEvent {
                group: "glass".into(),
                onset_s: 60.0,
                offset_s: 61.5,
            }],
        };
        let hops: Vec<OwnedHop> = (0..5).map(hop).collect();
        save(&path, &header, &hops).unwrap();
        assert_eq!(load(&path), Some((header, hops)));
        assert!(!path.with_extension("partial").exists());

        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        assert_eq!(load(&path), None, "truncated");
        let mut extra = bytes.clone();
        extra.push(0);
        std::fs::write(&path, &extra).unwrap();
        assert_eq!(load(&path), None, "trailing bytes");
        std::fs::write(&path, b"").unwrap();
        assert_eq!(load(&path), None, "empty");
        assert_eq!(load(&dir.join("absent")), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
