//! Subcommands: each parses its arguments, wires the edges to the core and
//! prints. No logic of their own beyond that.
use tcpwatch::{capture::CaptureError, loader::LoadError};

pub mod daemon;
pub mod replay;
pub mod states;
pub mod trace;

/// The documented exit code for an error: the loader's codes (69, 77) where
/// loading failed, 1 otherwise.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if let Some(l) = cause.downcast_ref::<LoadError>() {
            return l.exit_code() as u8;
        }
        if let Some(CaptureError::Load(l)) = cause.downcast_ref::<CaptureError>() {
            return l.exit_code() as u8;
        }
    }
    1
}
