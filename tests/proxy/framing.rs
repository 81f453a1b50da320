//! One framing policy for both upstream paths: the same upstream bytes, sent through the lean
//! HTTP/1.1 path and through hyper's client, give the client the same bytes and the upstream
//! connection the same reuse decision. The cases are RFC 9112's edge cases (§6 message body
//! length, §7.1 chunked coding, §4 status line) and a broken backend's favourite mistakes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

/// An upstream response to send as raw bytes, and what the one policy says of it.
struct Case {
    name: &'static str,
    method: &'static str,
    /// Extra request header lines (e.g. `te: trailers`).
    request: &'static str,
    response: Vec<u8>,
    /// The backend closes the connection after writing the response.
    close: bool,
    /// The status line the client must get; 0: the body breaks off after the head went out, so
    /// the client must see an incomplete response (never a clean end).
    status: u16,
    /// Whether the upstream connection may carry the next request.
    reuse: bool,
    /// Something the client's answer must contain (a trailer, the folded length).
    shows: Option<&'static str>,
}

fn case(name: &'static str, response: &str, status: u16, reuse: bool) -> Case {
    Case {
        name,
        method: "GET",
        request: "",
        response: response.as_bytes().to_vec(),
        close: false,
        status,
        reuse,
        shows: None,
    }
}

impl Case {
    fn closing(mut self) -> Self {
        self.close = true;
        self
    }

    fn method(mut self, method: &'static str) -> Self {
        self.method = method;
        self
    }

    fn request(mut self, lines: &'static str) -> Self {
        self.request = lines;
        self
    }

    fn shows(mut self, text: &'static str) -> Self {
        self.shows = Some(text);
        self
    }
}

fn cases() -> Vec<Case> {
    let many = |n: usize| {
        let lines: String = (0..n).map(|i| format!("x-h{i}: {i}\r\n")).collect();
        format!("HTTP/1.1 200 OK\r\n{lines}content-length: 2\r\n\r\nok")
    };
    let big_head = format!(
        "HTTP/1.1 200 OK\r\nx-big: {}\r\ncontent-length: 2\r\n\r\nok",
        "a".repeat(70 * 1024)
    );
    let mut cases = vec![
        case("content-length", "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello", 200, true),
        case("zero length", "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", 200, true),
        case(
            "chunked",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
            200,
            true,
        ),
        case(
            "chunk extension",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;name=value\r\nhello\r\n0\r\n\r\n",
            200,
            true,
        ),
        case(
            "trailers to a client that accepts them",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-checksum\r\n\r\n5\r\nhello\r\n0\r\nx-checksum: abc\r\n\r\n",
            200,
            true,
        )
        .request("te: trailers\r\n")
        .shows("hello\r\n0\r\nx-checksum: abc\r\n\r\n"),
        case(
            "content-length and chunked together",
            "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            502,
            false,
        ),
        case("signed content-length", "HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\nhello", 502, false),
        case("negative content-length", "HTTP/1.1 200 OK\r\ncontent-length: -5\r\n\r\nhello", 502, false),
        case("hex content-length", "HTTP/1.1 200 OK\r\ncontent-length: 0x5\r\n\r\nhello", 502, false),
        case(
            "differing content-lengths",
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!",
            502,
            false,
        ),
        case(
            "repeated equal content-lengths",
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\nhello",
            200,
            true,
        )
        .shows("HTTP/1.1 200 OK\r\ncontent-length: 5\r\nvia"),
        case(
            "content-length list of equal values",
            "HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\n\r\nhello",
            200,
            true,
        )
        .shows("content-length: 5\r\n"),
        case(
            "content-length overflow",
            "HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\nhello",
            502,
            false,
        ),
        case(
            "transfer-encoding on HTTP/1.0",
            "HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            502,
            false,
        ),
        case(
            "coding that does not end in chunked reads to close",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\nraw-until-close",
            200,
            false,
        )
        .closing(),
        case("close-delimited", "HTTP/1.1 200 OK\r\n\r\nuntil the end", 200, false).closing(),
        case("HTTP/1.0 with a length", "HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok", 200, false),
        case(
            "HTTP/1.0 keep-alive",
            "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 2\r\n\r\nok",
            200,
            true,
        ),
        case(
            "connection: close",
            "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
            200,
            false,
        ),
        case(
            "100 continue before the answer",
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            200,
            true,
        ),
        case(
            "103 early hints before the answer",
            "HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            200,
            true,
        ),
        case(
            "unsolicited 101",
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n",
            502,
            false,
        ),
        case("204 with a length", "HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n", 204, true),
        case(
            "304 with a length and no body",
            "HTTP/1.1 304 Not Modified\r\ncontent-length: 5\r\n\r\n",
            304,
            true,
        ),
        case(
            "HEAD with a length",
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
            200,
            true,
        )
        .method("HEAD"),
        case(
            "chunk size followed by spaces",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5  \r\nhello\r\n0\r\n\r\n",
            200,
            true,
        ),
        case(
            "chunk size line ending in a bare LF",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
            0,
            false,
        ),
        case(
            "chunk data without its CRLF",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
            0,
            false,
        ),
        case(
            "chunk size overflow",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n11111111111111111\r\nx\r\n0\r\n\r\n",
            0,
            false,
        ),
        case(
            "body shorter than its length",
            "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort",
            0,
            false,
        )
        .closing(),
        case("no response at all", "", 502, false).closing(),
        case("status line garbage", "HTTP/1.1 abc OK\r\ncontent-length: 0\r\n\r\n", 502, false),
        case("not HTTP", "SSH-2.0-OpenSSH_9.2\r\n\r\n", 502, false),
        case("HTTP/2 status line", "HTTP/2 200\r\ncontent-length: 0\r\n\r\n", 502, false),
        case("no reason phrase", "HTTP/1.1 200\r\ncontent-length: 2\r\n\r\nok", 200, true)
            .shows("HTTP/1.1 200 OK\r\n"),
        case("bare LF head", "HTTP/1.1 200 OK\ncontent-length: 2\n\nok", 200, true),
        case(
            "obsolete line folding",
            "HTTP/1.1 200 OK\r\nx-a: 1\r\n folded\r\ncontent-length: 2\r\n\r\nok",
            502,
            false,
        ),
        case(
            "space before the colon",
            "HTTP/1.1 200 OK\r\ncontent-length : 2\r\n\r\nok",
            502,
            false,
        ),
        case("head of 70 KiB", &big_head, 502, false),
    ];
    cases.push(Case {
        response: many(90).into_bytes(),
        ..case("90 headers", "", 200, true)
    });
    cases.push(Case {
        response: many(130).into_bytes(),
        ..case("130 headers", "", 502, false)
    });
    // Trailers are bounded like a head: 20,000 fields (~150 KiB) break the body off.
    let trailers: String = (0..20_000).map(|i| format!("t{i}: 1\r\n")).collect();
    cases.push(Case {
        response: format!(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n{trailers}\r\n"
        )
        .into_bytes(),
        ..case("150 KiB of trailers", "", 0, false).request("te: trailers\r\n")
    });
    cases
}

