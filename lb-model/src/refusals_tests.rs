//! Every refusal of bad input names what was wrong and what is accepted: a table of bad
//! config snippets and bad control requests, each with the value its message must show and
//! the hint of what is accepted it must give.

use crate::{
    config,
    control::{check, decode_line, MAX_REQUEST},
};

/// Words that introduce what is accepted; every refusal has one.
const HINTS: &[&str] = &[
    "accepted",
    "expected",
    "one of",
    "use ",
    "give ",
    "e.g.",
    "..=",
    "at most",
    "at least",
    "must",
    "add ",
    "remove it",
    "belong to one",
];

/// Why a refusal falls short, if it does.
fn refusal_problem(input: &str, msg: &str, value: &str, hint: &str) -> Option<String> {
    if !msg.contains(value) {
        Some(format!(
            "refusal of {input:?} does not show the bad value {value:?}: {msg}"
        ))
    } else if !msg.contains(hint) {
        Some(format!("refusal of {input:?} does not say {hint:?}: {msg}"))
    } else if !HINTS.iter().any(|h| msg.contains(h)) {
        Some(format!(
            "refusal of {input:?} says nothing of what is accepted: {msg}"
        ))
    } else {
        None
    }
}

fn assert_all(problems: Vec<String>) {
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

const SVC: &str = "[[service]]\nname = \"web\"\nlisten = \"10.0.0.100:80\"\n";

#[test]
fn config_refusals_name_the_place_the_value_and_what_is_accepted() {
    // (text after SVC unless it starts with '!', line, bad value shown, accepted hint)
    let cases: &[(&str, usize, &str, &str)] = &[
        ("scheduler = \"leastconn\"\n", 4, "\"leastconn\"", "\"roundrobin\" or \"maglev\""),
        ("protocol = \"sctp\"\n", 4, "\"sctp\"", "\"tcp\" or \"udp\""),
        ("forwarding = \"tunnel\"\n", 4, "\"tunnel\"", "\"ipip\" or \"gue\""),
        ("forwarding = true\n", 4, "true", "\"ipip\" or \"gue\""),
        ("forwarding = \"nat\"\nencap = { source = \"fib\" }\n", 5, "\"nat\"", "forwarding = \"ipip\" or \"gue\""),
        ("forwarding = \"gue\"\nencap = { gue_port = 0 }\n", 5, "0", "from 1 to 65535"),
        ("forwarding = \"ipip\"\nencap = { gue_port = 7000 }\n", 5, "7000", "forwarding = \"gue\""),
        ("forwarding = \"ipip\"\nencap = { source = \"random\" }\n", 5, "\"random\"", "\"fib\" or \"client-hash\""),
        ("forwarding = \"ipip\"\nencap = { source = \"client-hash\" }\n", 5, "\"client-hash\"", "source_prefix_v4"),
        ("forwarding = \"ipip\"\nencap = { source = \"client-hash\", source_prefix_v4 = \"172.16.0.1/16\" }\n", 5, "\"172.16.0.1/16\"", "host bits"),
        ("forwarding = \"ipip\"\nencap = { source = \"client-hash\", source_prefix_v4 = \"fd00::/64\" }\n", 5, "\"fd00::/64\"", "an IPv4 prefix"),
        ("forwarding = \"ipip\"\nencap = { source_prefix_v6 = \"fd00::/64\" }\n", 5, "\"fd00::/64\"", "source = \"client-hash\""),
        ("forwarding = \"gue\"\nencap = { port = 6080 }\n", 5, "port", "gue_port"),
        ("scheduler = \"maglev\"\nmaglev_size = 1000\n", 5, "1000", "a prime number from 2 to 65537"),
        ("maglev_size = 251\n", 4, "251", "scheduler = \"maglev\""),
        ("stick_on = \"src/33\"\n", 4, "\"src/33\"", "from 1 to 32"),
        ("stick_on = \"src/0\"\n", 4, "\"src/0\"", "\"src/N\""),
        ("stick_on = \"dst\"\n", 4, "\"dst\"", "\"src/N\""),
        ("stick_on = 24\n", 4, "24", "\"src,ipmask(N[,M])\""),
        ("stick_on = \"src,ipmask(24,200)\"\n", 4, "\"src,ipmask(24,200)\"", "1..=128 for IPv6"),
        ("![[service]]\nname = \"web\"\nlisten = \"[2001:db8::1]:80\"\nstick_on = \"src,ipmask(24)\"\n", 4, "\"src,ipmask(24)\"", "from 1 to 128"),
        ("stick_table = { size = 0 }\n", 4, "0 is not accepted", "from 1 to 4294967295"),
        ("stick_table = { size = \"200kb\" }\n", 4, "\"200kb\"", "\"200k\""),
        ("stick_table = { size = 5000000000 }\n", 4, "5000000000", "from 1 to 4294967295"),
        ("stick_table = { expire = \"30 minutes\" }\n", 4, "\"30 minutes\"", "\"never\""),
        ("stick_table = { expire = -5 }\n", 4, "-5", "\"30m\""),
        ("stick_table = \"big\"\n", 4, "\"big\"", "e.g. stick_table = {"),
        ("health = { kind = \"icmp\" }\n", 4, "\"icmp\"", "\"tcp\", \"http\", \"https\" or \"none\""),
        ("health = { interval = \"2x\" }\n", 4, "\"2x\"", "\"300ms\", \"2s\""),
        ("health = { interval = \"50ms\" }\n", 4, "\"50ms\"", "at least 100ms"),
        ("health = { interval = \"1s\", timeout = \"2s\" }\n", 4, "\"2s\"", "at most the interval (1s)"),
        ("health = { rise = 0 }\n", 4, "0 is not accepted", "at least 1"),
        ("health = { fall = 1.5 }\n", 4, "1.5", "at least 1"),
        ("health = { path = \"/up\" }\n", 4, "\"/up\"", "kind = \"http\""),
        ("health = { kind = \"http\", path = \"up\" }\n", 4, "\"up\"", "starting with '/'"),
        ("health = { kind = \"http\", expect_status = 700 }\n", 4, "700", "100..=599"),
        ("health = { kind = \"none\", expect_status = 200 }\n", 4, "200", "kind = \"http\""),
        ("health = { kind = \"https\", ca = \"ca.pem\" }\n", 4, "\"ca.pem\"", "absolute path"),
        ("health = { kind = \"http\", verify = false }\n", 4, "false", "kind = \"https\""),
        ("health = { kind = \"https\", verify = \"no\" }\n", 4, "\"no\"", "true or false"),
        ("health = { kind = \"http\", host = \"a b\" }\n", 4, "\"a b\"", "e.g. \"www.example.com\""),
        ("health = { kind = \"https\", sni = \"-x-\" }\n", 4, "\"-x-\"", "DNS name"),
        ("colour = \"blue\"\n", 4, "colour", "accepted here: `name`"),
        ("balance = \"roundrobin\"\n", 4, "balance", "did you mean `scheduler`?"),
        ("[[service.backend]]\naddress = \"backend-1:80\"\n", 5, "\"backend-1:80\"", "\"IP:PORT\""),
        ("[[service.backend]]\naddress = \"192.168.1.2\"\nweight = 300\n", 6, "300", "0..=256"),
        ("[[service.backend]]\naddress = \"192.168.1.2\"\nweight = -1\n", 6, "-1", "0..=256"),
        ("[[service.backend]]\naddress = \"192.168.1.2\"\nstate = \"up\"\n", 6, "\"up\"", "\"ready\", \"drain\" or \"maint\""),
        ("[[service.backend]]\nweight = 2\n", 4, "service[0].backend[0].address", "add e.g. address ="),
        ("[[service.backend]]\naddress = \"[2001:db8::2]:80\"\n", 4, "[2001:db8::2]:80", "must use the VIP's address family"),
        ("forwarding = \"dsr\"\n[[service.backend]]\naddress = \"192.168.1.2:8080\"\n", 6, "\"192.168.1.2:8080\"", "omit the port or use 80"),
        ("[[service.backend]]\naddress = \"192.168.1.2\"\n[[service.backend]]\naddress = \"192.168.1.2:80\"\n", 7, "\"192.168.1.2:80\"", "use each backend once"),
        ("![[service]]\nlisten = \"10.0.0.100:80\"\n", 1, "service[0].name", "add e.g. name = \"web\""),
        ("![[service]]\nname = \"web server\"\nlisten = \"10.0.0.100:80\"\n", 2, "\"web server\"", "letters, digits"),
        ("![[service]]\nname = \"web\"\nlisten = \"10.0.0.100\"\n", 3, "\"10.0.0.100\"", "\"10.0.0.100:80\""),
        ("![[service]]\nname = \"web\"\nlisten = \"0.0.0.0:80\"\n", 3, "\"0.0.0.0:80\"", "e.g. \"10.0.0.100:80\""),
        ("![service]\nname = \"web\"\n", 1, "a table", "[[service]] sections"),
        ("![[services]]\nname = \"web\"\n", 1, "services", "did you mean `service`?"),
        ("![[service]]\nname = \"web\nlisten = 1\n", 2, "name = \"web", "expected"),
        ("![[service]]\nname = \"a\"\nname = \"b\"\n", 3, "duplicate key `name`", "give each key once per table"),
        ("![[service]]\nname = \"a\"\nlisten = \"10.0.0.1:80\"\n[[service]]\nname = \"a\"\nlisten = \"10.0.0.2:80\"\n", 4, "service \"a\": is defined twice", "must be unique"),
        ("![[service]]\nname = \"a\"\nlisten = \"10.0.0.1:80\"\n[[service]]\nname = \"b\"\nlisten = \"10.0.0.1:80\"\n", 4, "10.0.0.1:80 tcp", "belong to one service"),
    ];
    let mut problems = Vec::new();
    for (text, line, value, hint) in cases {
        let text = match text.strip_prefix('!') {
            Some(t) => t.to_string(),
            None => format!("{SVC}{text}"),
        };
        let msg = match config::parse(&text, "lb.toml") {
            Ok(_) => panic!("accepted: {text}"),
            Err(e) => e.to_string(),
        };
        if !msg.starts_with(&format!("lb.toml:{line}:")) {
            problems.push(format!("{msg:?} is not at line {line}"));
        }
        problems.extend(refusal_problem(&text, &msg, value, hint));
    }
    assert_all(problems);
}

/// The configuration the control requests are checked against.
const AGENT: &str = r#"
[[service]]
name = "web"
listen = "10.0.0.100:80"
[[service.backend]]
address = "192.168.1.2:8080"
[[service.backend]]
address = "192.168.1.2:8081"
[[service.backend]]
address = "192.168.1.3"

[[service]]
name = "api6"
listen = "[2001:db8::443]:443"
forwarding = "dsr"
[[service.backend]]
address = "[2001:db8:1::10]"

[[service]]
name = "net"
listen = "10.0.0.101:80"
stick_on = "src/24"
[[service.backend]]
address = "192.168.1.4"
"#;

#[test]
fn control_refusals_name_the_value_and_what_is_accepted() {
    let cfg = config::parse(AGENT, "agent.toml").unwrap();
    let long = format!(
        "{{\"cmd\":\"status\",\"x\":\"{}\"}}",
        "a".repeat(MAX_REQUEST)
    );
    // (request line, bad value shown, accepted hint)
    let cases: &[(&str, &str, &str)] = &[
        ("not json", "\"not json\"", "e.g. {\"cmd\":\"status\"}"),
        ("{\"cmd\":\"status\"", "{\\\"cmd\\\":\\\"status\\\"", "one JSON object per line"),
        ("[1,2]", "[1,2]", "e.g. {\"cmd\":\"status\"}"),
        ("{}", "no \"cmd\"", "accepted commands are status"),
        ("{\"cmd\":5}", "5", "accepted commands are status"),
        ("{\"cmd\":\"frobnicate\"}", "\"frobnicate\"", "accepted commands are status"),
        ("{\"cmd\":\"status\",\"verbose\":true}", "`verbose`", "accepted: {\"cmd\":\"status\"}"),
        ("{\"cmd\":\"backend.list\",\"service\":\"web\",\"verbose\":true}", "`verbose`", "expected `service`"),
        ("{\"cmd\":\"reload\",\"force\":true}", "`force`", "expected `allow_empty`"),
        ("{\"cmd\":\"reload\",\"allow_empty\":\"yes\"}", "\"yes\"", "accepted: {\"cmd\":\"reload\"} or {\"cmd\":\"reload\",\"allow_empty\":true}"),
        ("{\"cmd\":\"backend.state\",\"service\":\"web\"}", "`address`", "accepted: {\"cmd\":\"backend.state\""),
        ("{\"cmd\":\"backend.weight\",\"service\":\"web\",\"address\":\"192.168.1.3\",\"weight\":-1}", "-1", "0..=256"),
        ("{\"cmd\":\"backend.weight\",\"service\":\"web\",\"address\":\"192.168.1.3\",\"weight\":\"heavy\"}", "\"heavy\"", "use 0..=256"),
        ("{\"cmd\":\"backend.weight\",\"service\":\"web\",\"address\":\"192.168.1.3\",\"weight\":300}", "300", "use 0..=256"),
        ("{\"cmd\":\"backend.state\",\"service\":\"web\",\"address\":\"192.168.1.3\",\"state\":\"up\"}", "\"up\"", "use \"ready\", \"drain\" or \"maint\""),
        ("{\"cmd\":\"backend.list\",\"service\":\"nope\"}", "\"nope\"", "accepted are the configured services (services: \"web\", \"api6\", \"net\")"),
        ("{\"cmd\":\"backend.remove\",\"service\":\"web\",\"address\":\"backend-1\"}", "\"backend-1\"", "e.g. \"192.168.1.2:80\""),
        ("{\"cmd\":\"backend.remove\",\"service\":\"web\",\"address\":\"192.168.1.9:80\"}", "\"192.168.1.9:80\"", "accepted are its backends: 192.168.1.2:8080"),
        ("{\"cmd\":\"backend.remove\",\"service\":\"web\",\"address\":\"192.168.1.2\"}", "\"192.168.1.2\" matches 2 backends", "one of 192.168.1.2:8080, 192.168.1.2:8081"),
        ("{\"cmd\":\"service.add\",\"service\":{\"name\":\"x\",\"listen\":\"999.1.1.1:80\"}}", "\"999.1.1.1:80\"", "e.g. \"10.0.0.100:80\""),
        ("{\"cmd\":\"service.add\",\"service\":{\"name\":\"x\",\"listen\":\"10.0.0.5:80\",\"scheduler\":\"leastconn\"}}", "field `service.scheduler`: \"leastconn\"", "\"roundrobin\" or \"maglev\""),
        ("{\"cmd\":\"service.add\",\"service\":{\"name\":\"x\",\"listen\":\"10.0.0.5:80\",\"expire\":\"30 minutes\"}}", "field `service.expire`: \"30 minutes\"", "\"never\""),
        ("{\"cmd\":\"service.add\",\"service\":{\"name\":\"x\",\"listen\":\"10.0.0.5:80\",\"health\":\"icmp\"}}", "field `service.health`: \"icmp\"", "\"tcp\", \"http\", \"https\" or \"none\""),
        ("{\"cmd\":\"service.add\",\"service\":{\"name\":\"x\",\"listen\":\"10.0.0.5:80\",\"backends\":[{\"address\":\"192.168.1.7\",\"weight\":300}]}}", "field `service.backends[0].weight`: 300", "use 0..=256"),
        ("{\"cmd\":\"service.add\",\"service\":{\"name\":\"we b\",\"listen\":\"10.0.0.5:80\"}}", "field `service.name`: \"we b\"", "letters, digits"),
        ("{\"cmd\":\"service.add\",\"service\":{\"name\":\"web\",\"listen\":\"10.0.0.5:80\"}}", "\"web\" exists already", "give a name not in use"),
        ("{\"cmd\":\"service.add\",\"service\":{\"name\":\"x\",\"listen\":\"10.0.0.100:80\"}}", "10.0.0.100:80 tcp", "belong to one service"),
        ("{\"cmd\":\"service.add\",\"service\":{\"name\":\"x\",\"listen\":\"10.0.0.5:80\",\"colour\":\"blue\"}}", "`colour`", "expected one of `name`"),
        ("{\"cmd\":\"backend.add\",\"service\":\"web\",\"backend\":{\"address\":\"[2001:db8::2]:80\"}}", "[2001:db8::2]:80", "must use the VIP's address family"),
        ("{\"cmd\":\"backend.add\",\"service\":\"web\",\"backend\":{\"address\":\"192.168.1.2:8080\"}}", "192.168.1.2:8080", "add another address"),
        ("{\"cmd\":\"backend.add\",\"service\":\"web\",\"backend\":{\"address\":\"192.168.1.7\",\"state\":\"up\"}}", "field `backend.state`: \"up\"", "\"ready\", \"drain\" or \"maint\""),
        ("{\"cmd\":\"backend.add\",\"service\":\"api6\",\"backend\":{\"address\":\"[2001:db8:1::11]:8443\"}}", "\"[2001:db8:1::11]:8443\"", "omit the port or use 443"),
        ("{\"cmd\":\"table.lookup\",\"service\":\"web\",\"client\":\"nobody\"}", "\"nobody\"", "e.g. 10.1.2.3"),
        ("{\"cmd\":\"table.lookup\",\"service\":\"web\",\"client\":\"2001:db8::1\"}", "2001:db8::1 is IPv6", "give an IPv4 client address"),
        ("{\"cmd\":\"table.clear\",\"service\":\"web\",\"client\":\"10.1.2.3\",\"backend\":\"192.168.1.3\"}", "\"10.1.2.3\"", "accepted is one of them"),
        ("{\"cmd\":\"table.lookup\",\"service\":\"net\",\"client\":\"10.1.2.0/16\"}", "\"10.1.2.0/16\" is a /16 network", "give an address (its /24 is meant) or a /24 network, e.g. 10.1.2.0/24"),
        ("{\"cmd\":\"table.clear\",\"service\":\"net\",\"client\":\"10.1.2.3/24\"}", "\"10.1.2.3/24\" has host bits set", "e.g. 10.1.2.0/24"),
        ("{\"cmd\":\"table.clear\",\"service\":\"net\",\"client\":\"10.1.2.0/99\"}", "\"10.1.2.0/99\" is a /99 network", "or a /24 network"),
        ("{\"cmd\":\"table.pin\",\"service\":\"web\",\"client\":\"10.1.2.0/24\",\"backend\":\"192.168.1.3\"}", "\"10.1.2.0/24\" is a /24 network", "sticks by the full address (stick_on = \"src\"): give an address"),
        ("{\"cmd\":\"table.lookup\",\"service\":\"net\",\"client\":\"2001:db8::/24\"}", "2001:db8:: is IPv6", "give an IPv4 client address"),
        ("{\"cmd\":\"service.add\",\"service\":{\"name\":\"x\",\"listen\":\"10.0.0.5:80\",\"stick_on\":\"src/40\"}}", "field `service.stick_on`: \"src/40\"", "from 1 to 32"),
        ("{\"cmd\":\"table.show\",\"backend\":\"192.168.1.3\"}", "\"192.168.1.3\"", "needs a \"service\""),
        ("{\"cmd\":\"table.show\",\"limit\":-1}", "-1", "expected usize"),
        ("{\"cmd\":\"table.pin\",\"service\":\"web\",\"client\":\"10.1.2.3\",\"backend\":\"192.0.2.1:1\"}", "\"192.0.2.1:1\"", "accepted are its backends"),
        (&long, "1048", "accepted are lines of at most 1048576 bytes"),
    ];
    let mut problems = Vec::new();
    for (line, value, hint) in cases {
        let msg = match decode_line(line.as_bytes()) {
            Err(msg) => msg,
            Ok(None) => panic!("{line:?} taken as a blank line"),
            Ok(Some(req)) => match check(&cfg, &req) {
                Err(msg) => msg,
                Ok(_) => panic!("{line:?} accepted"),
            },
        };
        problems.extend(refusal_problem(line, &msg, value, hint));
    }
    // Bytes that are not UTF-8.
    let msg = decode_line(b"{\"cmd\":\"st\xff\xfeatus\"}").unwrap_err();
    problems.extend(refusal_problem(
        "not UTF-8",
        &msg,
        "byte 10",
        "e.g. {\"cmd\":\"status\"}",
    ));
    assert_all(problems);
}

#[test]
fn every_command_has_a_usage_and_good_requests_pass() {
    for cmd in crate::control::commands().split(", ") {
        let usage = crate::control::usage(cmd).unwrap_or_else(|| panic!("{cmd} has no usage"));
        assert!(usage.contains(&format!("\"cmd\":\"{cmd}\"")), "{usage}");
    }
    let cfg = config::parse(AGENT, "agent.toml").unwrap();
    for line in [
        "{\"cmd\":\"status\"}",
        "{\"cmd\":\"table.show\",\"service\":\"web\",\"backend\":\"192.168.1.3:80\"}",
        "{\"cmd\":\"table.clear\",\"service\":\"api6\",\"client\":\"2001:db8::9\"}",
        "{\"cmd\":\"table.pin\",\"service\":\"web\",\"client\":\"10.1.2.3\",\"backend\":\"192.168.1.2:8081\"}",
        "{\"cmd\":\"table.pin\",\"service\":\"web\",\"client\":\"10.1.2.3/32\",\"backend\":\"192.168.1.2:8081\"}",
        "{\"cmd\":\"table.lookup\",\"service\":\"net\",\"client\":\"10.1.2.3\"}",
        "{\"cmd\":\"table.clear\",\"service\":\"net\",\"client\":\"10.1.2.0/24\"}",
        "{\"cmd\":\"table.pin\",\"service\":\"net\",\"client\":\"10.1.2.0/24\",\"backend\":\"192.168.1.4\"}",
    ] {
        let req = decode_line(line.as_bytes()).unwrap().unwrap();
        assert!(check(&cfg, &req).unwrap().is_none(), "{line}");
    }
    assert!(decode_line(b"  \r").unwrap().is_none());
    // The entry a client argument names: its network in a prefix service.
    let net = &cfg.services[2];
    for (arg, want) in [
        ("10.1.2.3", "10.1.2.0/24"),
        (" 10.1.2.255 ", "10.1.2.0/24"),
        ("10.1.2.0/24", "10.1.2.0/24"),
    ] {
        assert_eq!(
            crate::control::client_entry(net, arg).unwrap().to_string(),
            want
        );
    }
    assert_eq!(
        crate::control::client_entry(&cfg.services[0], "10.1.2.3")
            .unwrap()
            .to_string(),
        "10.1.2.3/32"
    );
    // A change: made on a copy that plans, answered and logged.
    let req = decode_line(
        b"{\"cmd\":\"backend.state\",\"service\":\"api6\",\"address\":\"[2001:db8:1::10]:443\",\"state\":\"drain\"}",
    )
    .unwrap()
    .unwrap();
    let edit = check(&cfg, &req).unwrap().unwrap();
    assert_eq!(
        edit.result,
        serde_json::json!({ "service": "api6", "address": "[2001:db8:1::10]:0", "state": "drain" })
    );
    assert_eq!(
        edit.config.services[1].backends[0].admin,
        crate::spec::AdminState::Drain
    );
    assert_eq!(
        cfg.services[1].backends[0].admin,
        crate::spec::AdminState::Ready
    );
}
