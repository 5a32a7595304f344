//! Streaming WAV/FLAC decoding to mono f32, with errors that name the file.

use std::fs::File;
use std::path::{Path, PathBuf};

use symphonia::core::codecs::audio::{AudioDecoder, AudioDecoderOptions};
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, FormatReader, TrackType};
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;

use super::{mix_to_mono, sanitize};

/// Lowest and highest sample rates hearken accepts from a file.
pub const RATE_RANGE: std::ops::RangeInclusive<u32> = 4000..=384_000;

/// Why a file could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The file could not be opened.
    #[error("{path}: cannot open: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file has no bytes.
    #[error("{path}: the file is empty (0 bytes)")]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// The bytes are not a WAV or FLAC stream we understand.
    #[error("{path}: not a readable WAV or FLAC file ({detail})")]
    Format {
        /// The file.
        path: PathBuf,
        /// What symphonia said.
        detail: String,
    },
    /// The stream's parameters are outside what hearken handles.
    #[error("{path}: {detail}")]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The stream broke in a way that cannot be skipped.
    #[error("{path}: decoding failed after {seconds:.2} s: {detail}")]
    Decode {
        /// The file.
        path: PathBuf,
        /// Audio decoded before the failure.
        seconds: f64,
        /// What went wrong.
        detail: String,
    },
}

/// Facts about an opened file.
#[derive(Debug, Clone)]
pub struct AudioInfo {
    /// Sample rate, Hz.
    pub sample_rate: u32,
    /// Channel count of the file (it is mixed to mono on read).
    pub channels: usize,
    /// Frames the header announces, when it does.
    pub frames: Option<u64>,
}

/// A file opened for streaming: yields mono chunks until the end.
pub struct FileDecoder {
    path: PathBuf,
    format: Box<dyn FormatReader>,
    decoder: Box<dyn AudioDecoder>,
    track_id: u32,
    info: AudioInfo,
    interleaved: Vec<f32>,
    frames_read: u64,
    replaced: u64,
    truncated: Option<String>,
    done: bool,
}

impl FileDecoder {
    /// Opens `path`, probing the content (not the extension) for WAV or FLAC.
    pub fn open(path: &Path) -> Result<Self, DecodeError> {
        let file = File::open(path).map_err(|source| DecodeError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if len == 0 {
            return Err(DecodeError::Empty {
                path: path.to_path_buf(),
            });
        }
        let mss = MediaSourceStream::new(Box::new(file), Default::default());
        let fmt_err = |detail: String| DecodeError::Format {
            path: path.to_path_buf(),
            detail,
        };
        let format = symphonia::default::get_probe()
            .probe(
                &Hint::new(),
                mss,
                FormatOptions::default(),
                MetadataOptions::default(),
            )
            .map_err(|e| fmt_err(e.to_string()))?;
        let track = format
            .default_track(TrackType::Audio)
            .ok_or_else(|| fmt_err("no audio track".into()))?;
        let track_id = track.id;
        let params = track
            .codec_params
            .as_ref()
            .and_then(|c| c.audio())
            .ok_or_else(|| fmt_err("no audio codec parameters".into()))?
            .clone();
        let unsupported = |detail: String| DecodeError::Unsupported {
            path: path.to_path_buf(),
            detail,
        };
        let sample_rate = params
            .sample_rate
            .ok_or_else(|| unsupported("the header gives no sample rate".into()))?;
        if !RATE_RANGE.contains(&sample_rate) {
            return Err(unsupported(format!(
                "sample rate {sample_rate} Hz is outside {}..={} Hz",
                RATE_RANGE.start(),
                RATE_RANGE.end()
            )));
        }
        let channels = params.channels.as_ref().map(|c| c.count()).unwrap_or(0);
        if channels == 0 {
            return Err(unsupported("the header gives no channels".into()));
        }
        let frames = track.num_frames;
        let decoder = symphonia::default::get_codecs()
            .make_audio_decoder(&params, &AudioDecoderOptions::default())
            .map_err(|e| unsupported(format!("unsupported codec: {e}")))?;
        Ok(FileDecoder {
            path: path.to_path_buf(),
            format,
            decoder,
            track_id,
            info: AudioInfo {
                sample_rate,
                channels,
                frames,
            },
            interleaved: Vec::new(),
            frames_read: 0,
            replaced: 0,
            truncated: None,
            done: false,
        })
    }

    /// Facts from the header.
    pub fn info(&self) -> &AudioInfo {
        &self.info
    }

    /// Frames decoded so far.
    pub fn frames_read(&self) -> u64 {
        self.frames_read
    }

    /// Samples (counted per channel, before mixing) replaced so far because they were
    /// NaN, infinite or absurdly large (see [`super::sanitize_sample`]): what a damaged
    /// float file holds. The rest of the audio is delivered as usual.
    pub fn replaced_samples(&self) -> u64 {
        self.replaced
    }

    /// Set when the stream ended early (a truncated file): what happened. The audio
    /// before that point was still delivered.
    pub fn truncation(&self) -> Option<&str> {
        self.truncated.as_deref()
    }

    /// Appends the next packet's audio, mixed to mono, to `out`: every sample finite
    /// and within ±[`super::SAMPLE_LIMIT`]. Returns `Ok(false)`
    /// at the end of the stream.
    pub fn next_chunk(&mut self, out: &mut Vec<f32>) -> Result<bool, DecodeError> {
        while !self.done {
            let packet = match self.format.next_packet() {
                Ok(Some(p)) => p,
                Ok(None) => {
                    self.done = true;
                    break;
                }
                Err(SymError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    self.done = true;
                    self.note_truncation("the file ends before its header says it should");
                    break;
                }
                Err(e) => {
                    if self.frames_read > 0 {
                        self.done = true;
                        self.note_truncation(&e.to_string());
                        break;
                    }
                    return Err(self.decode_error(e.to_string()));
                }
            };
            if packet.track_id != self.track_id {
                continue;
            }
            match self.decoder.decode(&packet) {
                Ok(buf) => {
                    let ch = buf.spec().channels().count().max(1);
                    let frames = buf.frames();
                    if frames == 0 {
                        continue;
                    }
                    self.interleaved.clear();
                    buf.copy_to_vec_interleaved(&mut self.interleaved);
                    self.replaced += sanitize(&mut self.interleaved) as u64;
                    mix_to_mono(&self.interleaved, ch, out);
                    self.frames_read += frames as u64;
                    return Ok(true);
                }
                // A damaged packet: skip it, as players do, and keep the rest.
                Err(SymError::DecodeError(e)) => {
                    self.note_truncation(&format!("skipped a damaged packet: {e}"));
                    continue;
                }
                Err(SymError::IoError(e)) => {
                    self.done = true;
                    self.note_truncation(&e.to_string());
                    break;
                }
                Err(e) => return Err(self.decode_error(e.to_string())),
            }
        }
        Ok(false)
    }

    fn note_truncation(&mut self, what: &str) {
        if self.truncated.is_none() {
            self.truncated = Some(format!(
                "{}: {} (after {:.2} s of audio)",
                self.path.display(),
                what,
                self.frames_read as f64 / self.info.sample_rate as f64
            ));
        }
    }

    fn decode_error(&self, detail: String) -> DecodeError {
        DecodeError::Decode {
            path: self.path.clone(),
            seconds: self.frames_read as f64 / self.info.sample_rate as f64,
            detail,
        }
    }
}
