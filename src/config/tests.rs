//! The config contract: the documented example, errors that name field and line, defaults.
use super::*;

const EXAMPLE: &str = r#"
listen: 127.0.0.1:8080
admin:
  listen: 127.0.0.1:9901
  token: null
discovery:
  static:
    endpoints:
      - { address: "127.0.0.2:8080", version: v1 }
      - { address: "127.0.0.3:8080", version: v2, ready: false }
canary:
  version: v2
  weight: 10
timeouts: { connect: 1s, request: 30s, header_read: 10s }
retries: { connect_attempts: 2 }
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("test.yaml"))
}

#[test]
fn the_documented_example_parses() {
    let c = parse(EXAMPLE).unwrap();
    assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(c.canary.weight.percent(), 10.0);
    assert_eq!(c.canary.version.unwrap().as_str(), "v2");
    let DiscoveryConfig::Static { endpoints } = &c.discovery else {
        panic!("static expected")
    };
    assert_eq!(endpoints.len(), 2);
    assert_eq!(endpoints[1].state, EndpointState::NotReady);
    assert_eq!(c.timeouts.request, Duration::from_secs(30));
    assert_eq!(c.retries.connect_attempts, 2);
}

fn error_of(text: &str) -> (String, Option<usize>) {
    match parse(text).unwrap_err() {
        ConfigError::Parse { message, line, .. } => (message, line),
        other => (other.to_string(), None),
    }
}

#[test]
fn a_bad_address_names_the_field_and_line() {
    let (msg, line) = error_of(&EXAMPLE.replace("127.0.0.3:8080", "127.0.0.3"));
    assert!(
        msg.contains("discovery.static.endpoints[1].address"),
        "{msg}"
    );
    assert_eq!(line, Some(10), "{msg}");
}

#[test]
fn unknown_fields_are_rejected_with_their_name() {
    let (msg, line) = error_of(&EXAMPLE.replace("weight: 10", "wieght: 10"));
    assert!(msg.contains("unknown field `wieght`"), "{msg}");
    assert!(msg.contains("canary"), "{msg}");
    assert_eq!(line, Some(13), "{msg}");
}

#[test]
fn out_of_range_values_are_rejected() {
    let (msg, _) = error_of(&EXAMPLE.replace("weight: 10", "weight: 120"));
    assert!(
        msg.contains("canary.weight") && msg.contains("0 to 100"),
        "{msg}"
    );
    let (msg, _) = error_of(&EXAMPLE.replace("connect: 1s", "connect: 1 parsec"));
    assert!(msg.contains("timeouts.connect"), "{msg}");
    let (msg, _) = error_of(&EXAMPLE.replace("connect_attempts: 2", "connect_attempts: 0"));
    assert!(msg.contains("retries.connect_attempts"), "{msg}");
    let (msg, _) = error_of(&EXAMPLE.replace("version: v1", "version: \"v 1\""));
    assert!(msg.contains("endpoints[0].version"), "{msg}");
    let (msg, _) = error_of(&EXAMPLE.replace("token: null", "token: \"\""));
    assert!(msg.contains("admin.token"), "{msg}");
}

#[test]
fn duplicate_addresses_are_rejected_at_the_line_of_the_repeat() {
    let (msg, line) = error_of(&EXAMPLE.replace("127.0.0.3:8080", "127.0.0.2:8080"));
    assert!(
        msg.contains("endpoint 1 repeats the address 127.0.0.2:8080 of endpoint 0"),
        "{msg}"
    );
    let repeat = EXAMPLE
        .lines()
        .position(|l| l.contains("127.0.0.3:8080"))
        .unwrap()
        + 1;
    assert_eq!(line, Some(repeat), "the repeat's line");
}

#[test]
fn parser_jargon_becomes_the_problem_and_its_line() {
    let static_list = "discovery: { static: { endpoints: [] } }\n";
    let (msg, line) = error_of(static_list);
    assert!(msg.contains("the static endpoint list is empty"), "{msg}");
    assert!(msg.contains("allow_empty: true"), "{msg}");
    assert_eq!(line, Some(1));

    let (msg, line) =
        error_of("discovery:\n  static: { endpoints: [], allow_empty: true }\n  kubernetes: { service: web }\n");
    assert!(msg.contains("name exactly one source"), "{msg}");
    assert_eq!(line, Some(2));

    let (msg, line) = error_of(&format!("listen: 127.0.0.1:1\n{EXAMPLE}"));
    assert!(msg.contains("`listen` is set twice"), "{msg}");
    assert!(line.is_some(), "{msg}");

    let (msg, line) = error_of(
        "discovery: { static: { endpoints: [ { address: \"127.0.0.1:80\", version: v1 }\n",
    );
    assert!(
        msg.starts_with("YAML syntax: a `[` opened at line 1"),
        "{msg}"
    );
    assert_eq!(line, Some(1));

    let (msg, line) = error_of(&EXAMPLE.replace("\"127.0.0.2:8080\"", "\"web:8080\""));
    assert!(
        msg.contains("is not an IP address and port, such as 10.0.0.5:8080")
            && msg.contains("hostnames are not resolved"),
        "{msg}"
    );
    assert!(line.is_some());
}

