//! The importers (`import::haproxy`, `import::ipvs`, `import::ipvs::import_keepalived`) on
//! arbitrary text; the first byte picks the importer.
//!
//! Invariants: nothing panics; every diagnostic names a line inside the text (or 0, the
//! input as a whole) and says why; and what the importer prints loads in this build's
//! configuration parser with as many services as it reports, unless an error diagnostic
//! said it would not (a construct this build does not have yet). So a configuration the
//! importer prints without an error is always one the agent accepts.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use lb_model::{
    config,
    import::{self, Features, Level, Options},
};

fn options() -> &'static Options {
    static OPTS: OnceLock<Options> = OnceLock::new();
    OPTS.get_or_init(|| Options {
        features: Features::of_this_build(),
        vips: vec!["192.0.2.1".parse().unwrap(), "2001:db8::1".parse().unwrap()],
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    // The CLI reads files lossily as UTF-8; the fuzzer does not need to.
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let opts = options();
    let result = match which % 3 {
        0 => import::haproxy::import(text, opts),
        1 => import::ipvs::import(text, opts),
        _ => import::ipvs::import_keepalived(text, opts),
    };
    let lines = text.lines().count();
    for d in &result.diagnostics {
        assert!(d.line <= lines, "line {} of {lines}: {d:?}", d.line);
        assert!(!d.why.is_empty(), "{d:?}");
        let _ = d.render("fuzz");
    }
    let toml = result.to_toml("fuzz");
    match config::parse(&toml, "imported") {
        Ok(cfg) => assert_eq!(
            cfg.services.len(),
            result.file.service.len(),
            "services lost on loading:\n{toml}"
        ),
        Err(e) => assert!(
            result
                .diagnostics
                .iter()
                .any(|d| d.level == Level::Error && d.why.contains("does not support it yet")),
            "the import does not load and no error said so: {e}\n--- input ---\n{text}\n--- output ---\n{toml}"
        ),
    }
});
