//! The container image recipe and the release profile, checked statically.

use std::path::Path;

fn repo_file(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The Dockerfile's instructions, continuation lines joined, comments dropped: (stage, line).
fn dockerfile() -> Vec<(usize, String)> {
    let text = repo_file("Dockerfile");
    let mut out = Vec::new();
    let (mut stage, mut pending) = (0, String::new());
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && pending.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => pending.push_str(part),
            None => {
                pending.push_str(line);
                let instruction = std::mem::take(&mut pending);
                if instruction.starts_with("FROM ") {
                    stage += 1;
                }
                out.push((stage, instruction));
            }
        }
    }
    out
}

#[test]
fn the_image_builds_the_release_binary_in_a_pinned_builder_and_ships_only_it_as_non_root() {
    let lines = dockerfile();
    let froms: Vec<&String> = lines
        .iter()
        .filter(|(_, l)| l.starts_with("FROM "))
        .map(|(_, l)| l)
        .collect();
    assert_eq!(froms.len(), 2, "a builder and a runtime stage: {froms:?}");
    assert!(
        froms[0].contains("rust:${RUST_VERSION}-bookworm AS build"),
        "{}",
        froms[0]
    );
    let pinned = lines
        .iter()
        .find_map(|(_, l)| l.strip_prefix("ARG RUST_VERSION="))
        .expect("the Rust version is pinned");
    assert_eq!(pinned.split('.').count(), 3, "a full version: {pinned}");
    assert!(
        froms[1].contains("distroless/cc-debian12:nonroot"),
        "{}",
        froms[1]
    );
    let builds: Vec<&String> = lines
        .iter()
        .filter(|(stage, l)| *stage == 1 && l.contains("cargo build"))
        .map(|(_, l)| l)
        .collect();
    assert!(
        builds.len() >= 2
            && builds
                .iter()
                .all(|b| b.contains("--release --locked --bin tidegate")),
        "dependencies cached, then the release binary, from the lock file: {builds:?}"
    );
    let runtime: Vec<&String> = lines
        .iter()
        .filter(|(stage, _)| *stage == 2)
        .map(|(_, l)| l)
        .collect();
    let copies: Vec<&&String> = runtime.iter().filter(|l| l.starts_with("COPY")).collect();
    assert_eq!(
        copies,
        [&&"COPY --from=build /src/target/release/tidegate /tidegate".to_owned()],
        "the runtime stage holds the binary and nothing else"
    );
    let user = runtime
        .iter()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER");
    let uid: u32 = user
        .split(':')
        .next()
        .unwrap()
        .parse()
        .expect("a numeric UID");
    assert_ne!(uid, 0, "not root");
    assert!(runtime.contains(&&"ENTRYPOINT [\"/tidegate\"]".to_owned()));
    for label in ["source", "version", "licenses"] {
        assert!(
            runtime
                .iter()
                .any(|l| l.contains(&format!("org.opencontainers.image.{label}="))),
            "OCI label {label}"
        );
    }
    let ignore = repo_file(".dockerignore");
    let rules: Vec<&str> = ignore
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .collect();
    assert_eq!(
        rules.first(),
        Some(&"*"),
        "the context excludes everything by default"
    );
    for needed in ["!Cargo.toml", "!Cargo.lock", "!src/", "!benches/"] {
        assert!(rules.contains(&needed), "{needed} re-included");
    }
}

#[test]
fn the_release_binary_carries_no_debug_info_but_keeps_its_symbols() {
    let manifest: toml_like::Profile = toml_like::release_profile(&repo_file("Cargo.toml"));
    assert_eq!(manifest.debug.as_deref(), Some("false"));
    assert_eq!(
        manifest.strip.as_deref(),
        Some("\"debuginfo\""),
        "symbols stay for backtraces"
    );
}

/// Just enough of Cargo.toml's `[profile.release]` table.
mod toml_like {
    #[derive(Default)]
    pub struct Profile {
        pub debug: Option<String>,
        pub strip: Option<String>,
    }

    pub fn release_profile(text: &str) -> Profile {
        let mut profile = Profile::default();
        let mut inside = false;
        for line in text.lines().map(str::trim) {
            if line.starts_with('[') {
                inside = line == "[profile.release]";
                continue;
            }
            if let (true, Some((key, value))) = (inside, line.split_once('=')) {
                let value = Some(value.trim().to_owned());
                match key.trim() {
                    "debug" => profile.debug = value,
                    "strip" => profile.strip = value,
                    _ => {}
                }
            }
        }
        profile
    }
}

#[test]
fn the_dependency_layer_stubs_every_bench_target_cargo_toml_declares() {
    // Cargo refuses to build when a declared [[bench]] file is missing, so the stub layer must
    // create exactly the benches Cargo.toml names.
    let manifest = repo_file("Cargo.toml");
    let mut declared: Vec<&str> = manifest
        .split("[[bench]]")
        .skip(1)
        .filter_map(|table| {
            table
                .lines()
                .find_map(|l| l.trim().strip_prefix("name = "))
                .map(|name| name.trim_matches('"'))
        })
        .collect();
    declared.sort_unstable();
    let lines = dockerfile();
    let stub = lines
        .iter()
        .find_map(|(_, l)| l.split("for bench in ").nth(1))
        .and_then(|rest| rest.split(';').next())
        .expect("the stub loop over benches");
    let mut stubbed: Vec<&str> = stub.split_whitespace().collect();
    stubbed.sort_unstable();
    assert_eq!(stubbed, declared);
}
