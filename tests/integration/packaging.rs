//! The Greengrass packaging: the recipes against the GDK's schemas and the
//! configuration schema, the Raspberry Pi builds under qemu-user, the
//! packaging script's layout, and a launch of the recipe the way a nucleus
//! does it, against the strict test nucleus (tests/nucleus/nucleus.py).
//!
//! Nothing here skips: a missing cross compiler, qemu or Python environment
//! fails with the command that installs it (scripts/test.sh installs all).

// A failing unwrap is a failing test, with the value in the message.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use defender_edge::config::Config;
use defender_edge::publish::defender::Topics;
use defender_edge::report::{self, Format};
use serde_json::{Value, json};

use crate::{plugins, support};

const HOST_COMPONENT: &str = "com.defenderedge.DefenderEdge";
const HOST_RECIPE: &str = "recipes/com.defenderedge.DefenderEdge.yaml";
const FIREHOSE_RECIPE: &str = "recipes/com.defenderedge.DefenderEdge.firehose.yaml";
const PLUGIN_RECIPE: &str = "recipes/plugin-component.yaml";
const SVCUID: &str = "ABCDEFGHIJKLMNOP";
const THING: &str = "pi-launch-test";

// ------------------------------------------------------------------ helpers

fn validator() -> PathBuf {
    support::fixture("packaging/validate.py")
}

/// Runs `tests/fixtures/packaging/validate.py` with the test environment's
/// Python (jsonschema, PyYAML).
fn validate(kind: &str, files: &[PathBuf]) -> Output {
    Command::new(support::python())
        .arg(validator())
        .arg(kind)
        .args(files)
        .output()
        .expect("run validate.py")
}

/// A recipe (YAML) as JSON, loaded by PyYAML as the GDK loads it.
fn recipe_json(path: &Path) -> Value {
    let out = Command::new(support::python())
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        ])
        .arg(path)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "cannot load {} as YAML: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The recipe's DefaultConfiguration without `accessControl`, which is the
/// nucleus's business and not part of the configuration schema.
fn schema_part(default_configuration: &Value) -> Value {
    let mut value = default_configuration.clone();
    value.as_object_mut().unwrap().remove("accessControl");
    value
}

/// Dotted paths of every key; an empty object is a leaf (maps such as
/// `plugins.settings` have no fixed keys).
fn key_paths(value: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                key_paths(v, &path, out);
            }
        }
        _ => {
            out.insert(prefix.to_owned());
        }
    }
}

// ------------------------------------------------------------------ recipe checks

#[test]
fn recipes_and_gdk_config_pass_the_gdk_schemas() {
    let repo = support::repo();
    let recipes = [
        HOST_RECIPE,
        FIREHOSE_RECIPE,
        PLUGIN_RECIPE,
        "recipes/recipe.yaml",
    ]
    .map(|r| repo.join(r));
    let out = validate("recipe", &recipes);
    assert!(
        out.status.success(),
        "recipes fail the GDK recipe schema:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = validate("gdk-config", &[repo.join("recipes/gdk-config.json")]);
    assert!(
        out.status.success(),
        "recipes/gdk-config.json fails the GDK schema:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The check can fail: a wrong permission and a bad build system are caught.
    let tmp = tempfile::tempdir().unwrap();
    let broken = tmp.path().join("broken.yaml");
    let text = std::fs::read_to_string(repo.join(HOST_RECIPE))
        .unwrap()
        .replacen("Execute: OWNER", "Execute: SOMETIMES", 1);
    std::fs::write(&broken, text).unwrap();
    let out = validate("recipe", std::slice::from_ref(&broken));
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stdout).contains("SOMETIMES"),
        "a recipe with Execute: SOMETIMES passed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let broken = tmp.path().join("gdk-config.json");
    let text = std::fs::read_to_string(repo.join("recipes/gdk-config.json"))
        .unwrap()
        .replace("\"custom\"", "\"make\"");
    std::fs::write(&broken, text).unwrap();
    assert!(
        !validate("gdk-config", &[broken]).status.success(),
        "a gdk-config.json with build_system make passed"
    );
}

#[test]
fn gdk_project_builds_the_host_component_at_the_workspace_version() {
    let repo = support::repo();
    let gdk: Value = serde_json::from_str(
        &std::fs::read_to_string(repo.join("recipes/gdk-config.json")).unwrap(),
    )
    .unwrap();
    let component = &gdk["component"][HOST_COMPONENT];
    assert!(
        component.is_object(),
        "gdk-config.json names another component: {gdk}"
    );
    let recipe = recipe_json(&repo.join("recipes/recipe.yaml"));
    assert_eq!(
        recipe["ComponentName"], HOST_COMPONENT,
        "recipes/recipe.yaml (the GDK's recipe) is not the host recipe"
    );
    for version in [&component["version"], &recipe["ComponentVersion"]] {
        assert_eq!(
            version.as_str(),
            Some(env!("CARGO_PKG_VERSION")),
            "component versions must follow the workspace version"
        );
    }
    let command = component["build"]["custom_build_command"].to_string();
    assert!(
        command.contains("package.sh")
            && command.contains("greengrass-build")
            && command.contains("\"recipe.yaml\""),
        "the GDK's custom build must run scripts/package.sh into greengrass-build, writing \
         recipe.yaml (what `gdk component publish` reads): {command}"
    );
}

/// Every key of the recipe's DefaultConfiguration is a key of the schema
/// (`Config` denies unknown fields) and every key of the schema is in the
/// recipe, so an operator sees every setting in the console.
#[test]
fn recipe_default_configuration_has_exactly_the_schema_keys() {
    for recipe in [HOST_RECIPE, FIREHOSE_RECIPE] {
        let recipe_value = recipe_json(&support::repo().join(recipe));
        let defaults = schema_part(&recipe_value["ComponentConfiguration"]["DefaultConfiguration"]);
        if let Err(error) = Config::from_value(defaults.clone(), recipe) {
            panic!("{recipe}: DefaultConfiguration does not parse: {error}");
        }
        let mut in_recipe = BTreeSet::new();
        key_paths(&defaults, "", &mut in_recipe);
        let mut in_schema = BTreeSet::new();
        key_paths(
            &serde_json::to_value(Config::default()).unwrap(),
            "",
            &mut in_schema,
        );
        let missing: Vec<_> = in_schema.difference(&in_recipe).collect();
        let extra: Vec<_> = in_recipe.difference(&in_schema).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{recipe}: keys of the schema missing from DefaultConfiguration: {missing:?}; \
             keys not in the schema: {extra:?}"
        );
    }
}