#[test]
fn cross_field_rules_name_the_field() {
    let err = parse(&EXAMPLE.replace("127.0.0.1:9901", "127.0.0.1:8080")).unwrap_err();
    assert!(
        err.to_string().contains("admin.listen: must differ"),
        "{err}"
    );
}

#[test]
fn kubernetes_discovery_parses_with_defaults() {
    let c =
        parse("discovery:\n  kubernetes:\n    service: web\n    port: http\n    deployment: web\n")
            .unwrap();
    let DiscoveryConfig::Kubernetes(k) = c.discovery else {
        panic!("kubernetes expected")
    };
    assert_eq!(k.namespace, None, "the pod's own namespace");
    assert_eq!(k.service, "web");
    assert_eq!(k.port, Some(PortRef::Name("http".into())));
    assert_eq!(k.deployment.as_deref(), Some("web"));
    assert_eq!(k.min_ready, MinReady::Deployment);
    assert_eq!(k.api_timeout, Duration::from_secs(30));
    let c =
        parse("discovery: { kubernetes: { service: web, port: 8080, min_ready: 5s } }").unwrap();
    let DiscoveryConfig::Kubernetes(k) = c.discovery else {
        panic!("kubernetes expected")
    };
    assert_eq!(k.port, Some(PortRef::Number(8080)));
    assert_eq!(k.min_ready, MinReady::Fixed(Duration::from_secs(5)));
}

#[test]
fn kubernetes_discovery_errors_name_the_field() {
    let (msg, line) = error_of("discovery:\n  kubernetes:\n    service: Web_1\n");
    assert!(msg.contains("discovery.kubernetes.service"), "{msg}");
    assert_eq!(line, Some(3), "{msg}");
    let (msg, _) = error_of("discovery: { kubernetes: { service: web, port: 70000 } }");
    assert!(msg.contains("discovery.kubernetes.port"), "{msg}");
    let (msg, _) = error_of("discovery: { kubernetes: { service: web, min_ready: soon } }");
    assert!(msg.contains("discovery.kubernetes.min_ready"), "{msg}");
    let (msg, _) = error_of("discovery: { kubernetes: { service: web, selector: x } }");
    assert!(msg.contains("unknown field `selector`"), "{msg}");
    let (msg, _) = error_of("discovery: { dns: { name: web } }");
    assert!(msg.contains("unknown variant `dns`"), "{msg}");
}

#[test]
fn retry_policy_parses_and_rejects_unknown_causes() {
    let c = parse(
        "discovery: { static: { endpoints: [], allow_empty: true } }\nretries: { on: [502], budget_percent: 5 }",
    )
    .unwrap();
    let p = c.retries.policy;
    assert_eq!(
        (p.on_reset, p.on_502, p.on_503, p.budget_percent),
        (false, true, false, 5)
    );
    let (msg, line) =
        error_of("discovery: { static: { endpoints: [], allow_empty: true } }\nretries: { on: [reset, 504] }");
    assert!(msg.contains("retries") && msg.contains("504"), "{msg}");
    assert_eq!(line, Some(2), "{msg}");
    let (msg, _) =
        error_of("discovery: { static: { endpoints: [], allow_empty: true } }\nretries: { budget_percent: 101 }");
    assert!(msg.contains("retries.budget_percent"), "{msg}");
}

#[test]
fn defaults_are_secure_and_documented() {
    let c = parse("discovery: { static: { endpoints: [], allow_empty: true } }").unwrap();
    assert!(
        c.admin.listen.ip().is_loopback(),
        "admin must default to loopback"
    );
    assert!(c.listen.ip().is_loopback());
    assert_eq!(c.retries.connect_attempts, 2);
    assert_eq!(c.timeouts.connect, Duration::from_secs(1));
    assert_eq!(c.reload_interval, Duration::from_secs(1));
}

