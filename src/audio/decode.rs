//! Streaming WAV/FLAC decoding to mono f32, with errors that name the file.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::panic::{catch_unwind, AssertUnwindSafe};
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
    mono: bool,
    frames_read: u64,
    replaced: u64,
    truncated: Option<String>,
    done: bool,
}

impl FileDecoder {
    /// Opens `path`, probing the content (not the extension) for WAV or FLAC.
    pub fn open(path: &Path) -> Result<Self, DecodeError> {
        let mut file = File::open(path).map_err(|source| DecodeError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if len == 0 {
            return Err(DecodeError::Empty {
                path: path.to_path_buf(),
            });
        }
        check_wav_header(&mut file).map_err(|detail| DecodeError::Unsupported {
            path: path.to_path_buf(),
            detail,
        })?;
        file.seek(SeekFrom::Start(0))
            .map_err(|source| DecodeError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        Self::from_media(path, Box::new(file))
    }

    /// Decodes `bytes` held in memory (an upload), named `name` in errors; the same
    /// checks as [`FileDecoder::open`].
    pub fn from_bytes(name: &str, bytes: Vec<u8>) -> Result<Self, DecodeError> {
        let path = Path::new(name);
        if bytes.is_empty() {
            return Err(DecodeError::Empty {
                path: path.to_path_buf(),
            });
        }
        let mut cursor = std::io::Cursor::new(bytes);
        check_wav_header(&mut cursor).map_err(|detail| DecodeError::Unsupported {
            path: path.to_path_buf(),
            detail,
        })?;
        cursor.set_position(0);
        Self::from_media(path, Box::new(cursor))
    }

    fn from_media(
        path: &Path,
        media: Box<dyn symphonia::core::io::MediaSource>,
    ) -> Result<Self, DecodeError> {
        let unsupported = |detail: String| DecodeError::Unsupported {
            path: path.to_path_buf(),
            detail,
        };
        let mss = MediaSourceStream::new(media, Default::default());
        let fmt_err = |detail: String| DecodeError::Format {
            path: path.to_path_buf(),
            detail,
        };
        let probed = catch_unwind(AssertUnwindSafe(|| {
            symphonia::default::get_probe().probe(
                &Hint::new(),
                mss,
                FormatOptions::default(),
                MetadataOptions::default(),
            )
        }))
        .map_err(|_| fmt_err(READER_PANIC.into()))?;
        let format = probed.map_err(|e| fmt_err(e.to_string()))?;
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
        let decoder = catch_unwind(AssertUnwindSafe(|| {
            symphonia::default::get_codecs()
                .make_audio_decoder(&params, &AudioDecoderOptions::default())
        }))
        .map_err(|_| fmt_err(READER_PANIC.into()))?
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
            mono: true,
            frames_read: 0,
            replaced: 0,
            truncated: None,
            done: false,
        })
    }

