//! TLS termination as real clients see it: curl over HTTP/1.1 and HTTP/2, `openssl s_client`'s
//! ALPN and SNI, a Kubernetes Secret's certificate rotated under load, a broken pair kept out of
//! service, and `tidegate validate` on a key that does not fit its certificate.
//!
//! Certificates are made at run time with the `openssl` CLI (tests/deps.sh installs it and curl)
//! in the proxy's temp dir, beside its config: never committed. Leaf certificates are signed by a
//! throwaway CA (`ca.crt`), which every client trusts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::TlsConnector;

use crate::support::*;

const SUCCESS: &str = "tidegate_tls_reloads_total{result=\"success\"}";
const ERROR: &str = "tidegate_tls_reloads_total{result=\"error\"}";

/// Runs `command` (its stdin closed) to completion off the runtime's threads.
async fn run(mut command: Command) -> Output {
    command.stdin(Stdio::null());
    tokio::task::spawn_blocking(move || command.output().expect("run a client"))
        .await
        .unwrap()
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("openssl (tests/deps.sh installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A throwaway CA in `dir`: `ca.crt` and `ca.key`.
fn make_ca(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=tidegate test CA",
        ],
    );
}

/// A certificate (`cert`) and its key (`key`), paths relative to `dir`, signed by the CA in `dir`:
/// subject `CN=<cn>`, valid for `names`.
fn make_pair(dir: &Path, cert: &str, key: &str, cn: &str, names: &[&str]) {
    let subject = format!("/CN={cn}");
    let san = names
        .iter()
        .map(|n| format!("DNS:{n}"))
        .collect::<Vec<_>>()
        .join(",");
    let san = format!("subjectAltName={san}");
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            key,
            "-out",
            cert,
            "-days",
            "2",
            "-subj",
            &subject,
            "-addext",
            &san,
            "-addext",
            "basicConstraints=critical,CA:FALSE",
        ],
    );
}

