//! The container image, built and run where this machine can: podman builds an image from the
//! runtime stage of the top-level `Dockerfile` (its labels, USER, EXPOSE, ENTRYPOINT and CMD, taken
//! from the file) around the binary these tests run, with the C runtime libraries that
//! `distroless/cc` would provide (glibc, libgcc_s) copied from this machine; then `--version` and a
//! proxy smoke test run inside it, started by the image's own CMD with a mounted config, and a
//! SIGTERM ends it cleanly as PID 1. The real `docker build` needs its base images
//! (`rust:<version>-bookworm`, `distroless/cc-debian12`) from their registries, which this machine
//! cannot reach; tests/manifests checks that recipe statically.
//!
//! Skipped, saying why on the terminal, where podman is missing or its OCI runtime cannot start
//! containers at all (the same `--version` run fails in the runtime, not in tidegate).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::support::*;

/// `timeout 120 podman <args>`, with the runtime that works here: runc when installed (crun
/// refuses this machine's hybrid cgroup v1 layout), and open-file/process limits within what an
/// unprivileged-resource container may set.
fn podman(args: &[&str]) -> Output {
    let mut command = Command::new("timeout");
    command.args(["120", "podman"]);
    if which("runc") {
        command.args(["--runtime", "runc"]);
    }
    command.args(args).output().expect("timeout and podman run")
}

fn which(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn text(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).trim(),
        String::from_utf8_lossy(&output.stderr).trim()
    )
}

fn skip(reason: &str) {
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED image::the_image_runs_its_binary_as_non_root_and_proxies_with_its_own_cmd: {reason}"
    );
}

/// Flags every `podman run` gets: limits a container here may set (podman's defaults exceed the
/// hard limits of this sandbox).
const RUN_LIMITS: [&str; 4] = [
    "--ulimit",
    "nofile=4096:4096",
    "--ulimit",
    "nproc=4096:4096",
];

