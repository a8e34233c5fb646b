//! The exit codes of every `stickylb` command (`run`, the control commands, `top`).

use std::process::ExitCode;

/// Done.
pub const OK: u8 = 0;
/// Refused by the agent (its reason is printed), or the command failed (the agent could not
/// start, `decap` could not attach, ...): the same code as `ExitCode::FAILURE`.
pub const REFUSED: u8 = 1;
/// Usage error (bad arguments).
pub const USAGE: u8 = 2;
/// Agent not reachable (socket missing, refused, or timed out).
pub const UNREACHABLE: u8 = 3;

/// The exit code `code`.
pub fn code(code: u8) -> ExitCode {
    ExitCode::from(code)
}