/// (service, operation, resource) triples of an accessControl section.
fn permissions(access_control: &Value) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for (service, policies) in access_control.as_object().unwrap() {
        for policy in policies.as_object().unwrap().values() {
            for op in policy["operations"].as_array().unwrap() {
                for resource in policy["resources"].as_array().unwrap() {
                    out.insert((
                        service.clone(),
                        op.as_str().unwrap().to_owned(),
                        resource.as_str().unwrap().to_owned(),
                    ));
                }
            }
        }
    }
    out
}

/// Access control grants exactly the topics the component uses: the Device
/// Defender topics of both encodings (report.format can change live) and
/// their replies, the configured alarm topic, the local alarm topic. No
/// wildcards, nothing else.
#[test]
fn recipe_access_control_covers_exactly_the_topics_used() {
    let thing = "{iot:thingName}";
    for recipe in [HOST_RECIPE, FIREHOSE_RECIPE] {
        let defaults = recipe_json(&support::repo().join(recipe))["ComponentConfiguration"]
            ["DefaultConfiguration"]
            .clone();
        let mqtt = "aws.greengrass.ipc.mqttproxy".to_owned();
        let pubsub = "aws.greengrass.ipc.pubsub".to_owned();
        let publish_iot = "aws.greengrass#PublishToIoTCore".to_owned();
        let subscribe_iot = "aws.greengrass#SubscribeToIoTCore".to_owned();
        let mut expected = BTreeSet::new();
        for format in [Format::Json, Format::Cbor] {
            let topics = Topics::new(thing, format).unwrap();
            expected.insert((mqtt.clone(), publish_iot.clone(), topics.publish));
            expected.insert((mqtt.clone(), subscribe_iot.clone(), topics.accepted));
            expected.insert((mqtt.clone(), subscribe_iot.clone(), topics.rejected));
        }
        let detection = &defaults["detection"];
        let alarm = detection["alarmTopic"]
            .as_str()
            .expect("detection.alarmTopic");
        expected.insert((
            mqtt.clone(),
            publish_iot.clone(),
            alarm.replace("{thing}", thing),
        ));
        let health = defaults["health"]["topic"].as_str().expect("health.topic");
        expected.insert((
            mqtt.clone(),
            publish_iot.clone(),
            health.replace("{thing}", thing),
        ));
        let local = detection["localTopic"]
            .as_str()
            .expect("detection.localTopic");
        expected.insert((
            pubsub,
            "aws.greengrass#PublishToTopic".to_owned(),
            local.to_owned(),
        ));
        let granted = permissions(&defaults["accessControl"]);
        assert_eq!(
            granted, expected,
            "{recipe}: access control differs from the topics used"
        );
        assert!(
            granted.iter().all(|(_, _, r)| !r.contains(['+', '#', '*'])),
            "{recipe}: wildcard in access control"
        );
    }
}

/// The Firehose variant is the host recipe plus the Token Exchange Service,
/// nothing else: same name, configuration, manifests.
#[test]
fn firehose_recipe_only_adds_the_token_exchange_service() {
    let base = recipe_json(&support::repo().join(HOST_RECIPE));
    let variant = recipe_json(&support::repo().join(FIREHOSE_RECIPE));
    for key in [
        "ComponentName",
        "ComponentVersion",
        "ComponentConfiguration",
        "Manifests",
    ] {
        assert_eq!(
            base[key], variant[key],
            "{FIREHOSE_RECIPE}: {key} differs from {HOST_RECIPE}"
        );
    }
    assert!(
        base.get("ComponentDependencies").is_none(),
        "{HOST_RECIPE} must not depend on anything"
    );
    let deps = variant["ComponentDependencies"].as_object().unwrap();
    assert_eq!(
        deps.keys().collect::<Vec<_>>(),
        ["aws.greengrass.TokenExchangeService"],
        "{FIREHOSE_RECIPE}: dependencies"
    );
}

