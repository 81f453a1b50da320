//! The connection cap over real loopback sockets: the wait at the cap, what ends it (a connection
//! going idle, one closing, the deadline), and idle connections of the other kind making room.

use std::time::Instant;

use tokio::net::TcpListener;

use super::*;

/// An endpoint that accepts connections and keeps them open, answering nothing.
async fn silent_endpoint() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            open.push(stream);
        }
    });
    address
}

/// The connect timeout, which also bounds the wait for room.
const CONNECT: Duration = Duration::from_secs(5);

/// A lean connection to `pool`'s endpoint, with at most `max` open.
async fn lean(
    pool: &Pool,
    max: usize,
    wait: Duration,
) -> Result<(h1::Connection, bool), ConnectError> {
    let checkout = pool.checkout(Path::Lean, wait, 100, max).await?;
    match checkout.transport {
        Transport::H1(Some(conn)) => Ok((conn, checkout.reused)),
        _ => panic!("a lean checkout gives a lean connection"),
    }
}

#[tokio::test]
async fn at_the_cap_a_request_waits_its_time_then_the_endpoint_is_saturated() {
    let pool = Pool::new(silent_endpoint().await, Protocol::Http1);
    let (_held, reused) = lean(&pool, 1, CONNECT).await.unwrap();
    assert!(!reused);

    let wait = Duration::from_millis(150);
    let start = Instant::now();
    let waited = lean(&pool, 1, wait).await;
    let elapsed = start.elapsed();
    assert!(matches!(waited, Err(ConnectError::Saturated(1))));
    assert!(
        elapsed >= wait && elapsed < CONNECT,
        "a request at the cap waits for room until its wait runs out, then fails: {elapsed:?}"
    );
    assert_eq!(pool.h1_connections(), 1, "no connection beyond the cap");
    assert!(
        lean(&pool, 2, CONNECT).await.is_ok(),
        "a raised limit has room at once"
    );
}

#[tokio::test]
async fn a_connection_going_idle_goes_to_the_request_waiting_for_room() {
    let pool = Pool::new(silent_endpoint().await, Protocol::Http1);
    let (held, _) = lean(&pool, 1, CONNECT).await.unwrap();
    let mut waiting = pin!(lean(&pool, 1, CONNECT));
    assert!(
        tokio::time::timeout(Duration::from_millis(50), &mut waiting)
            .await
            .is_err(),
        "at the cap the request waits"
    );
    pool.put_h1(held);
    let (_conn, reused) = tokio::time::timeout(CONNECT, waiting)
        .await
        .expect("the idle connection ends the wait")
        .unwrap();
    assert!(reused, "the waiting request takes the idle connection");
    assert_eq!(pool.h1_connections(), 1);
}

#[tokio::test]
async fn a_connection_closing_makes_room_for_a_new_one() {
    let pool = Pool::new(silent_endpoint().await, Protocol::Http1);
    let (held, _) = lean(&pool, 1, CONNECT).await.unwrap();
    let mut waiting = pin!(lean(&pool, 1, CONNECT));
    assert!(
        tokio::time::timeout(Duration::from_millis(50), &mut waiting)
            .await
            .is_err()
    );
    drop(held);
    let (_conn, reused) = tokio::time::timeout(CONNECT, waiting)
        .await
        .expect("the closed connection's permit ends the wait")
        .unwrap();
    assert!(!reused, "the waiting request opens a new connection");
    assert_eq!(pool.h1_connections(), 1);
}

#[tokio::test]
async fn an_idle_connection_of_the_other_kind_is_closed_to_make_room() {
    let pool = Pool::new(silent_endpoint().await, Protocol::Http1);
    let streaming = pool
        .checkout(Path::Streaming, CONNECT, 100, 1)
        .await
        .unwrap();
    let Transport::Hyper(Some(mut sender)) = streaming.transport else {
        panic!("a streaming checkout gives a hyper connection")
    };
    sender.ready().await.unwrap();
    pool.put(sender);
    assert_eq!(pool.idle(), 1);

    let (_conn, reused) = tokio::time::timeout(CONNECT, lean(&pool, 1, CONNECT))
        .await
        .expect("the idle hyper connection must make room")
        .unwrap();
    assert!(!reused);
    assert_eq!(pool.idle(), 0, "the idle hyper connection was closed");
    assert_eq!(pool.h1_connections(), 1);
}

#[tokio::test]
async fn http2_endpoints_are_not_capped() {
    let pool = Pool::new(silent_endpoint().await, Protocol::H2c);
    // An HTTP/2 handshake against a silent endpoint never completes: the checkout times out,
    // with no connection counted against the cap (of 0, which no HTTP/1.1 checkout could pass).
    let checkout = pool
        .checkout(Path::Lean, Duration::from_millis(100), 100, 0)
        .await;
    assert!(
        !matches!(checkout, Err(ConnectError::Saturated(_))),
        "the cap applies to HTTP/1.1 only"
    );
    assert_eq!(pool.h1_connections(), 0);
}
