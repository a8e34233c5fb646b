//! The control protocol's messages: JSON lines over a Unix socket (docs/CONTROL.md). One
//! request per line, `{"cmd":"backend.state","service":"web",…}`; one response per line,
//! `{"ok":true,"result":…}` or `{"ok":false,"error":"…"}`.
//!
//! A request line decodes straight into [`Request`], whose fields have the config schema's
//! value types ([`BackendDoc`], [`Weight`], [`AdminState`], …): a value is refused with the
//! same words as in the config file, and the field path comes from `serde_path_to_error`
//! (`field `service.backends[0].weight`: 300 is not accepted: use 0..=256 …`).
//!
//! A new command is a variant of [`Request`] and a line in [`USAGE`]; its checks go in
//! [`super::check`], its answer in the agent.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    config::{
        errors::Path,
        schema::{BackendDoc, HealthDoc, Sections, ServiceDoc, StickTableDoc},
        values::{Expire, Listen, Name, StickOnValue, Weight},
    },
    spec::{AdminState, CheckKind, Forwarding, Protocol, Scheduler},
    vocab::{excerpt, Shown},
};

/// Default control socket.
pub const DEFAULT_SOCKET: &str = "/run/stickylb/stickylb.sock";
/// Longest request line accepted (bytes).
pub const MAX_REQUEST: usize = 1 << 20;

/// A service as given to `service.add`: the config file's `[[service]]` with the most used
/// keys at the top level (`expire` is `stick_table.expire`, `health` is `health.kind`,
/// `backends` are the `[[service.backend]]` entries); the same defaults and checks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceDef {
    pub name: Name,
    pub listen: Listen,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduler: Option<Scheduler>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarding: Option<Forwarding>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stick_on: Option<Shown<StickOnValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expire: Option<Expire>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<CheckKind>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<BackendDoc>,
}

impl ServiceDef {
    /// The `[[service]]` section this defines.
    pub fn to_doc(&self) -> ServiceDoc {
        ServiceDoc {
            name: self.name.clone(),
            listen: self.listen,
            protocol: self.protocol,
            scheduler: self.scheduler,
            forwarding: self.forwarding,
            maglev_size: None,
            stick_on: self.stick_on.clone(),
            encap: None,
            stick_table: self.expire.map(|e| StickTableDoc {
                expire: Some(e),
                ..Default::default()
            }),
            health: self.health.map(|k| HealthDoc {
                kind: Some(k),
                ..Default::default()
            }),
            backend: Sections(self.backends.clone()),
        }
    }

    /// A field of the section ([`ServiceDoc`] path) as this request names it.
    pub fn field_name(path: &Path) -> String {
        use crate::config::errors::Seg;
        let mut segs = path.0.clone();
        match segs.as_slice() {
            [Seg::Key(a), Seg::Key(b), ..] if a == "stick_table" && b == "expire" => {
                segs.splice(0..2, [Seg::Key("expire".into())]);
            }
            [Seg::Key(a), Seg::Key(b), ..] if a == "health" && b == "kind" => {
                segs.splice(0..2, [Seg::Key("health".into())]);
            }
            [Seg::Key(a), ..] if a == "backend" => segs[0] = Seg::Key("backends".into()),
            _ => {}
        }
        Path::of(&["service"]).join(&Path(segs)).to_string()
    }
}

/// Every request the agent understands. On the wire it is `{"cmd":NAME, ARGUMENTS…}`:
/// read it with [`decode_line`], write it with [`encode_line`] (its own serde form, used by
/// those two, is `{NAME:{ARGUMENTS…}}`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum Request {
    #[serde(rename = "status")]
    Status {},
    /// Re-read the config file. A file without services, while services run, is refused
    /// unless `allow_empty` (a truncated or half-written file must not remove them all).
    #[serde(rename = "reload")]
    Reload {
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        allow_empty: bool,
    },
    #[serde(rename = "stats")]
    Stats {},
    /// The cluster: this node's sync state and every peer (`[cluster]`, docs/CLUSTER.md).
    #[serde(rename = "peers")]
    Peers {},
    #[serde(rename = "service.list")]
    ServiceList {},
    #[serde(rename = "service.add")]
    ServiceAdd { service: ServiceDef },
    #[serde(rename = "service.remove")]
    ServiceRemove { name: String },
    #[serde(rename = "backend.list")]
    BackendList {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        service: Option<String>,
    },
    #[serde(rename = "backend.add")]
    BackendAdd {
        service: String,
        backend: BackendDoc,
    },
    #[serde(rename = "backend.remove")]
    BackendRemove { service: String, address: String },
    #[serde(rename = "backend.weight")]
    BackendWeight {
        service: String,
        address: String,
        weight: Weight,
    },
    #[serde(rename = "backend.state")]
    BackendState {
        service: String,
        address: String,
        state: AdminState,
    },
    #[serde(rename = "table.show")]
    TableShow {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        service: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        backend: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<usize>,
    },
    #[serde(rename = "table.lookup")]
    TableLookup { service: String, client: String },
    #[serde(rename = "table.clear")]
    TableClear {
        service: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        backend: Option<String>,
    },
    #[serde(rename = "table.pin")]
    TablePin {
        service: String,
        client: String,
        backend: String,
    },
    /// Withdraw every announced VIP and keep forwarding what still arrives (`[announce]`).
    #[serde(rename = "node.drain")]
    NodeDrain {},
    /// Announce again what the rule allows.
    #[serde(rename = "node.undrain")]
    NodeUndrain {},
}