#[test]
fn the_admin_token_can_come_from_a_file_beside_the_config() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin-token"), "s3cret\n").unwrap();
    let config = dir.path().join("tidegate.yaml");
    let text = EXAMPLE.replace("token: null", "token_file: admin-token");
    let c = Config::parse(&text, &config).unwrap();
    assert_eq!(c.admin.token.as_deref(), Some("s3cret"), "read and trimmed");

    std::fs::write(dir.path().join("admin-token"), " \n").unwrap();
    let empty = Config::parse(&text, &config).unwrap_err().to_string();
    assert!(
        empty.contains("admin.token_file") && empty.contains("is empty"),
        "{empty}"
    );

    let missing = EXAMPLE.replace("token: null", "token_file: no-such-file");
    let msg = Config::parse(&missing, &config).unwrap_err().to_string();
    assert!(
        msg.contains("admin.token_file") && msg.contains("no-such-file"),
        "{msg}"
    );

    let both = EXAMPLE.replace("token: null", "token: t\n  token_file: admin-token");
    let msg = Config::parse(&both, &config).unwrap_err().to_string();
    assert!(msg.contains("not both"), "{msg}");
}

#[test]
fn the_response_header_limit_defaults_to_hypers_and_is_bounded() {
    let c = parse("discovery: { static: { endpoints: [], allow_empty: true } }").unwrap();
    assert_eq!(c.max_response_headers, 100);
    let c =
        parse("discovery: { static: { endpoints: [], allow_empty: true } }\nupstream: { max_response_headers: 40 }")
            .unwrap();
    assert_eq!(c.settings().max_response_headers, 40);
    for bad in ["0", "257", "1.5", "many"] {
        let (msg, line) = error_of(&format!(
            "discovery: {{ static: {{ endpoints: [], allow_empty: true }} }}\nupstream:\n  max_response_headers: {bad}"
        ));
        assert!(msg.contains("upstream.max_response_headers"), "{msg}");
        assert_eq!(line, Some(3), "{msg}");
    }
}

#[test]
fn upstream_protocols_default_to_http1_and_static_endpoints_may_say_h2c() {
    let c = parse(EXAMPLE).unwrap();
    assert_eq!(c.settings().protocol, Protocol::Http1);
    let text = EXAMPLE.replace("version: v1 }", "version: v1, protocol: h2c }");
    let c =
        parse(&format!("{text}upstream: {{ protocol: h2c }}\n")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.settings().protocol, Protocol::H2c);
    let DiscoveryConfig::Static { endpoints } = &c.discovery else {
        panic!("static expected")
    };
    assert_eq!(endpoints[0].protocol, Some(Protocol::H2c));
    assert_eq!(
        endpoints[1].protocol, None,
        "unnamed: upstream.protocol applies"
    );

    let (msg, line) = error_of(&EXAMPLE.replace("version: v1 }", "version: v1, protocol: h3 }"));
    assert!(
        msg.contains("endpoints[0].protocol") && msg.contains("h2c"),
        "{msg}"
    );
    assert_eq!(line, Some(9), "{msg}");
}

