//! The fake apiserver, checked against the real kube-rs client and `kube::runtime::watcher`.

use std::fmt::Debug;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::utils::Backoff;
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::ResourceExt;
use serde_json::json;
use tokio::sync::mpsc;

use crate::fake_api::{endpoint_slice, object, FakeApi, SliceEndpoint};

const STEP: Duration = Duration::from_secs(3);

/// A kube client built the way tidegate builds one: from a kubeconfig file.
async fn client(fake: &FakeApi) -> kube::Client {
    client_with(fake, |_| {}).await
}

async fn client_with(fake: &FakeApi, tweak: impl FnOnce(&mut kube::Config)) -> kube::Client {
    let dir = tempfile::tempdir().unwrap();
    let path = fake.write_kubeconfig(dir.path());
    let kubeconfig = kube::config::Kubeconfig::read_from(&path).expect("read kubeconfig");
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("config from kubeconfig");
    tweak(&mut config);
    kube::Client::try_from(config).expect("build client")
}

/// A watcher driven by a task of its own, as tidegate drives one: it keeps polling (so it
/// reconnects) whether or not the test is reading events yet.
struct Watch<K> {
    events: mpsc::UnboundedReceiver<Result<Event<K>, watcher::Error>>,
    driver: tokio::task::JoinHandle<()>,
}

impl<K> Drop for Watch<K> {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Retries every 50 ms, so recovery tests do not wait out kube's default backoff.
struct Quick;

impl Iterator for Quick {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        Some(Duration::from_millis(50))
    }
}

impl Backoff for Quick {
    fn reset(&mut self) {}
}

fn watch<K>(api: Api<K>, config: watcher::Config) -> Watch<K>
where
    K: kube::Resource + Clone + Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let (tx, events) = mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut stream = watcher(api, config).backoff(Quick).boxed();
        while let Some(event) = stream.next().await {
            if tx.send(event).is_err() {
                return;
            }
        }
    });
    Watch { events, driver }
}

/// The next event, skipping (and remembering) errors; panics naming `what` after `STEP`.
async fn next<K: Debug>(w: &mut Watch<K>, what: &str) -> Event<K> {
    let mut errors = Vec::new();
    let found = tokio::time::timeout(STEP, async {
        loop {
            match w.events.recv().await {
                Some(Ok(event)) => return event,
                Some(Err(e)) => errors.push(e.to_string()),
                None => panic!("watch stream ended while waiting for {what}"),
            }
        }
    })
    .await;
    match found {
        Ok(event) => event,
        Err(_) => panic!("timed out after {STEP:?} waiting for {what}; errors: {errors:?}"),
    }
}

/// Reads `Init`, `InitApply`…, `InitDone` and returns the names listed.
async fn initial_names<K: kube::Resource + Debug>(w: &mut Watch<K>) -> Vec<String> {
    match next(w, "Init").await {
        Event::Init => {}
        other => panic!("expected Init, got {other:?}"),
    }
    let mut names = Vec::new();
    loop {
        match next(w, "InitApply or InitDone").await {
            Event::InitApply(obj) => names.push(obj.name_any()),
            Event::InitDone => return names,
            other => panic!("expected InitApply or InitDone, got {other:?}"),
        }
    }
}

fn names<K: kube::Resource>(items: impl IntoIterator<Item = K>) -> Vec<String> {
    items.into_iter().map(|o| o.name_any()).collect()
}