/// A response line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Response {
    pub fn ok(result: Value) -> Self {
        Self {
            ok: true,
            result: Some(result),
            error: None,
        }
    }
    pub fn err(msg: impl Into<String>) -> Self {
        Self {
            ok: false,
            result: None,
            error: Some(msg.into()),
        }
    }
}

/// Every command with what it accepts, for refusals: `(cmd, accepted)`.
pub const USAGE: &[(&str, &str)] = &[
    ("status", r#"{"cmd":"status"}"#),
    (
        "reload",
        r#"{"cmd":"reload"} or {"cmd":"reload","allow_empty":true}"#,
    ),
    ("stats", r#"{"cmd":"stats"}"#),
    ("peers", r#"{"cmd":"peers"}"#),
    ("service.list", r#"{"cmd":"service.list"}"#),
    (
        "service.add",
        r#"{"cmd":"service.add","service":{"name":"web","listen":"10.0.0.100:80"}} (optional in "service": "protocol", "scheduler", "forwarding", "expire", "health", "backends":[{"address":"192.168.1.2:80","weight":1,"state":"ready"}])"#,
    ),
    ("service.remove", r#"{"cmd":"service.remove","name":"web"}"#),
    (
        "backend.list",
        r#"{"cmd":"backend.list"} or {"cmd":"backend.list","service":"web"}"#,
    ),
    (
        "backend.add",
        r#"{"cmd":"backend.add","service":"web","backend":{"address":"192.168.1.2:80"}} (optional in "backend": "weight" 0..=256, "state" "ready", "drain" or "maint")"#,
    ),
    (
        "backend.remove",
        r#"{"cmd":"backend.remove","service":"web","address":"192.168.1.2:80"}"#,
    ),
    (
        "backend.weight",
        r#"{"cmd":"backend.weight","service":"web","address":"192.168.1.2:80","weight":N} with N in 0..=256"#,
    ),
    (
        "backend.state",
        r#"{"cmd":"backend.state","service":"web","address":"192.168.1.2:80","state":S} with S one of "ready", "drain", "maint""#,
    ),
    (
        "table.show",
        r#"{"cmd":"table.show"} (optional: "service":"web", "backend":"192.168.1.2:80" with "service", "limit":N)"#,
    ),
    (
        "table.lookup",
        r#"{"cmd":"table.lookup","service":"web","client":"10.0.0.1"}"#,
    ),
    (
        "table.clear",
        r#"{"cmd":"table.clear","service":"web"} (optional: "client":"10.0.0.1" or "backend":"192.168.1.2:80")"#,
    ),
    (
        "table.pin",
        r#"{"cmd":"table.pin","service":"web","client":"10.0.0.1","backend":"192.168.1.2:80"}"#,
    ),
    ("node.drain", r#"{"cmd":"node.drain"}"#),
    ("node.undrain", r#"{"cmd":"node.undrain"}"#),
];

/// The names of all commands, for refusals: `status, reload, …`.
pub fn commands() -> String {
    USAGE.iter().map(|(c, _)| *c).collect::<Vec<_>>().join(", ")
}

/// What a command accepts, e.g. `{"cmd":"backend.remove","service":"web","address":...}`.
pub fn usage(cmd: &str) -> Option<&'static str> {
    USAGE.iter().find(|(c, _)| *c == cmd).map(|(_, u)| *u)
}

/// The refusal of a request line of `len` bytes, more than [`MAX_REQUEST`].
pub fn too_long(len: usize) -> String {
    format!("request of {len} bytes refused: accepted are lines of at most {MAX_REQUEST} bytes")
}

/// Decodes one request line as received (without its `\n`): `Ok(None)` for a blank line,
/// otherwise the request, or the refusal to answer with (see [`Response::err`]). The
/// agent's control server hands every line to this.
pub fn decode_line(line: &[u8]) -> Result<Option<Request>, String> {
    if line.len() > MAX_REQUEST {
        return Err(too_long(line.len()));
    }
    let text = std::str::from_utf8(line).map_err(|e| {
        format!(
            "request is not UTF-8 (byte {} is not valid): send one JSON object per line, \
             e.g. {{\"cmd\":\"status\"}}",
            e.valid_up_to()
        )
    })?;
    if text.trim().is_empty() {
        return Ok(None);
    }
    parse_request(text).map(Some)
}

/// Parses a request line, with a refusal that says what is accepted.
pub fn parse_request(line: &str) -> Result<Request, String> {
    let value: Value = serde_json::from_str(line).map_err(|e| {
        format!(
            "request {} is not valid JSON ({e}): send one JSON object per line, \
             e.g. {{\"cmd\":\"status\"}}",
            excerpt(line.trim(), 60)
        )
    })?;
    from_value(value)
}

/// A request from its JSON object (`{"cmd":…, …}`).
pub fn from_value(value: Value) -> Result<Request, String> {
    let commands = commands();
    let Value::Object(mut fields) = value else {
        return Err(format!(
            "request {} is not a JSON object: send e.g. {{\"cmd\":\"status\"}} \
             (accepted commands are {commands})",
            excerpt(&value.to_string(), 60)
        ));
    };
    let cmd = match fields.remove("cmd") {
        Some(Value::String(c)) => c,
        Some(other) => {
            let json = other.to_string();
            let shown = match json.char_indices().nth(60) {
                Some((end, _)) => format!("{}...", &json[..end]),
                None => json,
            };
            return Err(format!(
                "\"cmd\" is {shown}, not a string: accepted commands are {commands}"
            ));
        }
        None => {
            return Err(format!(
                "request has no \"cmd\": accepted commands are {commands}, \
                 e.g. {{\"cmd\":\"status\"}}"
            ))
        }
    };
    let Some(usage) = usage(&cmd) else {
        return Err(format!(
            "unknown command {}: accepted commands are {commands}",
            excerpt(&cmd, 60)
        ));
    };
    let tagged = Value::Object([(cmd.clone(), Value::Object(fields))].into_iter().collect());
    serde_path_to_error::deserialize(tagged).map_err(|e| {
        let path = Path::from_serde(e.path());
        let at = if path.0.is_empty() {
            String::new()
        } else {
            format!("field `{path}`: ")
        };
        let inner = e.into_inner().to_string();
        format!("bad arguments for {cmd}: {at}{inner}; accepted: {usage}")
    })
}

/// A request as one line of JSON, without the newline: `"cmd"` first, then the arguments
/// in declaration order.
pub fn encode_line(req: &Request) -> String {
    // `{"backend.state":{"service":…}}` (command names have no ':' nor escapes).
    let tagged = serde_json::to_string(req).expect("a request encodes");
    let inner = &tagged[1..tagged.len() - 1];
    let (cmd, args) = inner.split_once(':').expect("one variant");
    match args.strip_prefix('{').filter(|a| *a != "}") {
        Some(rest) => format!("{{\"cmd\":{cmd},{rest}"),
        None => format!("{{\"cmd\":{cmd}}}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_bad_ones_say_what_is_accepted() {
        let reqs = vec![
            Request::Status {},
            Request::BackendState {
                service: "web".into(),
                address: "10.0.0.2:80".into(),
                state: AdminState::Drain,
            },
            Request::TableShow {
                service: Some("web".into()),
                backend: None,
                limit: Some(10),
            },
            Request::Reload { allow_empty: true },
            Request::NodeDrain {},
            Request::NodeUndrain {},
        ];
        for r in reqs {
            let line = encode_line(&r);
            assert!(line.starts_with("{\"cmd\":"), "{line}");
            assert_eq!(parse_request(&line).unwrap(), r, "{line}");
        }
        assert_eq!(
            encode_line(&Request::BackendWeight {
                service: "web".into(),
                address: "a".into(),
                weight: Weight(3)
            }),
            r#"{"cmd":"backend.weight","service":"web","address":"a","weight":3}"#
        );
        let e = parse_request(
            "{\"cmd\":\"backend.state\",\"service\":\"web\",\"address\":\"a\",\"state\":\"up\"}",
        )
        .unwrap_err();
        assert!(
            e.contains(
                "field `state`: \"up\" is not accepted: use \"ready\", \"drain\" or \"maint\""
            ),
            "{e}"
        );
        let e = parse_request("{\"cmd\":\"frobnicate\"}").unwrap_err();
        assert!(e.contains("accepted commands are status"), "{e}");
        let e = parse_request("not json").unwrap_err();
        assert!(e.contains("one JSON object per line"), "{e}");
        let e = parse_request("{\"cmd\":\"backend.weight\",\"service\":\"web\"}").unwrap_err();
        assert!(
            e.contains("bad arguments for backend.weight") && e.contains("address"),
            "{e}"
        );
        let e = parse_request(
            "{\"cmd\":\"backend.remove\",\"service\":\"a\",\"address\":\"b\",\"extra\":1}",
        )
        .unwrap_err();
        assert!(e.contains("unknown field"), "{e}");
        let e = parse_request(
            "{\"cmd\":\"service.add\",\"service\":{\"name\":\"x\",\"listen\":\"10.0.0.5:80\",\
             \"backends\":[{\"address\":\"10.0.0.7\",\"weight\":300}]}}",
        )
        .unwrap_err();
        assert!(
            e.contains("field `service.backends[0].weight`: 300 is not accepted: use 0..=256"),
            "{e}"
        );
    }

    #[test]
    fn section_paths_are_named_as_the_request_names_them() {
        for (doc, req) in [
            (
                Path::of(&["backend"]).index(2).key("address"),
                "service.backends[2].address",
            ),
            (Path::of(&["stick_table", "expire"]), "service.expire"),
            (Path::of(&["health", "kind"]), "service.health"),
            (Path::of(&["name"]), "service.name"),
        ] {
            assert_eq!(ServiceDef::field_name(&doc), req);
        }
    }
}