/// The case the backend answers the next first request with.
#[derive(Default)]
struct Script {
    response: Vec<u8>,
    close: bool,
    /// Set once the case's response went out; later requests get a plain `ok`.
    served: bool,
    /// Connection number of every request received, in order.
    requests: Vec<usize>,
}

/// A backend that answers from a script over raw sockets.
async fn raw_backend() -> (std::net::SocketAddr, Arc<Mutex<Script>>) {
    let listener = TcpListener::bind((pod_ip(), 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let script = Arc::new(Mutex::new(Script::default()));
    let connections = Arc::new(AtomicUsize::new(0));
    let shared = script.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let id = connections.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve_script(socket, id, shared.clone()));
        }
    });
    (addr, script)
}

async fn serve_script(mut socket: TcpStream, id: usize, script: Arc<Mutex<Script>>) {
    let mut pending = Vec::new();
    loop {
        let head_end = loop {
            if let Some(at) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let mut chunk = [0u8; 4096];
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => pending.extend_from_slice(&chunk[..n]),
            }
        };
        pending.drain(..head_end);
        let (answer, close) = {
            let mut script = script.lock().unwrap();
            script.requests.push(id);
            if script.served {
                // Closed after it, so that every case starts on a fresh connection.
                let ok = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok";
                (ok.to_vec(), true)
            } else {
                script.served = true;
                (script.response.clone(), script.close)
            }
        };
        if socket.write_all(&answer).await.is_err() || close {
            return;
        }
    }
}