/// Both nuclei: every manifest says `runtime: "*"`, lifecycle steps are
/// lowercase and only those nucleus lite runs, and no variable has a
/// dependency prefix (lite does not replace those).
#[test]
fn recipes_are_portable_to_nucleus_lite() {
    let variable = |s: &str| -> Vec<String> {
        s.split('{')
            .skip(1)
            .filter_map(|rest| rest.split_once('}').map(|(v, _)| v.to_owned()))
            .filter(|v| v.contains(':') && !v.starts_with('"') && !v.contains(' '))
            .collect()
    };
    for recipe in [HOST_RECIPE, FIREHOSE_RECIPE, PLUGIN_RECIPE] {
        let value = recipe_json(&support::repo().join(recipe));
        for manifest in value["Manifests"].as_array().unwrap() {
            assert_eq!(
                manifest["Platform"]["runtime"], "*",
                "{recipe}: manifest without runtime \"*\": {manifest}"
            );
            for (step, body) in manifest["Lifecycle"].as_object().unwrap() {
                assert!(
                    ["install", "run", "startup"].contains(&step.as_str()),
                    "{recipe}: step {step} is not portable"
                );
                let script = body["Script"].as_str().or(body.as_str()).unwrap();
                for v in variable(script) {
                    let namespace = v.split(':').next().unwrap();
                    assert!(
                        ["artifacts", "work", "kernel", "iot", "configuration"]
                            .contains(&namespace),
                        "{recipe}: {{{v}}} is not replaced by nucleus lite"
                    );
                }
            }
        }
    }
}

// ------------------------------------------------------------------ Raspberry Pi builds

/// A Pi target: Rust triple, qemu-user program, Debian cross gcc and libc.
struct PiTarget {
    short: &'static str,
    triple: &'static str,
    qemu: &'static str,
    gcc: &'static str,
    gcc_package: &'static str,
    sysroot: &'static str,
    libc_package: &'static str,
}

const AARCH64: PiTarget = PiTarget {
    short: "aarch64",
    triple: "aarch64-unknown-linux-gnu",
    qemu: "qemu-aarch64-static",
    gcc: "aarch64-linux-gnu-gcc",
    gcc_package: "gcc-aarch64-linux-gnu",
    sysroot: "/usr/aarch64-linux-gnu",
    libc_package: "libc6-dev-arm64-cross",
};

const ARMV7: PiTarget = PiTarget {
    short: "armv7",
    triple: "armv7-unknown-linux-gnueabihf",
    qemu: "qemu-arm-static",
    gcc: "arm-linux-gnueabihf-gcc",
    gcc_package: "gcc-arm-linux-gnueabihf",
    sysroot: "/usr/arm-linux-gnueabihf",
    libc_package: "libc6-dev-armhf-cross",
};

/// The cargo profile of the test builds (.cargo/config.toml): fast enough to
/// build, fast enough to run Cranelift under emulation.
const PI_PROFILE: &str = "qemu";

/// The target folder this test binary was built in; the Pi builds share it.
fn target_dir() -> PathBuf {
    support::bin()
        .parent()
        .and_then(Path::parent)
        .expect("the binary lives in <target>/<profile>/")
        .to_owned()
}

/// Builds `defender-edge` for a Pi target once per test run.
fn pi_binary(target: &PiTarget) -> PathBuf {
    static BUILT: OnceLock<Mutex<BTreeMap<&'static str, PathBuf>>> = OnceLock::new();
    let built = BUILT.get_or_init(Default::default);
    // One build at a time: two cargo builds of wasmtime on two cores only
    // slow each other down.
    let mut built = built.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(path) = built.get(target.short) {
        return path.clone();
    }
    support::require_program(target.gcc, target.gcc_package);
    assert!(
        Path::new(target.sysroot).join("lib").is_dir(),
        "{}/lib is missing: run scripts/test.sh, or `apt-get install {}`",
        target.sysroot,
        target.libc_package
    );
    let sysroot = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .unwrap();
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    assert!(
        sysroot.join("lib/rustlib").join(target.triple).is_dir(),
        "the Rust target {0} is not installed: run scripts/test.sh, or `rustup target add {0}`",
        target.triple
    );
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    // Cargo gives tests this package's CARGO_PKG_* and friends; ring's build
    // script watches some of them, so passing them on would rebuild ring and
    // everything above it instead of reusing the build of `scripts/test.sh`
    // or `scripts/package.sh`. The user's own cargo settings stay (a shared
    // CARGO_BUILD_BUILD_DIR, CARGO_BUILD_JOBS), or this build would differ
    // from theirs.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_") && name != "CARGO_HOME" && !name.starts_with("CARGO_BUILD_") {
            cmd.env_remove(&*name);
        }
    }
    let out = cmd
        .current_dir(support::repo())
        .args([
            "build",
            "--locked",
            "--bin",
            "defender-edge",
            "--profile",
            PI_PROFILE,
            // A device build, as scripts/package.sh makes for the Pi.
            "--no-default-features",
            "--features",
            "device",
            "--target",
            target.triple,
        ])
        .env("CARGO_TARGET_DIR", target_dir())
        .output()
        .expect("run cargo");
    assert!(
        out.status.success(),
        "building defender-edge for {} failed:\n{}",
        target.triple,
        String::from_utf8_lossy(&out.stderr)
    );
    let path = target_dir()
        .join(target.triple)
        .join(PI_PROFILE)
        .join("defender-edge");
    built.insert(target.short, path.clone());
    path
}