#[test]
fn grpc_failure_codes_are_names_and_default_to_the_server_side_ones() {
    let c = parse(EXAMPLE).unwrap();
    assert_eq!(c.settings().grpc_failures, crate::grpc::Codes::failures());
    let c = parse(&format!(
        "{EXAMPLE}grpc: {{ failure_codes: [UNAVAILABLE, not_found] }}\n"
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<_> = c
        .grpc_failures
        .codes()
        .map(crate::grpc::Code::name)
        .collect();
    assert_eq!(names, ["NOT_FOUND", "UNAVAILABLE"]);
    let (msg, line) = error_of(&format!(
        "{EXAMPLE}grpc:\n  failure_codes: [UNAVAILABLE, OOPS]\n"
    ));
    assert!(
        msg.contains("grpc.failure_codes") && msg.contains("OOPS"),
        "{msg}"
    );
    assert_eq!(line, Some(17), "{msg}");
}

#[test]
fn connections_per_endpoint_are_bounded() {
    let c = parse(EXAMPLE).unwrap();
    assert_eq!(c.settings().max_connections_per_endpoint, 256);
    for bad in ["0", "65536", "1.5"] {
        let (msg, line) = error_of(&format!(
            "{EXAMPLE}upstream:\n  max_connections_per_endpoint: {bad}\n"
        ));
        assert!(
            msg.contains("upstream.max_connections_per_endpoint"),
            "{msg}"
        );
        assert_eq!(line, Some(17), "{msg}");
    }
}

#[test]
fn client_connections_are_bounded() {
    let limits = parse(EXAMPLE).unwrap().limits;
    assert_eq!(limits.max_connections, 10_000);
    assert_eq!(limits.idle_timeout, Duration::from_secs(60));
    assert_eq!(limits.http2_keepalive, Duration::from_secs(20));
    assert_eq!(limits.http2_max_concurrent_streams, 128);
    assert_eq!(limits.http2_max_pending_resets, 20);
    assert_eq!(limits.http2_max_local_resets, 1024);
    assert_eq!(limits.max_request_headers, 100);
    assert_eq!(limits.max_request_head_size, 64 * 1024);
    assert_eq!(limits.max_uri_size, 16 * 1024);
    assert_eq!(limits.max_request_body, None);
    let c = parse(&format!(
        "{EXAMPLE}limits: {{ max_connections: 500, idle_timeout: 5s, max_request_body: 1MiB, \
         max_request_head_size: 16KiB, max_uri_size: 4KiB, http2_max_concurrent_streams: 10 }}\n"
    ))
    .unwrap();
    assert_eq!(c.limits.max_connections, 500);
    assert_eq!(c.limits.idle_timeout, Duration::from_secs(5));
    assert_eq!(c.limits.max_request_body, Some(1024 * 1024));
    assert_eq!(c.limits.max_request_head_size, 16 * 1024);
    assert_eq!(c.limits.max_uri_size, 4 * 1024);
    assert_eq!(c.limits.http2_max_concurrent_streams, 10);
    for (field, value) in [
        ("max_connections", "0"),
        ("max_request_head_size", "4KiB"),
        ("max_request_headers", "0"),
        ("http2_max_concurrent_streams", "0"),
        ("http2_max_pending_resets", "0"),
        ("max_request_body", "lots"),
    ] {
        let (msg, line) = error_of(&format!("{EXAMPLE}limits:\n  {field}: {value}\n"));
        assert!(msg.contains(&format!("limits.{field}")), "{msg}");
        assert_eq!(line, Some(17), "{msg}");
    }
    for (field, value) in [
        ("http2_keepalive", "10ms"),
        ("idle_timeout", "1ms"),
        ("max_uri_size", "128KiB"),
    ] {
        let err = parse(&format!("{EXAMPLE}limits: {{ {field}: {value} }}\n")).unwrap_err();
        assert!(
            err.to_string().contains(&format!("limits.{field}")),
            "{err}"
        );
    }
}

#[test]
fn telemetry_defaults_and_errors_name_their_field() {
    let c = parse(EXAMPLE).unwrap();
    assert!(c.access_log.is_none(), "access logs are off by default");
    let ids = c.request_id.expect("request IDs are on by default");
    assert_eq!(ids.header.as_str(), "x-request-id");
    assert!(ids.respond);
    assert_eq!(c.tracing.start, crate::trace::Start::Never);
    assert!(c.tracing.otlp.is_none());

    let on = parse(&format!(
        "{EXAMPLE}access_log: {{ format: text, path: /tmp/a.log }}\ntracing: {{ start: ratio, ratio: 0.25 }}\n"
    ))
    .unwrap();
    let log = on.access_log.unwrap();
    assert_eq!(log.format, crate::access_log::Format::Text);
    assert_eq!(
        log.target,
        crate::access_log::Target::File("/tmp/a.log".into())
    );
    assert_eq!(on.tracing.start, crate::trace::Start::Ratio(0.25));

    for (extra, field) in [
        ("access_log: { format: xml }", "access_log.format"),
        ("access_log: { buffer: 0 }", "access_log.buffer"),
        (
            "request_id: { header: \"bad header\" }",
            "request_id.header",
        ),
        ("tracing: { start: sometimes }", "tracing.start"),
        ("tracing: { start: ratio }", "tracing.ratio"),
        ("tracing: { start: always, ratio: 0.5 }", "tracing.ratio"),
        ("tracing: { ratio: 2 }", "tracing.ratio"),
        (
            "tracing: { otlp_endpoint: \"collector:4318\" }",
            "tracing.otlp_endpoint",
        ),
    ] {
        let (message, _) = error_of(&format!("{EXAMPLE}{extra}\n"));
        assert!(message.contains(field), "{extra}: {message}");
    }
}