/// What a client saw: the raw response without its `date` and `x-request-id` lines (both differ
/// per request), or what arrived before the connection broke, marked.
async fn client_exchange(proxy: &RunningProxy, method: &str, path: &str, extra: &str) -> String {
    let mut socket = TcpStream::connect(proxy.addr).await.unwrap();
    let request =
        format!("{method} {path} HTTP/1.1\r\nhost: raw\r\nconnection: close\r\n{extra}\r\n");
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut broke = "";
    loop {
        let mut chunk = [0u8; 8192];
        match tokio::time::timeout(Duration::from_secs(5), socket.read(&mut chunk)).await {
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => answer.extend_from_slice(&chunk[..n]),
            Ok(Err(_)) => {
                broke = "\n<connection broke>";
                break;
            }
            Err(_) => {
                broke = "\n<no end of response within 5 s>";
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&answer);
    // tidegate's own error answers name the cause in their body in each path's words: compare
    // their status and `x-tidegate-error` kind only.
    let own_error = text.contains("x-tidegate-error:");
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let kept: Vec<&str> = head
        .split("\r\n")
        .filter(|line| {
            let line = line.to_ascii_lowercase();
            let dropped = line.starts_with("date:")
                || line.starts_with("x-request-id:")
                || (own_error && line.starts_with("content-length:"));
            !dropped
        })
        .collect();
    let body = if own_error { "" } else { body };
    if !broke.is_empty() || !complete(&text, method) {
        // Where a broken body cuts a response off depends on timing (what was flushed before
        // the connection was aborted); the client sees an incomplete response either way.
        return INCOMPLETE.to_owned();
    }
    format!("{}\r\n\r\n{body}", kept.join("\r\n"))
}

/// What a client sees when the response breaks off after its head (or before any of it).
const INCOMPLETE: &str = "<incomplete response>";

/// Whether `text` is one whole response: a head, and a body as long as its framing says.
fn complete(text: &str, method: &str) -> bool {
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let head = head.to_ascii_lowercase();
    let bodyless =
        method == "HEAD" || head.starts_with("http/1.1 204") || head.starts_with("http/1.1 304");
    if bodyless {
        return body.is_empty();
    }
    if head.contains("transfer-encoding: chunked") {
        return body.ends_with("0\r\n\r\n") || body.contains("\r\n0\r\n");
    }
    match head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        Some(length) => body.len() == length,
        // Close-delimited: whatever came before the clean close.
        None => true,
    }
}

/// At most 300 characters of `text`, for messages.
fn cut(text: &str) -> String {
    match text.char_indices().nth(300) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// Runs every case through `proxy`: what the client saw, and whether the connection was reused.
async fn run_cases(proxy: &RunningProxy, script: &Mutex<Script>) -> Vec<(String, bool)> {
    let mut seen = Vec::new();
    for case in cases() {
        *script.lock().unwrap() = Script {
            response: case.response.clone(),
            close: case.close,
            ..Script::default()
        };
        let answer = client_exchange(proxy, case.method, "/case", case.request).await;
        // A plain request after it: does it travel on the same upstream connection?
        let next = client_exchange(proxy, "GET", "/next", "").await;
        assert!(
            next.starts_with("HTTP/1.1 200") && next.ends_with("ok"),
            "{}: the request after the case must be served: {next:?}",
            case.name
        );
        let requests = script.lock().unwrap().requests.clone();
        assert_eq!(requests.len(), 2, "{}: one request each", case.name);
        seen.push((answer, requests[0] == requests[1]));
    }
    seen
}

/// Retries off so that each request is one attempt; `lean: false` forces hyper's client (a
/// request that is never resent is never read ahead, so it takes the streaming path).
async fn proxy_for(backend: std::net::SocketAddr, lean: bool) -> RunningProxy {
    TestProxy::new()
        .endpoint_at(backend, "v1")
        .yaml(&format!(
            "retries: {{ connect_attempts: 1, on: [], idempotent: {lean} }}"
        ))
        .yaml("outlier: null")
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_upstream_paths_answer_the_same_bytes_the_same_way() {
    let (lean_backend, lean_script) = raw_backend().await;
    let (hyper_backend, hyper_script) = raw_backend().await;
    let lean = proxy_for(lean_backend, true).await;
    let hyper = proxy_for(hyper_backend, false).await;

    let lean_seen = run_cases(&lean, &lean_script).await;
    let hyper_seen = run_cases(&hyper, &hyper_script).await;

    let mut wrong = Vec::new();
    for ((case, lean), hyper) in cases().iter().zip(&lean_seen).zip(&hyper_seen) {
        let status = match case.status {
            0 => INCOMPLETE.to_owned(),
            code => format!("HTTP/1.1 {code}"),
        };
        for (path, (answer, reused)) in [("lean", lean), ("hyper", hyper)] {
            let shows = case.shows.is_none_or(|text| answer.contains(text));
            if !answer.starts_with(&status) || *reused != case.reuse || !shows {
                wrong.push(format!(
                    "{} via {path}: want {status}, reuse {}, showing {:?}; got reuse {reused}, {:?}",
                    case.name,
                    case.reuse,
                    case.shows,
                    cut(answer)
                ));
            }
        }
        if lean != hyper {
            wrong.push(format!(
                "{}: the paths differ:\n  lean  {:?}\n  hyper {:?}",
                case.name,
                (cut(&lean.0), lean.1),
                (cut(&hyper.0), hyper.1)
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} cases break the one framing policy:\n{}",
        wrong.len(),
        lean_seen.len(),
        wrong.join("\n")
    );
}
