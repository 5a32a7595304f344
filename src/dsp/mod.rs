//! Pure signal processing: mel filterbanks and the streaming log-mel frontend.

pub mod frontend;
pub mod mel;

pub use frontend::{FrontendParams, LogMel, SpectrumKind, WindowKind};
pub use mel::{mel_filterbank, MelBank, MelScale};
