//! The config parser (`lb_model::config::parse`) on arbitrary text.
//!
//! Invariants: it never panics; a refusal names the origin and a line inside the text
//! (`fuzz.toml:LINE:...`) and is not empty; an accepted configuration re-renders with
//! `Config::to_toml` into text that parses back to the same configuration and renders
//! the same again (what the agent saves as runtime state must load after a restart).

#![no_main]

use libfuzzer_sys::fuzz_target;
use lb_model::{
    config::{self, values::parse_size, ConfigError},
    duration,
};

fuzz_target!(|data: &[u8]| {
    // The agent refuses a file that is not UTF-8 before parsing it.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The value parsers on their own, as the control commands and the CLI use them.
    if let Ok(d) = duration::parse(text) {
        assert_eq!(duration::parse(&duration::format(d)), Ok(d), "{text:?}");
    }
    let _ = parse_size(text);
    match config::parse(text, "fuzz.toml") {
        Ok(c) => {
            let out = c.to_toml();
            let again = config::parse(&out, "out.toml")
                .unwrap_or_else(|e| panic!("to_toml output refused: {e}\n{out}"));
            assert_eq!(again, c, "to_toml does not round-trip:\n{out}");
            assert_eq!(again.to_toml(), out, "to_toml is not stable");
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(!matches!(e, ConfigError::Read { .. }), "{msg}");
            let line = e.line().expect("a parse error names a line");
            let lines = text.split('\n').count();
            assert!(
                (1..=lines).contains(&line),
                "line {line} outside 1..={lines}: {msg}"
            );
            assert!(
                msg.starts_with(&format!("fuzz.toml:{line}:")),
                "error without its place: {msg}"
            );
            assert!(msg.len() > format!("fuzz.toml:{line}:").len() + 10, "{msg}");
        }
    }
});