fn deployment(name: &str, labels: &[(&str, &str)], replicas: i32) -> serde_json::Value {
    let mut d = object("Deployment", "default", name, labels);
    d["spec"] = json!({
        "replicas": replicas,
        "selector": { "matchLabels": { "app": name } },
        "template": {
            "metadata": { "labels": { "app": name } },
            "spec": { "containers": [{ "name": "app", "image": "example/app:1" }] },
        },
    });
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_lists_return_what_was_applied_filtered_by_labels() {
    let fake = FakeApi::start().await;
    let web = [
        SliceEndpoint::new("10.0.0.1", true).pod("web-a"),
        SliceEndpoint::new("10.0.0.2", false).pod("web-b"),
    ];
    fake.apply(endpoint_slice("default", "web-abc", "web", 8080, &web));
    fake.apply(endpoint_slice("default", "api-xyz", "api", 9090, &[]));
    fake.apply(endpoint_slice("other", "web-other", "web", 8080, &[]));
    fake.apply(deployment("web", &[("tier", "front")], 3));
    fake.apply(deployment("db", &[("tier", "back")], 1));
    fake.apply(deployment("cache", &[], 1));
    let client = client(&fake).await;

    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let all = slices.list(&ListParams::default()).await.unwrap();
    assert_eq!(names(all.items.clone()), ["api-xyz", "web-abc"]);
    assert_eq!(
        all.metadata.resource_version,
        Some(fake.resource_version().to_string())
    );
    let web = slices
        .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
        .await
        .unwrap();
    assert_eq!(names(web.items.clone()), ["web-abc"]);
    let endpoints = web.items[0].endpoints.as_ref().expect("endpoints");
    assert_eq!(endpoints.len(), 2);
    assert_eq!(endpoints[0].addresses, ["10.0.0.1"]);
    assert_eq!(endpoints[1].conditions.as_ref().unwrap().ready, Some(false));
    assert_eq!(
        endpoints[0].target_ref.as_ref().unwrap().name.as_deref(),
        Some("web-a")
    );
    assert_eq!(web.items[0].ports.as_ref().unwrap()[0].port, Some(8080));
    let across = Api::<EndpointSlice>::all(client.clone())
        .list(&ListParams::default().labels("kubernetes.io/service-name==web"))
        .await
        .unwrap();
    assert_eq!(names(across.items), ["web-abc", "web-other"]);

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let lists = [
        ("", vec!["cache", "db", "web"]),
        ("tier=front", vec!["web"]),
        ("tier!=front", vec!["cache", "db"]),
        ("tier", vec!["db", "web"]),
        ("!tier", vec!["cache"]),
        ("tier in (front,back)", vec!["db", "web"]),
        ("tier,tier notin (back)", vec!["web"]),
    ];
    for (selector, expected) in lists {
        let got = deployments
            .list(&ListParams::default().labels(selector))
            .await
            .unwrap();
        assert_eq!(names(got.items), expected, "labelSelector {selector:?}");
    }
    let by_name = deployments
        .list(&ListParams::default().fields("metadata.name=db"))
        .await
        .unwrap();
    assert_eq!(names(by_name.items), ["db"]);

    let web = deployments.get("web").await.unwrap();
    assert_eq!(web.spec.replicas, Some(3));
    assert!(web.metadata.uid.is_some());
    assert!(web.metadata.creation_timestamp.is_some());
    assert_eq!(web.metadata.generation, Some(1));
    match deployments.get("missing").await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 404);
            assert_eq!(status.reason, "NotFound");
        }
        other => panic!("expected a 404 Status, got {other:?}"),
    }
    match deployments
        .list(&ListParams::default().fields("spec.replicas=3"))
        .await
    {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 400),
        other => panic!("expected a 400 for an unsupported field selector, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_lists_then_follows_changes() {
    let fake = FakeApi::start().await;
    fake.apply(endpoint_slice("default", "web-1", "web", 80, &[]));
    fake.apply(endpoint_slice("default", "web-2", "web", 80, &[]));
    let api: Api<EndpointSlice> = Api::namespaced(client(&fake).await, "default");
    let mut w = watch(api, watcher::Config::default());

    assert_eq!(initial_names(&mut w).await, ["web-1", "web-2"]);
    fake.wait_open_watches(STEP, |n| n == 1).await;

    let ready = [SliceEndpoint::new("10.1.0.7", true)];
    let rv = fake.apply(endpoint_slice("default", "web-1", "web", 80, &ready));
    match next(&mut w, "Apply of web-1").await {
        Event::Apply(slice) => {
            assert_eq!(slice.name_any(), "web-1");
            assert_eq!(slice.endpoints.as_ref().unwrap()[0].addresses, ["10.1.0.7"]);
            assert_eq!(slice.resource_version(), Some(rv.to_string()));
        }
        other => panic!("expected Apply, got {other:?}"),
    }
    assert!(fake.delete("EndpointSlice", "default", "web-2"));
    match next(&mut w, "Delete of web-2").await {
        Event::Delete(slice) => {
            assert_eq!(slice.name_any(), "web-2");
            assert_eq!(
                slice.resource_version(),
                Some(fake.resource_version().to_string())
            );
        }
        other => panic!("expected Delete, got {other:?}"),
    }
    assert!(!fake.delete("EndpointSlice", "default", "web-2"));

    // What kube asked for: one list, then a watch from the list's resourceVersion.
    let requests = fake.recorded_requests();
    assert_eq!(requests.len(), 2, "{:#?}", fake.requests());
    assert!(!requests[0].is_watch());
    assert!(requests[1].is_watch());
    assert_eq!(requests[1].param("resourceVersion").as_deref(), Some("2"));
    assert_eq!(
        requests[1].param("allowWatchBookmarks").as_deref(),
        Some("true")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_watcher_over_pods_sees_labels() {
    let fake = FakeApi::start().await;
    let mut pod = object(
        "Pod",
        "default",
        "web-a",
        &[("app", "web"), ("version", "v1")],
    );
    pod["spec"] = json!({ "containers": [{ "name": "app", "image": "example/app:1" }] });
    pod["status"] = json!({ "podIP": "10.0.0.1", "phase": "Running" });
    fake.apply(pod);
    fake.apply(object("Pod", "default", "db-a", &[("app", "db")]));
    let client = client(&fake).await;

    let api: Api<PartialObjectMeta<Pod>> = Api::namespaced(client, "default");
    let mut w = watch(api, watcher::Config::default().labels("app=web"));
    assert!(matches!(next(&mut w, "Init").await, Event::Init));
    match next(&mut w, "InitApply of web-a").await {
        Event::InitApply(meta) => {
            assert_eq!(meta.name_any(), "web-a");
            assert_eq!(meta.labels()["version"], "v1");
            let types = meta.types.expect("apiVersion and kind");
            assert_eq!(types.kind, "PartialObjectMetadata");
            assert_eq!(types.api_version, "meta.k8s.io/v1");
        }
        other => panic!("expected InitApply, got {other:?}"),
    }
    assert!(matches!(next(&mut w, "InitDone").await, Event::InitDone));
    fake.wait_open_watches(STEP, |n| n == 1).await;

    fake.apply(object(
        "Pod",
        "default",
        "web-b",
        &[("app", "web"), ("version", "v2")],
    ));
    match next(&mut w, "Apply of web-b").await {
        Event::Apply(meta) => {
            assert_eq!(meta.name_any(), "web-b");
            assert_eq!(meta.labels()["version"], "v2");
        }
        other => panic!("expected Apply, got {other:?}"),
    }

    let requests = fake.recorded_requests();
    let accept = |i: usize| requests[i].headers["accept"].to_str().unwrap().to_owned();
    assert!(
        accept(0).contains("as=PartialObjectMetadataList"),
        "{}",
        accept(0)
    );
    assert!(requests[1].is_watch());
    assert!(
        accept(1).contains("as=PartialObjectMetadata;"),
        "{}",
        accept(1)
    );
    assert_eq!(
        requests[1].param("labelSelector").as_deref(),
        Some("app=web")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_watch_resumes_from_the_last_resource_version_without_relisting() {
    let fake = FakeApi::start().await;
    fake.apply(endpoint_slice("default", "web-1", "web", 80, &[]));
    let api: Api<EndpointSlice> = Api::namespaced(client(&fake).await, "default");
    let mut w = watch(api, watcher::Config::default());
    assert_eq!(initial_names(&mut w).await, ["web-1"]);
    fake.wait_open_watches(STEP, |n| n == 1).await;
    fake.apply(endpoint_slice("default", "web-2", "web", 80, &[]));
    assert!(matches!(
        next(&mut w, "Apply of web-2").await,
        Event::Apply(_)
    ));

    let seen = fake.recorded_requests().len();
    let last_rv = fake.resource_version().to_string();
    fake.drop_watches();
    let resumed = fake
        .wait_request_after(seen, "a watch resuming from the last rv", STEP, |r| {
            r.is_watch()
        })
        .await;
    assert_eq!(resumed.param("resourceVersion"), Some(last_rv));
    fake.wait_open_watches(STEP, |n| n == 1).await;

    fake.apply(endpoint_slice("default", "web-3", "web", 80, &[]));
    match next(&mut w, "Apply of web-3").await {
        Event::Apply(slice) => assert_eq!(slice.name_any(), "web-3"),
        other => panic!("expected Apply of web-3 (no re-list), got {other:?}"),
    }
    let lists = fake
        .recorded_requests()
        .iter()
        .filter(|r| !r.is_watch())
        .count();
    assert_eq!(lists, 1, "no re-list: {:#?}", fake.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_makes_the_watcher_relist() {
    let fake = FakeApi::start().await;
    fake.apply(endpoint_slice("default", "web-1", "web", 80, &[]));
    fake.apply(endpoint_slice("default", "web-2", "web", 80, &[]));
    let api: Api<EndpointSlice> = Api::namespaced(client(&fake).await, "default");
    // Bookmarks off: one arriving between compact() and drop_watches() would legitimately move the
    // watcher past the compaction point, and it would resume instead of re-listing.
    let mut w = watch(api, watcher::Config::default().disable_bookmarks());
    assert_eq!(initial_names(&mut w).await, ["web-1", "web-2"]);
    fake.wait_open_watches(STEP, |n| n == 1).await;

    fake.compact();
    fake.drop_watches();
    // The watch resumes from rv 2, gets 410 Expired, and the watcher starts over with a list.
    assert_eq!(initial_names(&mut w).await, ["web-1", "web-2"]);

    let expired = fake
        .recorded_requests()
        .into_iter()
        .filter(|r| r.is_watch())
        .nth(1)
        .expect("a second watch");
    assert_eq!(expired.param("resourceVersion").as_deref(), Some("2"));
    let lists = fake
        .recorded_requests()
        .iter()
        .filter(|r| !r.is_watch())
        .count();
    assert_eq!(lists, 2, "{:#?}", fake.requests());

    fake.delete("EndpointSlice", "default", "web-1");
    match next(&mut w, "Delete of web-1").await {
        Event::Delete(slice) => assert_eq!(slice.name_any(), "web-1"),
        other => panic!("expected Delete, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_recovers_across_stop_and_restart() {
    let fake = FakeApi::start().await;
    fake.apply(endpoint_slice("default", "web-1", "web", 80, &[]));
    let api: Api<EndpointSlice> = Api::namespaced(client(&fake).await, "default");
    let mut w = watch(api, watcher::Config::default());
    assert_eq!(initial_names(&mut w).await, ["web-1"]);
    fake.wait_open_watches(STEP, |n| n == 1).await;

    fake.stop().await;
    assert_eq!(fake.open_watches(), 0);
    let refused = tokio::net::TcpStream::connect(fake.addr()).await;
    assert_eq!(
        refused.expect_err("connect while stopped").kind(),
        std::io::ErrorKind::ConnectionRefused
    );
    let while_down = fake.apply(endpoint_slice("default", "web-2", "web", 80, &[]));
    fake.restart().await;

    match next(&mut w, "Apply of web-2, made while the apiserver was down").await {
        Event::Apply(slice) => {
            assert_eq!(slice.name_any(), "web-2");
            assert_eq!(slice.resource_version(), Some(while_down.to_string()));
        }
        other => panic!("expected Apply (no re-list), got {other:?}"),
    }
    fake.apply(endpoint_slice("default", "web-3", "web", 80, &[]));
    assert!(matches!(
        next(&mut w, "Apply of web-3").await,
        Event::Apply(_)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_apiserver_trips_the_client_read_timeout() {
    let fake = FakeApi::start().await;
    fake.apply(endpoint_slice("default", "web-1", "web", 80, &[]));
    let impatient = client_with(&fake, |c| {
        c.read_timeout = Some(Duration::from_millis(500));
    })
    .await;
    let api: Api<EndpointSlice> = Api::namespaced(impatient, "default");
    assert_eq!(
        names(api.list(&ListParams::default()).await.unwrap()),
        ["web-1"]
    );

    // On a client without the short read timeout: kube's read_timeout applies to every read,
    // so it would also end a watch that is quiet for longer (a reason to keep it above the
    // server's bookmark interval).
    let watching: Api<EndpointSlice> = Api::namespaced(client(&fake).await, "default");
    let mut events = watching
        .watch(
            &WatchParams::default(),
            &fake.resource_version().to_string(),
        )
        .await
        .unwrap()
        .boxed();
    fake.wait_open_watches(STEP, |n| n == 1).await;

    fake.hang(true);
    fake.apply(endpoint_slice("default", "web-2", "web", 80, &[]));
    let outcome = tokio::time::timeout(STEP, api.list(&ListParams::default())).await;
    let error = outcome
        .expect("the client gives up on its own")
        .expect_err("no answer from a hung apiserver");
    assert!(is_timeout(&error), "{error:?}");
    assert_eq!(fake.requests().len(), 3, "the request was received");
    let silent = tokio::time::timeout(Duration::from_millis(200), events.try_next()).await;
    assert!(silent.is_err(), "an open watch goes silent too: {silent:?}");

    fake.hang(false);
    match tokio::time::timeout(STEP, events.try_next()).await {
        Ok(Ok(Some(WatchEvent::Added(slice)))) => assert_eq!(slice.name_any(), "web-2"),
        other => panic!("expected the held-back ADDED, got {other:?}"),
    }
    let list = tokio::time::timeout(STEP, api.list(&ListParams::default()))
        .await
        .unwrap();
    assert_eq!(names(list.unwrap()), ["web-1", "web-2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_watch_sees_label_changes_bookmarks_and_a_clean_timeout() {
    let fake = FakeApi::start().await;
    fake.apply(object("Pod", "default", "a", &[("app", "web")]));
    let api: Api<Pod> = Api::namespaced(client(&fake).await, "default");
    // Only the bookmark asked for below, none on a timer.
    fake.set_bookmark_interval(None);
    let from = fake.resource_version().to_string();
    let params = WatchParams::default().labels("app=web").timeout(1);
    let mut events = api.watch(&params, &from).await.unwrap().boxed();
    fake.wait_open_watches(STEP, |n| n == 1).await;

    fake.apply(object("Pod", "default", "b", &[("app", "db")]));
    fake.apply(object("Pod", "default", "a", &[("app", "web"), ("v", "2")]));
    fake.apply(object("Pod", "default", "a", &[("app", "db")]));
    fake.apply(object("Pod", "default", "b", &[("app", "web")]));
    fake.bookmark_all();
    let mut seen = Vec::new();
    let ended = tokio::time::timeout(STEP, async {
        while let Some(event) = events.try_next().await.unwrap() {
            seen.push(match event {
                WatchEvent::Added(p) => {
                    format!("ADDED {} {}", p.name_any(), p.resource_version().unwrap())
                }
                WatchEvent::Modified(p) => format!(
                    "MODIFIED {} {}",
                    p.name_any(),
                    p.resource_version().unwrap()
                ),
                WatchEvent::Deleted(p) => {
                    format!("DELETED {} {}", p.name_any(), p.resource_version().unwrap())
                }
                WatchEvent::Bookmark(b) => format!("BOOKMARK {}", b.metadata.resource_version),
                WatchEvent::Error(e) => format!("ERROR {e:?}"),
            });
        }
    })
    .await;
    assert!(ended.is_ok(), "timeoutSeconds=1 ends the stream: {seen:?}");
    // Leaving the selector is a DELETED of the last matching state at the new rv.
    assert_eq!(
        seen[..4],
        ["MODIFIED a 3", "DELETED a 4", "ADDED b 5", "BOOKMARK 5"],
        "{seen:?}"
    );
    fake.wait_open_watches(STEP, |n| n == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_list_gets_initial_events_and_the_end_bookmark() {
    let fake = FakeApi::start().await;
    fake.apply(object("Pod", "default", "a", &[("app", "web")]));
    fake.apply(object("Pod", "default", "b", &[("app", "web")]));
    let api: Api<Pod> = Api::namespaced(client(&fake).await, "default");
    let mut w = watch(api, watcher::Config::default().streaming_lists());
    assert_eq!(initial_names(&mut w).await, ["a", "b"]);
    fake.apply(object("Pod", "default", "c", &[("app", "web")]));
    assert!(matches!(next(&mut w, "Apply of c").await, Event::Apply(p) if p.name_any() == "c"));

    let requests = fake.recorded_requests();
    assert_eq!(requests.len(), 1, "no list: {:#?}", fake.requests());
    assert_eq!(
        requests[0].param("sendInitialEvents").as_deref(),
        Some("true")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_watch_is_an_error_event_or_an_http_410() {
    let fake = FakeApi::start().await;
    fake.apply(object("Pod", "default", "a", &[]));
    let api: Api<Pod> = Api::namespaced(client(&fake).await, "default");
    fake.compact();

    let mut events = api
        .watch(&WatchParams::default(), "1")
        .await
        .unwrap()
        .boxed();
    let first = tokio::time::timeout(STEP, events.try_next()).await.unwrap();
    match first.unwrap() {
        Some(WatchEvent::Error(status)) => {
            assert_eq!(status.code, 410);
            assert_eq!(status.reason, "Expired");
            assert_eq!(status.message, "too old resource version: 1 (2)");
        }
        other => panic!("expected an ERROR event, got {other:?}"),
    }
    let end = tokio::time::timeout(STEP, events.try_next()).await.unwrap();
    assert!(matches!(end, Ok(None)), "then a clean end: {end:?}");

    // From the compaction point on, watching works.
    let params = WatchParams::default().timeout(1);
    assert!(api.watch(&params, "2").await.is_ok());

    fake.set_gone_as_http_status(true);
    match api.watch(&WatchParams::default(), "1").await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 410);
            assert_eq!(status.reason, "Expired");
        }
        Err(other) => panic!("expected an Api error, got {other:?}"),
        Ok(_) => panic!("expected an HTTP 410"),
    }
}

/// Whether an I/O timeout is somewhere in the error's chain of sources.
fn is_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        cause = e.source();
    }
    false
}

/// Pins a kube 5.0 behaviour that `set_gone_as_http_status` exists to expose: when the watch
/// request itself is answered `410 Gone`, `watcher` retries the same resourceVersion forever
/// (`WatchStartFailed` each time) instead of re-listing; only a 410 ERROR *event* re-lists. If
/// this starts failing, kube learned to re-list on it and tidegate's workaround can go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_watcher_does_not_relist_on_an_http_410_at_watch_start() {
    let fake = FakeApi::start().await;
    fake.apply(object("Pod", "default", "a", &[]));
    let api: Api<Pod> = Api::namespaced(client(&fake).await, "default");
    let mut w = watch(api, watcher::Config::default().disable_bookmarks());
    assert_eq!(initial_names(&mut w).await, ["a"]);
    fake.wait_open_watches(STEP, |n| n == 1).await;

    fake.set_gone_as_http_status(true);
    fake.compact();
    fake.drop_watches();
    let mut gone = 0;
    while gone < 3 {
        match tokio::time::timeout(STEP, w.events.recv()).await {
            Ok(Some(Err(watcher::Error::WatchStartFailed(kube::Error::Api(s)))))
                if s.code == 410 =>
            {
                gone += 1
            }
            Ok(Some(Err(_))) => {}
            other => panic!("expected repeated WatchStartFailed(410), got {other:?}"),
        }
    }
    let requests = fake.recorded_requests();
    assert_eq!(
        requests.iter().filter(|r| !r.is_watch()).count(),
        1,
        "never re-lists"
    );
    assert!(requests
        .iter()
        .filter(|r| r.is_watch())
        .all(|r| r.param("resourceVersion").as_deref() == Some("1")));
}