/// The shared libraries `binary` loads, as ldd resolves them on this machine.
fn shared_libraries(binary: &Path) -> Vec<PathBuf> {
    let output = Command::new("ldd").arg(binary).output().expect("ldd runs");
    assert!(output.status.success(), "ldd: {}", text(&output));
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let path = match line.split_once("=>") {
                Some((_, resolved)) => resolved.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// The Dockerfile's runtime stage without its FROM and its COPY from the build stage.
fn runtime_stage() -> String {
    let dockerfile = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Dockerfile"))
        .expect("the Dockerfile");
    let from = dockerfile
        .match_indices("\nFROM ")
        .nth(1)
        .map(|(i, _)| i + 1)
        .expect("a second (runtime) stage");
    dockerfile[from..]
        .lines()
        .skip(1)
        .filter(|line| !line.starts_with("COPY --from=build "))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A build context: rootfs/ with the binary at /tidegate and its libraries at their paths, and a
/// Containerfile `FROM scratch` + the Dockerfile's runtime stage.
fn build_context(dir: &Path) -> PathBuf {
    let rootfs = dir.join("rootfs");
    let binary = Path::new(binary());
    std::fs::create_dir_all(&rootfs).unwrap();
    std::fs::copy(binary, rootfs.join("tidegate")).unwrap();
    for library in shared_libraries(binary) {
        let target = rootfs.join(library.strip_prefix("/").unwrap());
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(&library, &target).unwrap();
    }
    let containerfile = dir.join("Containerfile");
    std::fs::write(
        &containerfile,
        format!("FROM scratch\nCOPY rootfs/ /\n{}\n", runtime_stage()),
    )
    .unwrap();
    containerfile
}

/// Removes the test's image and container however the test ends.
struct Cleanup {
    image: String,
    container: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        podman(&["rm", "-f", &self.container]);
        podman(&["rmi", "-f", &self.image]);
    }
}

/// `listen=` and `admin=` of the start line in a text log.
fn started_addresses(logs: &str) -> Option<(String, String)> {
    let line = logs
        .lines()
        .find(|l| l.contains("tidegate proxy started"))?;
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .map(str::to_owned)
    };
    Some((field("listen=")?, field("admin=")?))
}

#[tokio::test]
async fn the_image_runs_its_binary_as_non_root_and_proxies_with_its_own_cmd() {
    if !which("podman") {
        skip("podman is not installed (tests/deps.sh installs it)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let containerfile = build_context(dir.path());
    let id = std::process::id();
    let cleanup = Cleanup {
        image: format!("localhost/tidegate-test:{id}"),
        container: format!("tidegate-test-{id}"),
    };
    let build = podman(&[
        "build",
        "-q",
        "-t",
        &cleanup.image,
        "-f",
        containerfile.to_str().unwrap(),
        dir.path().to_str().unwrap(),
    ]);
    assert!(build.status.success(), "podman build: {}", text(&build));
    let inspect = podman(&[
        "image",
        "inspect",
        "--format",
        "{{.Config.User}}",
        &cleanup.image,
    ]);
    assert_eq!(
        String::from_utf8_lossy(&inspect.stdout).trim(),
        "65532:65532"
    );

    let mut run = vec!["run", "--rm"];
    run.extend(RUN_LIMITS);
    run.extend([cleanup.image.as_str(), "--version"]);
    let version = podman(&run);
    let stderr = String::from_utf8_lossy(&version.stderr);
    if !version.status.success() && stderr.contains("OCI runtime") {
        skip(&format!(
            "podman cannot start containers here: {}",
            stderr.trim()
        ));
        return;
    }
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("tidegate {}", env!("CARGO_PKG_VERSION")),
        "{}",
        text(&version)
    );

    // The smoke test: the image's own ENTRYPOINT and CMD (proxy --config
    // /etc/tidegate/tidegate.yaml), a mounted config directory readable by UID 65532, host
    // networking so that it reaches a loopback backend and the test reaches it.
    let v1 = backend("v1").run().await;
    let config = tempfile::tempdir().unwrap();
    std::fs::write(
        config.path().join("tidegate.yaml"),
        TestProxy::new().endpoints(&[&v1]).render(),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    for (path, mode) in [
        (config.path().to_owned(), 0o755),
        (config.path().join("tidegate.yaml"), 0o644),
    ] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let volume = format!("{}:/etc/tidegate:ro", config.path().display());
    let mut run = vec![
        "run",
        "-d",
        "--name",
        &cleanup.container,
        "--network",
        "host",
    ];
    run.extend(RUN_LIMITS);
    run.extend(["-v", &volume, &cleanup.image]);
    let started = podman(&run);
    assert!(started.status.success(), "podman run: {}", text(&started));

    let mut addresses = None;
    wait_until(
        "the container's proxy starts",
        Duration::from_secs(20),
        || {
            let logs = podman(&["logs", &cleanup.container]);
            addresses = started_addresses(&String::from_utf8_lossy(&logs.stderr));
            if addresses.is_none() {
                let state = podman(&[
                    "inspect",
                    "--format",
                    "{{.State.Running}}",
                    &cleanup.container,
                ]);
                let running = String::from_utf8_lossy(&state.stdout).trim() == "true";
                assert!(
                    running,
                    "the container exited before starting: {}",
                    text(&logs)
                );
            }
            std::future::ready(addresses.is_some())
        },
    )
    .await;
    let (listen, admin) = addresses.unwrap();
    let ready = format!("http://{admin}/readyz");
    wait_until(
        "the container's proxy is ready",
        Duration::from_secs(20),
        || {
            let ready = ready.clone();
            async move {
                send(&client(), get_request(&ready))
                    .await
                    .is_ok_and(|(status, _, _)| status == 200)
            }
        },
    )
    .await;
    let (status, _, body) = send(&client(), get_request(&format!("http://{listen}/")))
        .await
        .expect("a response through the container");
    assert_eq!(status, 200);
    assert!(body.starts_with("This is v1"), "{body}");
    assert_eq!(v1.hits(), 1);

    // PID 1 gets no default signal handling from the kernel: tidegate's own SIGTERM handler must
    // drain and exit 0, as a kubelet stopping the pod expects.
    let stop = podman(&["stop", "-t", "20", &cleanup.container]);
    assert!(stop.status.success(), "podman stop: {}", text(&stop));
    let exit = podman(&[
        "inspect",
        "--format",
        "{{.State.ExitCode}}",
        &cleanup.container,
    ]);
    assert_eq!(
        String::from_utf8_lossy(&exit.stdout).trim(),
        "0",
        "{}",
        text(&exit)
    );
    drop(cleanup);
}