/// A command that runs the Pi binary under qemu-user with the cross libc.
fn under_qemu(target: &PiTarget) -> Command {
    let binary = pi_binary(target);
    let qemu = support::require_program(target.qemu, "qemu-user-static");
    let mut cmd = Command::new(qemu);
    cmd.env("QEMU_LD_PREFIX", target.sysroot).arg(binary);
    cmd
}

fn run_ok(mut cmd: Command, what: &str) -> Output {
    let started = Instant::now();
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({:?}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{what}: {} ms", started.elapsed().as_millis());
    out
}

/// `collect` prints a valid report, and the example plugins compile into the
/// cache and run (on armv7 through wasmtime's Pulley interpreter, since
/// Cranelift has no 32-bit ARM backend).
fn pi_build_works(target: &PiTarget) {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");

    let mut cmd = under_qemu(target);
    cmd.args(["collect", "--thing", "pi-under-qemu", "--state-dir"])
        .arg(&state);
    let out = run_ok(cmd, &format!("{} collect", target.short));
    let report = report::decode(&out.stdout, Format::Json)
        .unwrap_or_else(|e| panic!("{} collect printed no report: {e}", target.short));
    report::validate(&report).unwrap_or_else(|e| panic!("{} report is invalid: {e}", target.short));

    // The install step's precompile, then a plugin run from the cache.
    let plugin_dir = tmp.path().join("plugins");
    std::fs::create_dir(&plugin_dir).unwrap();
    std::fs::copy(
        plugins::wasm("port-allowlist"),
        plugin_dir.join("port-allowlist.wasm"),
    )
    .unwrap();
    let config = tmp.path().join("config.json");
    std::fs::write(&config, json!({"stateDir": state}).to_string()).unwrap();
    let mut cmd = under_qemu(target);
    cmd.env("DEFENDER_EDGE_CONFIG", &config)
        .args(["plugin", "compile", "--dir"])
        .arg(&plugin_dir);
    let out = run_ok(cmd, &format!("{} plugin compile", target.short));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("port-allowlist: "),
        "{} plugin compile: {}",
        target.short,
        String::from_utf8_lossy(&out.stdout)
    );
    let cached = std::fs::read_dir(state.join("plugin-cache"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "cwasm")
        })
        .count();
    assert_eq!(
        cached, 1,
        "{}: the compile cache holds {cached} entries",
        target.short
    );

    let mut cmd = under_qemu(target);
    cmd.args(["plugin", "test"])
        .arg(plugin_dir.join("port-allowlist.wasm"))
        .arg("--sample")
        .arg(support::repo().join("plugins/template/sample.json.tmpl"))
        .args(["--config", "tcp=443"]);
    let out = run_ok(cmd, &format!("{} plugin test", target.short));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("outcome: pass") && text.contains("alerts:  1"),
        "{}: port-allowlist should pass the sample with one alert (port 22 is not allowed):\n{text}",
        target.short
    );

    // collect with the plugin loaded from the cache the compile filled.
    let mut cmd = under_qemu(target);
    cmd.args(["collect", "--thing", "pi-under-qemu", "--config"])
        .arg(&config)
        .arg("--plugins")
        .arg(&plugin_dir);
    let out = run_ok(cmd, &format!("{} collect with a plugin", target.short));
    let report = report::decode(&out.stdout, Format::Json).unwrap();
    report::validate(&report).unwrap();
}

#[test]
fn aarch64_build_runs_under_qemu() {
    pi_build_works(&AARCH64);
}

#[test]
fn armv7_build_runs_plugins_with_pulley_under_qemu() {
    pi_build_works(&ARMV7);
}