    /// From now on [`FileDecoder::next_chunk`] appends every channel, interleaved
    /// ([`AudioInfo::channels`] per frame), instead of mixing them to mono.
    pub fn keep_channels(&mut self) {
        self.mono = false;
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

    /// Appends the next packet's audio, mixed to mono (unless
    /// [`FileDecoder::keep_channels`]), to `out`: every sample finite
    /// and within ±[`super::SAMPLE_LIMIT`]. Returns `Ok(false)`
    /// at the end of the stream.
    pub fn next_chunk(&mut self, out: &mut Vec<f32>) -> Result<bool, DecodeError> {
        while !self.done {
            let Ok(next) = catch_unwind(AssertUnwindSafe(|| self.format.next_packet())) else {
                return self.reader_panicked();
            };
            let packet = match next {
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
            let (decoder, packet) = (&mut self.decoder, &packet);
            // Moving the borrow in (not reborrowing it) lets the buffer outlive the call.
            let decode = move || {
                let d = decoder;
                d.decode(packet)
            };
            let Ok(decoded) = catch_unwind(AssertUnwindSafe(decode)) else {
                return self.reader_panicked();
            };
            match decoded {
                Ok(buf) => {
                    let ch = buf.spec().channels().count().max(1);
                    let frames = buf.frames();
                    if frames == 0 {
                        continue;
                    }
                    self.interleaved.clear();
                    buf.copy_to_vec_interleaved(&mut self.interleaved);
                    self.replaced += sanitize(&mut self.interleaved) as u64;
                    if self.mono {
                        mix_to_mono(&self.interleaved, ch, out);
                    } else if ch == self.info.channels {
                        out.extend_from_slice(&self.interleaved);
                    } else {
                        // A packet whose layout differs from the header's: its
                        // mono mix goes to every channel, so frames stay whole.
                        let mut m = Vec::with_capacity(frames);
                        mix_to_mono(&self.interleaved, ch, &mut m);
                        for v in m {
                            out.extend(std::iter::repeat_n(v, self.info.channels));
                        }
                    }
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

    /// The WAV/FLAC reader panicked on malformed data (a bug of the reader, caught so
    /// bad input cannot kill the process): the stream ends there, as if truncated
    /// when audio came before, else as an error. The reader is not used again.
    fn reader_panicked(&mut self) -> Result<bool, DecodeError> {
        self.done = true;
        if self.frames_read > 0 {
            self.note_truncation(READER_PANIC);
            Ok(false)
        } else {
            Err(self.decode_error(READER_PANIC.into()))
        }
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

/// The error detail of a file on which the WAV/FLAC reader panicked (caught, so bad
/// input cannot kill the process; [`check_wav_header`] keeps the known cases from
/// getting that far).
pub const READER_PANIC: &str = "the data is malformed in a way the WAV/FLAC reader cannot handle";

/// Most channels a WAV file may declare: the WAV reader maps at most 28 channel
/// positions, and larger counts overflow its header arithmetic.
pub const MAX_WAV_CHANNELS: u16 = 28;

/// Chunks of a RIFF file walked before giving up looking for `fmt `.
const MAX_RIFF_CHUNKS: usize = 1024;

/// How far into a file the probe looks for a format marker (symphonia's default).
const PROBE_DEPTH: u64 = 1 << 20;

/// Rejects WAV headers that the WAV reader (symphonia 0.6) cannot survive: its
/// header arithmetic overflows — a panic in debug builds, nonsense otherwise — for
/// more than [`MAX_WAV_CHANNELS`] channels, or for a WAVE_FORMAT_EXTENSIBLE channel
/// mask with fewer bits than channels and bit 31 set. Anything else, WAV or not, is
/// left to the reader.
///
/// The probe finds a RIFF header anywhere in the first MB (after junk, say), so when
/// the file starts with neither a RIFF header nor a FLAC marker, every RIFF header
/// there is checked. Reads chunk headers only, seeking past chunk bodies.
pub fn check_wav_header<R: Read + Seek>(r: &mut R) -> Result<(), String> {
    let riff_at = |b: &[u8], p: usize| {
        b.len() >= p + 12
            && matches!(&b[p..p + 4], b"RIFF" | b"RF64")
            && &b[p + 8..p + 12] == b"WAVE"
    };
    let mut head = Vec::with_capacity(12);
    r.by_ref()
        .take(12)
        .read_to_end(&mut head)
        .map_err(|e| format!("cannot read the file: {e}"))?;
    if riff_at(&head, 0) {
        return check_riff_chunks(r);
    }
    if head.starts_with(b"fLaC") {
        return Ok(());
    }
    r.seek(SeekFrom::Start(0))
        .map_err(|e| format!("cannot read the file: {e}"))?;
    let mut window = Vec::new();
    r.by_ref()
        .take(PROBE_DEPTH)
        .read_to_end(&mut window)
        .map_err(|e| format!("cannot read the file: {e}"))?;
    for p in (0..window.len()).filter(|&p| riff_at(&window, p)) {
        r.seek(SeekFrom::Start(p as u64 + 12))
            .map_err(|e| format!("cannot read the file: {e}"))?;
        check_riff_chunks(r)?;
    }
    Ok(())
}

/// Walks the chunks of a RIFF/WAVE file from just after its 12-byte header,
/// checking each `fmt ` chunk, up to the `data` chunk.
fn check_riff_chunks<R: Read + Seek>(r: &mut R) -> Result<(), String> {
    for _ in 0..MAX_RIFF_CHUNKS {
        let mut ch = [0u8; 8];
        if r.read_exact(&mut ch).is_err() {
            break;
        }
        let size = u32::from_le_bytes([ch[4], ch[5], ch[6], ch[7]]) as u64;
        let mut body_read = 0u64;
        match &ch[..4] {
            b"fmt " => {
                let mut body = Vec::with_capacity(40);
                let n = r
                    .by_ref()
                    .take(size.min(40))
                    .read_to_end(&mut body)
                    .map_err(|e| format!("cannot read the WAV header: {e}"))?;
                body_read = n as u64;
                check_wav_fmt(&body)?;
            }
            // The audio follows; the reader stops walking chunks here.
            b"data" => break,
            _ => {}
        }
        let skip = size + (size & 1) - body_read;
        if r.seek(SeekFrom::Current(skip as i64)).is_err() {
            break;
        }
    }
    Ok(())
}

/// The checks of [`check_wav_header`] on one `fmt ` chunk body.
fn check_wav_fmt(body: &[u8]) -> Result<(), String> {
    if body.len() < 16 {
        return Ok(());
    }
    let u16_at = |i: usize| u16::from_le_bytes([body[i], body[i + 1]]);
    let (tag, channels) = (u16_at(0), u16_at(2));
    if channels > MAX_WAV_CHANNELS {
        return Err(format!(
            "the WAV header declares {channels} channels; hearken reads WAV files of 1 to \
             {MAX_WAV_CHANNELS} channels"
        ));
    }
    if tag == 0xFFFE && body.len() >= 24 {
        let mask = u32::from_le_bytes([body[20], body[21], body[22], body[23]]);
        if mask.count_ones() < channels as u32 && mask & 0x8000_0000 != 0 {
            return Err(format!(
                "the WAV channel mask 0x{mask:08x} does not describe its {channels} channels"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A RIFF/WAVE header: a `LIST` chunk, then `fmt ` (tag, channels, 16-bit,
    /// extensible with `mask` when given), then an empty `data` chunk.
    fn header(tag: u16, channels: u16, mask: Option<u32>) -> Vec<u8> {
        let mut fmt = Vec::new();
        fmt.extend(tag.to_le_bytes());
        fmt.extend(channels.to_le_bytes());
        fmt.extend(8000u32.to_le_bytes());
        fmt.extend((16000 * channels as u32).to_le_bytes());
        fmt.extend(channels.wrapping_mul(2).to_le_bytes());
        fmt.extend(16u16.to_le_bytes());
        if let Some(m) = mask {
            fmt.extend(22u16.to_le_bytes());
            fmt.extend(16u16.to_le_bytes());
            fmt.extend(m.to_le_bytes());
            fmt.extend([
                1, 0, 0, 0, 0, 0, 0x10, 0, 0x80, 0, 0, 0xaa, 0, 0x38, 0x9b, 0x71,
            ]);
        }
        let mut b = b"RIFF\0\0\0\0WAVELIST\x03\0\0\0abc\0fmt ".to_vec();
        b.extend((fmt.len() as u32).to_le_bytes());
        b.extend(fmt);
        b.extend(b"data\0\0\0\0");
        b
    }

    fn check(b: &[u8]) -> Result<(), String> {
        check_wav_header(&mut Cursor::new(b))
    }

    #[test]
    fn wav_headers_the_reader_cannot_survive_are_rejected() {
        assert_eq!(check(&header(1, 2, None)), Ok(()));
        assert_eq!(check(&header(1, MAX_WAV_CHANNELS, None)), Ok(()));
        let e = check(&header(1, 65535, None)).unwrap_err();
        assert!(e.contains("65535 channels") && e.contains("1 to 28"), "{e}");
        assert!(check(&header(0xFFFE, 40, Some(0))).is_err());
        // An extensible mask with bit 31 and too few bits overflows the reader's
        // mask repair; with enough bits it is repaired by dropping bits, fine.
        let e = check(&header(0xFFFE, 2, Some(0x8000_0000))).unwrap_err();
        assert!(e.contains("0x80000000") && e.contains("2 channels"), "{e}");
        assert_eq!(check(&header(0xFFFE, 2, Some(0x8000_0003))), Ok(()));
        assert_eq!(check(&header(0xFFFE, 6, Some(0x3f))), Ok(()));
    }

    #[test]
    fn other_files_are_left_to_the_reader() {
        assert_eq!(check(b""), Ok(()));
        assert_eq!(check(b"fLaC\0\0\0\x22"), Ok(()));
        assert_eq!(check(b"RIFF\0\0\0\0WAVE"), Ok(()));
        // A fmt chunk cut short, a chunk size past the end, a 4 GB data chunk.
        let h = header(1, 65535, None);
        assert_eq!(check(&h[..40]), Ok(()));
        let mut lie = h.clone();
        lie[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(check(&lie), Ok(()), "the fmt chunk is never reached");
        // Junk in front: the probe finds the RIFF header further in, and so does the
        // check (found by fuzzing).
        let mut junk = b"ata \0\0\0\0garbage garbage ".to_vec();
        junk.extend(header(1, 20000, None));
        assert!(check(&junk).unwrap_err().contains("20000 channels"));
        let mut junk = vec![0u8; 3000];
        junk.extend(header(1, 2, None));
        assert_eq!(check(&junk), Ok(()));
        let mut big = header(1, 1, None);
        let n = big.len();
        big[n - 4..].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(check(&big), Ok(()));
    }
}
