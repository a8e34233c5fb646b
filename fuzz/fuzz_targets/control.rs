//! The control protocol as the agent reads it: each line of the input is one request line
//! of a connection, decoded by `control::decode_line` (what the agent's control server
//! runs on every line) and checked by `control::check` (the map-free part of the agent's
//! `handle`: arguments, service and backend look-ups, and configuration changes made on a
//! copy and planned). Accepted changes carry over to the next line, as on a real agent.
//!
//! Invariants: nothing panics; every refusal is a non-empty message that makes a
//! well-formed JSON error response (`{"ok":false,"error":...}` that reads back the same),
//! never an internal error; a decoded request encodes and decodes back to itself; a
//! changed configuration survives `to_toml` and `config::parse` (the agent saves it that
//! way and loads it after a restart).

#![no_main]

use libfuzzer_sys::fuzz_target;
use lb_model::{
    config::{self, Config},
    control::{self, Response},
};

/// The configuration the requests are checked against: IPv4 and IPv6, NAT and DSR,
/// round-robin and Maglev, an every-port service, port-less backends and two backends
/// on one address.
const CONFIG: &str = r#"
[[service]]
name = "web"
listen = "10.0.0.100:80"
health = { kind = "http", path = "/healthz" }
[[service.backend]]
address = "192.168.1.2:8080"
weight = 2
[[service.backend]]
address = "192.168.1.2:8081"
[[service.backend]]
address = "192.168.1.3"
state = "drain"

[[service]]
name = "api6"
listen = "[2001:db8::443]:443"
scheduler = "maglev"
maglev_size = 251
forwarding = "dsr"
[[service.backend]]
address = "[2001:db8:1::10]"
[[service.backend]]
address = "[2001:db8:1::11]"
state = "maint"

[[service]]
name = "dns"
listen = "10.0.0.53:0"
protocol = "udp"
stick_table = { expire = "never" }
health = { kind = "none" }
[[service.backend]]
address = "192.168.1.9"
"#;

fn refusal(msg: &str, what: &str) {
    assert!(!msg.trim().is_empty(), "{what}: empty refusal");
    assert!(!msg.contains("internal error"), "{what}: {msg}");
    let line = serde_json::to_string(&Response::err(msg)).expect("encodes");
    assert!(!line.contains('\n'), "a response is one line: {line}");
    let back: serde_json::Value = serde_json::from_str(&line).expect("well-formed JSON");
    assert_eq!(back["ok"], false, "{line}");
    assert_eq!(back["error"].as_str(), Some(msg), "{line}");
}

fuzz_target!(|data: &[u8]| {
    thread_local! {
        static BASE: Config = config::parse(CONFIG, "fuzz.toml").expect("the fuzz config parses");
    }
    let mut cfg = BASE.with(Config::clone);
    for line in data.split(|&b| b == b'\n').take(16) {
        let req = match control::decode_line(line) {
            Ok(None) => continue,
            Ok(Some(req)) => req,
            Err(msg) => {
                refusal(&msg, "decode");
                continue;
            }
        };
        let encoded = control::encode_line(&req);
        assert_eq!(
            control::parse_request(&encoded).as_ref(),
            Ok(&req),
            "{encoded}"
        );
        match control::check(&cfg, &req) {
            Err(msg) => refusal(&msg, &encoded),
            Ok(None) => {}
            Ok(Some(edit)) => {
                assert!(!edit.log.is_empty());
                serde_json::to_string(&edit.result).expect("the result encodes");
                let saved = edit.config.to_toml();
                let loaded = config::parse(&saved, "runtime.toml").unwrap_or_else(|e| {
                    panic!("{encoded}: the changed configuration does not load back: {e}\n{saved}")
                });
                assert_eq!(
                    loaded, edit.config,
                    "{encoded}: to_toml round trip\n{saved}"
                );
                cfg = edit.config;
            }
        }
    }
});