/// scripts/package.sh lays out what `greengrass-cli deployment create
/// --recipeDir --artifactDir` reads, with the version filled in, and a
/// plugin component from the template.
#[test]
fn package_script_lays_out_a_greengrass_cli_deployment() {
    for target in [&AARCH64, &ARMV7] {
        pi_binary(target);
    }
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("gg");
    let plugin = plugins::wasm("owner-enrichment");
    let status = Command::new("bash")
        .arg(support::repo().join("scripts/package.sh"))
        .args([
            "--no-build",
            "--profile",
            PI_PROFILE,
            "--targets",
            "aarch64,armv7",
            "--version",
            "1.2.3",
            "--out",
        ])
        .arg(&out_dir)
        .arg("--plugin")
        .arg(format!("com.example.OwnerEnrichment={}", plugin.display()))
        .arg("--compiler")
        .arg(support::bin())
        .env("CARGO_TARGET_DIR", target_dir())
        .status()
        .unwrap();
    assert!(status.success(), "package.sh failed");

    let recipe_path = out_dir.join(format!("recipes/{HOST_COMPONENT}-1.2.3.yaml"));
    let recipe = recipe_json(&recipe_path);
    assert_eq!(recipe["ComponentVersion"], "1.2.3");
    let artifacts = out_dir.join(format!("artifacts/{HOST_COMPONENT}/1.2.3"));
    for name in ["defender-edge-aarch64", "defender-edge-armv7"] {
        let meta =
            std::fs::metadata(artifacts.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o100 != 0,
            "{name} is not executable"
        );
        let uri_named = recipe["Manifests"].as_array().unwrap().iter().any(|m| {
            m["Artifacts"][0]["URI"]
                .as_str()
                .unwrap()
                .ends_with(&format!("/{name}"))
        });
        assert!(uri_named, "no manifest names {name}");
    }
    // The Pi binaries run: package.sh stripped them with the cross binutils.
    let mut cmd = Command::new(support::require_program(AARCH64.qemu, "qemu-user-static"));
    cmd.env("QEMU_LD_PREFIX", AARCH64.sysroot)
        .arg(artifacts.join("defender-edge-aarch64"))
        .arg("--version");
    run_ok(cmd, "packaged aarch64 --version");

    let plugin_recipe = out_dir.join("recipes/com.example.OwnerEnrichment-1.2.3.yaml");
    let value = recipe_json(&plugin_recipe);
    assert_eq!(value["ComponentName"], "com.example.OwnerEnrichment");
    let plugin_artifacts = out_dir.join("artifacts/com.example.OwnerEnrichment/1.2.3");
    let mut shipped: Vec<String> = std::fs::read_dir(&plugin_artifacts)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    shipped.sort();
    assert_eq!(
        shipped,
        [
            "owner-enrichment.aarch64.cwasm",
            "owner-enrichment.armv7.cwasm",
            "owner-enrichment.wasm"
        ],
        "one artifact per packaged target, plus the portable .wasm"
    );
    // The manifests of the packaged targets, then the portable one; none
    // for x86_64, which was not packaged.
    let architectures: Vec<String> = value["Manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            m["Platform"]["architecture"]
                .as_str()
                .unwrap_or("*")
                .to_owned()
        })
        .collect();
    assert_eq!(architectures, ["aarch64", "arm", "*"]);
    for manifest in value["Manifests"].as_array().unwrap() {
        for artifact in manifest["Artifacts"].as_array().unwrap() {
            let uri = artifact["URI"].as_str().unwrap();
            let file = uri.rsplit('/').next().unwrap();
            assert!(shipped.iter().any(|s| s == file), "{uri} was not packaged");
        }
    }

    // On each Pi, the recipe's install step puts the artifact beside the
    // .wasm, and the packaged host loads it without compiling.
    let platforms: [(&PiTarget, &[(&'static str, &str)]); 2] = [
        (&AARCH64, &[("architecture", "aarch64")]),
        (
            &ARMV7,
            &[("architecture", "arm"), ("architecture.detail", "armv7l")],
        ),
    ];
    for (target, platform) in platforms {
        let mut have = BTreeMap::from([
            ("os", "linux".to_owned()),
            ("runtime", "aws_nucleus_classic".to_owned()),
        ]);
        have.extend(platform.iter().map(|(k, v)| (*k, (*v).to_owned())));
        let manifest = pick_manifest(&value, &have);
        let root = tmp.path().join(format!("root-{}", target.short));
        let install = Interpolation {
            artifacts: plugin_artifacts.clone(),
            work: root.join("work/com.example.OwnerEnrichment"),
            root: root.clone(),
            thing: THING.to_owned(),
            configuration: json!({}),
        }
        .apply(&lifecycle_script(manifest, "install"));
        let status = Command::new("sh").arg("-c").arg(&install).status().unwrap();
        assert!(
            status.success(),
            "{} install step failed: {install}",
            target.short
        );
        let plugin_dir = root.join(format!("work/{HOST_COMPONENT}/plugins"));
        assert!(plugin_dir.join("owner-enrichment.wasm").is_file());
        let artifact = plugin_dir.join("owner-enrichment.cwasm");
        assert_eq!(
            std::fs::read(&artifact).unwrap(),
            std::fs::read(
                plugin_artifacts.join(format!("owner-enrichment.{}.cwasm", target.short))
            )
            .unwrap(),
            "{}: the install step installed another architecture's artifact",
            target.short
        );
        let binary = artifacts.join(format!("defender-edge-{}", target.short));
        let qemu = || {
            let mut cmd = Command::new(support::require_program(target.qemu, "qemu-user-static"));
            cmd.env("QEMU_LD_PREFIX", target.sysroot).arg(&binary);
            cmd
        };

        let mut cmd = qemu();
        cmd.args(["plugin", "test"])
            .arg(&artifact)
            .arg("--sample")
            .arg(support::repo().join("plugins/template/sample.json.tmpl"))
            .args(["--config", "owner=soc-team"]);
        let out = run_ok(
            cmd,
            &format!("{} plugin test of the artifact", target.short),
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("plugin:  owner-enrichment (precompiled, loaded in")
                && text.contains("outcome: pass")
                && text.contains("soc-team"),
            "{}: {text}",
            target.short
        );

        // The host as the recipe runs it: trusting the artifact, it loads
        // it and compiles nothing into its cache.
        let state = root.join("state");
        let config = root.join("config.json");
        let settings = json!({
            "stateDir": state,
            "plugins": {
                "dir": plugin_dir,
                "trustPrecompiled": true,
                "settings": {"owner-enrichment": {"config": {"owner": "soc-team"}}}
            }
        });
        std::fs::write(&config, settings.to_string()).unwrap();
        let mut cmd = qemu();
        cmd.args(["collect", "--thing", "pi-under-qemu", "--config"])
            .arg(&config);
        let out = run_ok(cmd, &format!("{} collect with the artifact", target.short));
        let report = report::decode(&out.stdout, Format::Json).unwrap();
        report::validate(&report).unwrap();
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(
            log.lines()
                .any(|l| l.contains("plugin loaded") && l.contains("precompiled")),
            "{}: no precompiled load in the log:\n{log}",
            target.short
        );
        let compiled = std::fs::read_dir(state.join("plugin-cache"))
            .map(|entries| entries.count())
            .unwrap_or(0);
        assert_eq!(
            compiled, 0,
            "{}: the host compiled the plugin",
            target.short
        );

        // Another architecture's artifact is refused, naming file and why.
        let other = if target.short == "aarch64" {
            "armv7"
        } else {
            "aarch64"
        };
        let wrong = root.join("owner-enrichment.cwasm");
        std::fs::copy(
            plugin_artifacts.join(format!("owner-enrichment.{other}.cwasm")),
            &wrong,
        )
        .unwrap();
        let out = qemu()
            .args(["plugin", "test"])
            .arg(&wrong)
            .arg("--sample")
            .arg(support::repo().join("plugins/template/sample.json.tmpl"))
            .args(["--config", "owner=soc-team"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        let built_for = if other == "armv7" {
            "pulley32"
        } else {
            "aarch64"
        };
        assert!(
            !out.status.success()
                && err.contains(&format!("{} cannot be used by this host", wrong.display()))
                && err.contains(&format!("compiled for architecture '{built_for}'")),
            "{}: a {other} artifact should be refused ({:?}):\n{err}",
            target.short,
            out.status
        );
    }

    let out = validate("recipe", &[recipe_path, plugin_recipe]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

// ------------------------------------------------------------------ launch like a nucleus

/// The platform of this machine as the nucleus describes it.
fn this_platform() -> BTreeMap<&'static str, String> {
    let architecture = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "aarch64",
        "arm" => "arm",
        other => panic!("no Greengrass architecture for {other}"),
    };
    let mut platform = BTreeMap::from([
        ("os", "linux".to_owned()),
        ("architecture", architecture.to_owned()),
    ]);
    if architecture == "arm" {
        let uname = Command::new("uname").arg("-m").output().unwrap();
        platform.insert(
            "architecture.detail",
            String::from_utf8_lossy(&uname.stdout).trim().to_owned(),
        );
    }
    platform.insert("runtime", "aws_nucleus_classic".to_owned());
    platform
}

/// The first manifest whose every platform key matches (`*` matches all).
fn pick_manifest<'a>(recipe: &'a Value, platform: &BTreeMap<&str, String>) -> &'a Value {
    recipe["Manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| {
            m["Platform"].as_object().unwrap().iter().all(|(k, v)| {
                let v = v.as_str().unwrap();
                v == "*" || platform.get(k.as_str()).is_some_and(|have| have == v)
            })
        })
        .unwrap_or_else(|| panic!("no manifest for {platform:?}"))
}

/// What a nucleus replaces in lifecycle scripts.
struct Interpolation {
    artifacts: PathBuf,
    work: PathBuf,
    root: PathBuf,
    thing: String,
    configuration: Value,
}

impl Interpolation {
    /// Replaces every `{namespace:key}`; fails on one it does not know.
    fn apply(&self, script: &str) -> String {
        let mut out = String::new();
        let mut rest = script;
        while let Some(start) = rest.find('{') {
            out.push_str(&rest[..start]);
            let tail = &rest[start..];
            let end = tail.find('}').map(|e| e + 1).unwrap_or(tail.len());
            let token = &tail[1..end.saturating_sub(1).max(1)];
            let replacement = match token.split_once(':') {
                Some(("artifacts", "path" | "decompressedPath")) => {
                    Some(self.artifacts.display().to_string())
                }
                Some(("work", "path")) => Some(self.work.display().to_string()),
                Some(("kernel", "rootPath")) => Some(self.root.display().to_string()),
                Some(("iot", "thingName")) => Some(self.thing.clone()),
                Some(("configuration", pointer)) => {
                    let value = self
                        .configuration
                        .pointer(pointer)
                        .unwrap_or_else(|| panic!("{{configuration:{pointer}}}: no such key"));
                    Some(match value {
                        Value::String(s) => s.clone(),
                        Value::Null => String::new(),
                        other => other.to_string(),
                    })
                }
                Some((ns, _)) if ns.chars().all(|c| c.is_ascii_alphanumeric() || c == '.') => {
                    panic!("unknown recipe variable {{{token}}}")
                }
                _ => None,
            };
            match replacement {
                Some(text) => out.push_str(&text),
                None => out.push_str(&tail[..end]),
            }
            rest = &tail[end..];
        }
        out.push_str(rest);
        out
    }
}

/// The test nucleus, started the way tests/nucleus/README.md says.
struct Nucleus {
    child: Child,
    dir: PathBuf,
}

impl Nucleus {
    fn start(dir: &Path, config: &Value) -> Nucleus {
        let config_file = dir.join("nucleus-config.json");
        std::fs::write(&config_file, config.to_string()).unwrap();
        let mut child = Command::new(support::python())
            .arg(support::repo().join("tests/nucleus/nucleus.py"))
            .arg("--socket")
            .arg(dir.join("ipc.socket"))
            .args(["--svcuid", SVCUID, "--component-name", HOST_COMPONENT])
            .arg("--config")
            .arg(&config_file)
            .arg("--record")
            .arg(dir.join("record.jsonl"))
            .arg("--control")
            .arg(dir.join("control.socket"))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the test nucleus");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(
            line.starts_with("READY"),
            "the test nucleus did not start: {line:?}"
        );
        Nucleus {
            child,
            dir: dir.to_owned(),
        }
    }

    fn control(&self, cmd: Value) -> Value {
        let mut s = UnixStream::connect(self.dir.join("control.socket")).unwrap();
        s.write_all(format!("{cmd}\n").as_bytes()).unwrap();
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        let reply: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(reply["ok"], true, "control {cmd} failed: {reply}");
        reply
    }

    fn records(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.join("record.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn requests(&self, operation: &str) -> Vec<Value> {
        self.records()
            .into_iter()
            .filter(|r| r["event"] == "request" && r["operation"] == operation)
            .collect()
    }
}

impl Drop for Nucleus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A component process whose stderr is collected line by line.
struct Component {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Component {
    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Component {
    /// Signals the step's whole process group, as the nucleus does.
    fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on the process group this test created.
        unsafe { libc::kill(-(self.child.id() as i32), signal) };
    }
}

impl Drop for Component {
    fn drop(&mut self) {
        self.signal(libc::SIGKILL);
        let _ = self.child.wait();
    }
}

/// Polls until `check` holds; fails after `seconds`, showing the log.
fn wait_until(what: &str, seconds: u64, component: &Component, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {seconds} s waiting for {what}; component log:\n{}",
            component.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn lifecycle_script(manifest: &Value, step: &str) -> String {
    let body = &manifest["Lifecycle"][step];
    body["Script"]
        .as_str()
        .or(body.as_str())
        .unwrap_or_else(|| panic!("no {step} step"))
        .to_owned()
}

/// Does what a nucleus does with the host recipe: picks the manifest for this
/// machine, places the artifact, interpolates the lifecycle scripts, runs
/// `install` then `run` with the component environment. Then a valid
/// configuration update is applied live, an invalid one is refused with the
/// old configuration kept, and the component reported RUNNING.
///
/// Depends on `run` following the Greengrass configuration (issue 6, part 2).
#[test]
fn recipe_launch_follows_configuration_updates_from_the_nucleus() {
    let recipe = recipe_json(&support::repo().join(HOST_RECIPE));
    let version = recipe["ComponentVersion"].as_str().unwrap().to_owned();
    let manifest = pick_manifest(&recipe, &this_platform());

    // The nucleus's folders: packages/artifacts/<name>/<version>, work/<name>.
    let root = tempfile::Builder::new().prefix("gg").tempdir().unwrap();
    let artifacts = root
        .path()
        .join("packages/artifacts")
        .join(HOST_COMPONENT)
        .join(&version);
    let work = root.path().join("work").join(HOST_COMPONENT);
    std::fs::create_dir_all(&artifacts).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    for artifact in manifest["Artifacts"].as_array().unwrap() {
        let uri = artifact["URI"].as_str().unwrap();
        let name = uri.rsplit('/').next().unwrap();
        assert!(
            name.starts_with("defender-edge-"),
            "unexpected artifact {uri}"
        );
        std::fs::copy(support::bin(), artifacts.join(name)).unwrap();
    }

    // The configuration the nucleus serves: the recipe's defaults (with
    // accessControl, as a real nucleus has it), a faster detection loop, and
    // Device Defender replies accepted.
    let mut configuration = recipe["ComponentConfiguration"]["DefaultConfiguration"].clone();
    configuration["detection"]["intervalSeconds"] = json!("1");
    configuration["publish"]["ipc"]["requestTimeoutSeconds"] = json!("5");
    configuration["plugins"]["settings"] = json!({
        "owner-enrichment": {"order": "1", "config": {"owner": "plant-ops", "site": "lyon-2"}},
        "port-allowlist": {"order": "2", "config": {"tcp": "22,443,8883"}}
    });
    let nucleus = Nucleus::start(root.path(), &configuration);
    nucleus.control(json!({"cmd": "auto_reply", "mode": "accepted"}));

    // Plugins waiting in the plugin folder before install, as a plugin
    // component would leave them.
    let plugin_dir = work.join(configuration["plugins"]["dir"].as_str().unwrap());
    std::fs::create_dir_all(&plugin_dir).unwrap();
    for name in ["owner-enrichment", "port-allowlist"] {
        std::fs::copy(plugins::wasm(name), plugin_dir.join(format!("{name}.wasm"))).unwrap();
    }

    let vars = Interpolation {
        artifacts: artifacts.clone(),
        work: work.clone(),
        root: root.path().to_owned(),
        thing: THING.to_owned(),
        configuration: configuration.clone(),
    };
    let environment = [
        (
            "AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT",
            root.path().join("ipc.socket").display().to_string(),
        ),
        ("SVCUID", SVCUID.to_owned()),
        ("AWS_CONTAINER_AUTHORIZATION_TOKEN", SVCUID.to_owned()),
        ("AWS_IOT_THING_NAME", THING.to_owned()),
        ("AWS_REGION", "eu-west-1".to_owned()),
        ("GGC_VERSION", "2.14.0".to_owned()),
        (
            "GG_ROOT_CA_PATH",
            root.path().join("rootCA.pem").display().to_string(),
        ),
        ("NO_COLOR", "1".to_owned()),
    ];
    let step = |name: &str| {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(vars.apply(&lifecycle_script(manifest, name)))
            .current_dir(&work)
            .env_remove("RUST_LOG")
            .envs(environment.iter().map(|(k, v)| (*k, v.as_str())));
        cmd
    };

    // install: creates the plugin folder and fills the compile cache.
    let out = run_ok(step("install"), "install step");
    let state = work.join(configuration["stateDir"].as_str().unwrap());
    let cached = std::fs::read_dir(state.join("plugin-cache"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(
        cached,
        2,
        "install compiled {cached} plugins:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // run: configuration over IPC, RUNNING, a report to Device Defender.
    let mut child = step("run")
        .process_group(0)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let stderr = child.stderr.take().unwrap();
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let mut log = sink.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
    let component = Component { child, log };
    wait_until(
        "GetConfiguration of the whole document",
        30,
        &component,
        || {
            nucleus
                .requests("GetConfiguration")
                .iter()
                .any(|r| r["body"]["keyPath"] == json!([]))
        },
    );
    wait_until("UpdateState RUNNING", 30, &component, || {
        nucleus
            .requests("UpdateState")
            .iter()
            .any(|r| r["body"]["state"] == "RUNNING")
    });
    wait_until("SubscribeToConfigurationUpdate", 30, &component, || {
        !nucleus
            .requests("SubscribeToConfigurationUpdate")
            .is_empty()
    });
    let report_topic = format!("$aws/things/{THING}/defender/metrics/json");
    wait_until(
        "a report published to Device Defender",
        60,
        &component,
        || {
            nucleus
                .requests("PublishToIoTCore")
                .iter()
                .any(|r| r["body"]["topicName"] == report_topic)
        },
    );

    // A valid update is applied without a restart.
    nucleus.control(json!({"cmd": "config_update", "key_path": ["logLevel"], "value": "debug"}));
    wait_until("the valid update applied", 30, &component, || {
        component
            .log()
            .lines()
            .any(|l| l.contains("INFO") && l.contains("applied configuration update"))
    });
    // An invalid one is refused, naming the key, and the component keeps running.
    nucleus.control(
        json!({"cmd": "config_update", "key_path": ["report", "intervalSeconds"], "value": "10"}),
    );
    wait_until("the invalid update refused", 30, &component, || {
        component.log().lines().any(|l| {
            l.contains("WARN")
                && l.contains("refused configuration update")
                && l.contains("report.intervalSeconds")
        })
    });
    let mut component = component;
    assert!(
        component.child.try_wait().unwrap().is_none(),
        "the component exited after a refused update:\n{}",
        component.log()
    );
    let reads = nucleus.requests("GetConfiguration").len();
    assert!(
        reads >= 3,
        "each update should re-read the configuration; {reads} reads"
    );
    assert!(
        !nucleus
            .requests("UpdateState")
            .iter()
            .any(|r| r["body"]["state"] == "ERRORED"),
        "the component reported ERRORED:\n{}",
        component.log()
    );

    // Stopped like the nucleus stops it: SIGTERM to the step's process group.
    // The step's `sh` may die of the signal itself; what matters is that the
    // component stops cleanly and the whole group is gone within 15 s.
    component.signal(libc::SIGTERM);
    let pgid = component.child.id() as i32;
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut status = None;
    loop {
        if status.is_none() {
            status = component.child.try_wait().unwrap();
        }
        // SAFETY: signal 0 only checks whether the group still has a member.
        let group_alive = unsafe { libc::kill(-pgid, 0) } == 0;
        if status.is_some() && !group_alive {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still running 15 s after SIGTERM:\n{}",
            component.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = status.unwrap();
    assert!(
        status.success()
            || std::os::unix::process::ExitStatusExt::signal(&status) == Some(libc::SIGTERM),
        "the run step ended with {status:?} after SIGTERM:\n{}",
        component.log()
    );
    // The stderr reader sees the last lines once the component closed it.
    std::thread::sleep(Duration::from_millis(200));
    let log = component.log();
    assert!(
        log.contains("stopping") && !log.contains("panicked"),
        "no clean stop after SIGTERM:\n{log}"
    );
    let violations: Vec<_> = nucleus
        .records()
        .into_iter()
        .filter(|r| r["event"] == "violation")
        .collect();
    assert!(
        violations.is_empty(),
        "IPC protocol violations: {violations:#?}"
    );
}