/// Replaces `path` the way an editor does: a new file renamed over the old one.
fn replace(path: &Path, contents: &[u8]) {
    let tmp = path.with_extension("swp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Starts the proxy with its config written into `dir`, where the certificates already are (they
/// are checked when the config loads).
async fn start_in(dir: tempfile::TempDir, proxy: TestProxy) -> RunningProxy {
    let config = dir.path().join("tidegate.yaml");
    std::fs::write(&config, proxy.render()).unwrap();
    RunningProxy::spawn(dir, config).await
}

/// `curl` over HTTPS to `name` (resolved to the proxy), with `version` (`--http1.1`, `--http2`):
/// the body, then the HTTP version on a line of its own.
async fn curl(proxy: &RunningProxy, name: &str, version: &str) -> String {
    let port = proxy.addr.port();
    let mut command = Command::new("curl");
    command
        .args(["-sS", "--fail", "--max-time", "10", version, "--cacert"])
        .arg(proxy.dir.path().join("ca.crt"))
        .args(["--resolve", &format!("{name}:{port}:127.0.0.1")])
        .args(["-w", "\n%{http_version}"])
        .arg(format!("https://{name}:{port}/"));
    let out = run(command).await;
    assert!(
        out.status.success(),
        "curl {version}: {}; proxy logs: {:?}",
        String::from_utf8_lossy(&out.stderr),
        proxy.logs()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One `openssl s_client` handshake with the proxy (stdin closed, so it ends after the handshake):
/// its output. `server_name: None` sends no SNI.
async fn s_client(proxy: &RunningProxy, server_name: Option<&str>, alpn: &str) -> String {
    let mut command = Command::new("timeout");
    command
        .args(["10", "openssl", "s_client", "-connect"])
        .arg(proxy.addr.to_string())
        .args(["-alpn", alpn]);
    match server_name {
        Some(name) => command.args(["-servername", name]),
        None => command.arg("-noservername"),
    };
    let out = run(command).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "openssl s_client ({server_name:?}): {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The subject line `openssl s_client` printed for the server's certificate.
fn subject(output: &str) -> &str {
    output
        .lines()
        .find(|l| l.starts_with("subject="))
        .unwrap_or_else(|| panic!("no subject in {output}"))
}

/// A rustls client trusting the CA certificates in `cas`, offering HTTP/1.1; with `resume`, it
/// resumes TLS sessions (a resumed handshake carries no certificate: rustls reports the one of the
/// session it resumed, so only full handshakes tell which certificate the proxy serves).
fn connector(cas: &[PathBuf], resume: bool) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for ca in cas {
        for cert in CertificateDer::pem_file_iter(ca).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    if !resume {
        config.resumption = rustls::client::Resumption::disabled();
    }
    TlsConnector::from(Arc::new(config))
}

/// The first certificate of the PEM file at `path`, DER-encoded.
fn leaf_der(path: &Path) -> Vec<u8> {
    CertificateDer::from_pem_file(path).unwrap().to_vec()
}

/// Opens a TLS connection to `addr` for `name` and sends `requests` GETs on it (HTTP/1.1
/// keep-alive): the server's certificate (DER), whether the session was resumed, then each
/// request's outcome.
async fn https_session(
    connector: &TlsConnector,
    addr: SocketAddr,
    name: &str,
    requests: usize,
) -> Result<(Vec<u8>, bool, Vec<Result<String, String>>), String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let server_name = ServerName::try_from(name.to_owned()).unwrap();
    let tls = tokio::time::timeout(Duration::from_secs(10), connector.connect(server_name, tcp))
        .await
        .map_err(|_| "no handshake within 10s".to_owned())?
        .map_err(|e| format!("handshake: {e}"))?;
    let session = tls.get_ref().1;
    let cert = session.peer_certificates().expect("a certificate")[0].to_vec();
    let resumed = session.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(tls))
            .await
            .map_err(|e| format!("http1 handshake: {e}"))?;
    tokio::spawn(connection);
    let mut outcomes = Vec::new();
    for _ in 0..requests {
        let request = Request::get("/")
            .header("host", name)
            .body(Empty::new())
            .unwrap();
        let outcome = async {
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?;
            let body = String::from_utf8_lossy(&body.to_bytes()).into_owned();
            if status.is_success() {
                Ok(body)
            } else {
                Err(format!("{status}: {body}"))
            }
        };
        let outcome = tokio::time::timeout(Duration::from_secs(10), outcome)
            .await
            .unwrap_or_else(|_| Err("no response within 10s".to_owned()));
        outcomes.push(outcome);
    }
    Ok((cert, resumed, outcomes))
}

/// The certificate a new full handshake for `name` gets (DER).
async fn served_cert(cas: &[PathBuf], addr: SocketAddr, name: &str) -> Vec<u8> {
    let (cert, _, outcomes) = https_session(&connector(cas, false), addr, name, 1)
        .await
        .expect("an HTTPS request");
    assert!(outcomes[0].is_ok(), "{outcomes:?}");
    cert
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_gets_the_backend_over_https_with_http1_and_http2() {
    let app = backend("v1").run().await;
    let dir = tempfile::tempdir().unwrap();
    make_ca(dir.path());
    make_pair(dir.path(), "www.crt", "www.key", "www.test", &["www.test"]);
    let proxy = start_in(
        dir,
        TestProxy::new()
            .endpoints(&[&app])
            .yaml("tls: { cert_file: www.crt, key_file: www.key }"),
    )
    .await;

    for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let out = curl(&proxy, "www.test", flag).await;
        let (body, seen) = out.rsplit_once('\n').unwrap();
        assert!(body.starts_with("This is v1 running in pod"), "{out}");
        assert_eq!(seen, version, "curl {flag}: {out}");
        assert_eq!(
            app.last_headers()["x-forwarded-proto"],
            "https",
            "curl {flag}"
        );
    }
    assert_eq!(app.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_sees_alpn_and_the_certificate_for_its_sni_name() {
    let app = backend("v1").run().await;
    let dir = tempfile::tempdir().unwrap();
    make_ca(dir.path());
    make_pair(dir.path(), "a.crt", "a.key", "a.test", &["a.test"]);
    make_pair(
        dir.path(),
        "b.crt",
        "b.key",
        "b.test",
        &["b.test", "*.b.test"],
    );
    let proxy = start_in(
        dir,
        TestProxy::new().endpoints(&[&app]).yaml(
            "tls:\n  certificates:\n    - { cert_file: a.crt, key_file: a.key }\n    - { cert_file: b.crt, key_file: b.key }",
        ),
    )
    .await;

    let out = s_client(&proxy, Some("b.test"), "h2").await;
    assert!(out.contains("ALPN protocol: h2"), "{out}");
    assert_eq!(subject(&out), "subject=CN = b.test");
    let out = s_client(&proxy, Some("b.test"), "http/1.1").await;
    assert!(out.contains("ALPN protocol: http/1.1"), "{out}");

    // By name (a wildcard included); a client without SNI, or naming no configured certificate,
    // gets the first pair.
    for (name, cn) in [
        (Some("a.test"), "a.test"),
        (Some("x.b.test"), "b.test"),
        (Some("c.test"), "a.test"),
        (None, "a.test"),
    ] {
        let out = s_client(&proxy, name, "h2").await;
        assert_eq!(subject(&out), format!("subject=CN = {cn}"), "SNI {name:?}");
        assert!(out.contains("ALPN protocol: h2"), "{out}");
    }
}

/// The layout the kubelet gives a mounted Secret: `tls.crt` → `..data/tls.crt`, `..data` → a
/// timestamped directory; an update swaps `..data` in one rename.
fn secret_version(dir: &Path, version: &str, cn: &str) -> PathBuf {
    let data = dir.join(version);
    std::fs::create_dir(&data).unwrap();
    let (cert, key) = (format!("{version}/tls.crt"), format!("{version}/tls.key"));
    make_pair(dir, &cert, &key, cn, &["www.test"]);
    data
}

fn point_data_at(dir: &Path, version: &str) {
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(version, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_serves_new_handshakes_without_failing_a_request() {
    let app = backend("v1").run().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    make_ca(&path);
    let old = secret_version(&path, "..2026_01_01_00_00_00.000000001", "tidegate-old");
    point_data_at(&path, "..2026_01_01_00_00_00.000000001");
    for file in ["tls.crt", "tls.key"] {
        std::os::unix::fs::symlink(format!("..data/{file}"), path.join(file)).unwrap();
    }
    let proxy = start_in(
        dir,
        TestProxy::new()
            .endpoints(&[&app])
            .yaml("tls: { cert_file: tls.crt, key_file: tls.key }"),
    )
    .await;
    let old_cert = leaf_der(&old.join("tls.crt"));
    let cas = [path.join("ca.crt")];
    assert_eq!(served_cert(&cas, proxy.addr, "www.test").await, old_cert);

    // Constant load: each worker opens a connection, sends a few keep-alive requests on it, and
    // opens the next. Half the workers resume TLS sessions, as browsers do; the other half make
    // full handshakes, whose certificates are recorded.
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Arc<Mutex<BTreeMap<Vec<u8>, usize>>> = Arc::default();
    let deadline = Instant::now() + Duration::from_secs(60);
    let (fresh, resuming) = (connector(&cas, false), connector(&cas, true));
    let workers: Vec<_> = (0..4)
        .map(|i| {
            let connector = if i % 2 == 0 { &fresh } else { &resuming }.clone();
            let (stop, seen, addr) = (stop.clone(), seen.clone(), proxy.addr);
            tokio::spawn(async move {
                let (mut ok, mut failures) = (0, Vec::new());
                while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                    match https_session(&connector, addr, "www.test", 3).await {
                        Ok((cert, resumed, outcomes)) => {
                            if !resumed {
                                *seen.lock().unwrap().entry(cert).or_default() += 1;
                            }
                            for outcome in outcomes {
                                match outcome {
                                    Ok(_) => ok += 1,
                                    Err(e) => failures.push(e),
                                }
                            }
                        }
                        Err(e) => failures.push(e),
                    }
                }
                (ok, failures)
            })
        })
        .collect();
    let handshakes = |cert: &[u8]| seen.lock().unwrap().get(cert).copied().unwrap_or(0);
    wait_until(
        "50 handshakes before the rotation",
        Duration::from_secs(20),
        || async { handshakes(&old_cert) >= 50 },
    )
    .await;

    let new = secret_version(&path, "..2026_01_02_00_00_00.000000002", "tidegate-new");
    let new_cert = leaf_der(&new.join("tls.crt"));
    point_data_at(&path, "..2026_01_02_00_00_00.000000002");
    std::fs::remove_dir_all(&old).unwrap();
    proxy
        .wait_metric(SUCCESS, 1.0, Duration::from_secs(10))
        .await;
    wait_until(
        "50 handshakes after the rotation",
        Duration::from_secs(20),
        || async { handshakes(&new_cert) >= 50 },
    )
    .await;

    stop.store(true, Ordering::SeqCst);
    let (mut ok, mut failures) = (0, Vec::new());
    for worker in workers {
        let (n, f) = worker.await.unwrap();
        ok += n;
        failures.extend(f);
    }
    assert!(
        failures.is_empty(),
        "{} failed: {failures:?}",
        failures.len()
    );
    assert!(ok >= 300, "only {ok} requests");
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.keys().all(|c| *c == old_cert || *c == new_cert),
        "a third certificate was served"
    );
    assert_eq!(served_cert(&cas, proxy.addr, "www.test").await, new_cert);
    assert!(proxy.metric(SUCCESS).await >= Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_pair_keeps_the_old_certificate_serving() {
    let app = backend("v1").run().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    make_ca(&path);
    make_pair(&path, "www.crt", "www.key", "tidegate-a", &["www.test"]);
    make_pair(&path, "other.crt", "other.key", "tidegate-b", &["www.test"]);
    let proxy = start_in(
        dir,
        TestProxy::new()
            .endpoints(&[&app])
            .yaml("tls: { cert_file: www.crt, key_file: www.key }"),
    )
    .await;
    let cas = [path.join("ca.crt")];
    let a = leaf_der(&path.join("www.crt"));
    let b = leaf_der(&path.join("other.crt"));
    assert_eq!(served_cert(&cas, proxy.addr, "www.test").await, a);

    // The key of another certificate.
    let key_file = path.join("www.key");
    replace(&key_file, &std::fs::read(path.join("other.key")).unwrap());
    proxy.wait_metric(ERROR, 1.0, Duration::from_secs(10)).await;
    // Reported once, however many reloads see the same broken files.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(proxy.metric(ERROR).await, Some(1.0));
    assert_eq!(proxy.metric(SUCCESS).await, Some(0.0));
    assert_eq!(served_cert(&cas, proxy.addr, "www.test").await, a);
    let warnings: Vec<_> = proxy
        .logs()
        .into_iter()
        .filter(|l| l.contains("\"WARN\"") && l.contains("TLS certificates not reloaded"))
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains(&key_file.display().to_string()),
        "the warning names the key file: {warnings:?}"
    );

    // Garbage in the certificate file: another broken set, reported once more.
    let cert_file = path.join("www.crt");
    replace(
        &cert_file,
        b"-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n",
    );
    proxy.wait_metric(ERROR, 2.0, Duration::from_secs(10)).await;
    assert_eq!(served_cert(&cas, proxy.addr, "www.test").await, a);
    let logs = proxy.logs();
    assert!(
        logs.iter()
            .any(|l| l.contains("TLS certificates not reloaded")
                && l.contains(&cert_file.display().to_string())),
        "a warning names the certificate file: {logs:?}"
    );

    // The certificate that fits the key: the pair loads and serves new handshakes.
    replace(&cert_file, &std::fs::read(path.join("other.crt")).unwrap());
    proxy
        .wait_metric(SUCCESS, 1.0, Duration::from_secs(10))
        .await;
    assert_eq!(served_cert(&cas, proxy.addr, "www.test").await, b);
    assert_eq!(proxy.metric(ERROR).await, Some(2.0));

    // A key file gone missing is reported once too, not at every reload; back in place, the set in
    // service is unchanged, and the same loss later is news again.
    let serving_key = std::fs::read(&key_file).unwrap();
    std::fs::remove_file(&key_file).unwrap();
    proxy.wait_metric(ERROR, 3.0, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        proxy.metric(ERROR).await,
        Some(3.0),
        "one missing file, one report"
    );
    assert_eq!(served_cert(&cas, proxy.addr, "www.test").await, b);
    replace(&key_file, &serving_key);
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::remove_file(&key_file).unwrap();
    proxy.wait_metric(ERROR, 4.0, Duration::from_secs(10)).await;
    assert_eq!(proxy.metric(SUCCESS).await, Some(1.0));
}

#[test]
fn validate_rejects_a_key_that_does_not_fit_its_certificate() {
    let dir = tempfile::tempdir().unwrap();
    make_ca(dir.path());
    make_pair(dir.path(), "a.crt", "a.key", "a.test", &["a.test"]);
    make_pair(dir.path(), "b.crt", "b.key", "b.test", &["b.test"]);
    let config = dir.path().join("tidegate.yaml");
    let validate = |tls: &str| {
        let text = TestProxy::new()
            .endpoint_at("127.0.0.2:8080".parse().unwrap(), "v1")
            .yaml(tls)
            .render();
        std::fs::write(&config, text).unwrap();
        Command::new(binary())
            .args(["validate", "--config"])
            .arg(&config)
            .output()
            .unwrap()
    };

    let out = validate("tls: { cert_file: a.crt, key_file: a.key }");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = validate("tls: { cert_file: a.crt, key_file: b.key }");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("tls"), "names the field: {stderr}");
    assert!(stderr.contains("b.key"), "names the key file: {stderr}");
}

/// `tidegate loadtest` (the real binary) against the HTTPS proxy for `shop.test`, connecting to
/// its address: the exit status and stdout.
async fn loadtest_https(proxy: &RunningProxy, extra: &[&str]) -> (Option<i32>, String) {
    let url = format!("https://shop.test:{}/", proxy.addr.port());
    let mut command = Command::new(binary());
    command
        .args(["loadtest", &url, "--connect-to", &proxy.addr.to_string()])
        .args([
            "--rate",
            "100",
            "--duration",
            "300ms",
            "--connections",
            "4",
            "-q",
        ])
        .args(extra);
    let out = run(command).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    (
        out.status.code(),
        stdout + &String::from_utf8_lossy(&out.stderr),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadtest_speaks_https_verifying_or_insecure_over_http1_and_http2() {
    let app = backend("v1").run().await;
    let dir = tempfile::tempdir().unwrap();
    make_ca(dir.path());
    make_pair(
        dir.path(),
        "shop.crt",
        "shop.key",
        "shop.test",
        &["shop.test"],
    );
    let ca = dir.path().join("ca.crt");
    let proxy = start_in(
        dir,
        TestProxy::new()
            .endpoints(&[&app])
            .yaml("tls: { cert_file: shop.crt, key_file: shop.key }"),
    )
    .await;
    let ca = ca.to_str().unwrap();
    for protocol in [&[][..], &["--http2"][..]] {
        for verify in [&["--cacert", ca][..], &["--insecure"][..]] {
            let hits = app.hits();
            let extra = [protocol, verify].concat();
            let (code, out) = loadtest_https(&proxy, &extra).await;
            assert_eq!(code, Some(0), "{extra:?}: {out}");
            assert!(
                out.contains("30 in") && out.contains("0 failed"),
                "{extra:?}: {out}"
            );
            let spoken = if protocol.is_empty() {
                "(HTTP/1.1"
            } else {
                "(HTTP/2"
            };
            assert!(out.contains(spoken), "{extra:?}: {out}");
            assert_eq!(
                app.hits() - hits,
                30,
                "{extra:?}: every request reached the app"
            );
            assert_eq!(app.last_headers()["x-forwarded-proto"], "https");
        }
    }
    // The system's roots do not know the test CA: the certificate is refused, nothing is sent.
    let hits = app.hits();
    let (code, out) = loadtest_https(&proxy, &[]).await;
    assert_eq!(
        code,
        Some(1),
        "an unverified certificate fails the run: {out}"
    );
    assert!(out.contains("30 failed"), "{out}");
    assert_eq!(app.hits(), hits);
    // A CA file that is not one is a clear error.
    let (code, out) = loadtest_https(&proxy, &["--cacert", "/nonexistent/ca.pem"]).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("cannot read CA file"), "{out}");
}
