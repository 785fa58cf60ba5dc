//! The GitHub workflows and the Justfile, checked for the jobs and keys that
//! matter (actionlint checks the syntax in .ci/run).

use serde_yaml::Value;
use std::path::Path;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

fn workflow(name: &str) -> Value {
    let path = Path::new(ROOT).join(".github/workflows").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Every `run:` of a job, joined.
fn runs(job: &Value) -> String {
    job["steps"]
        .as_sequence()
        .expect("steps")
        .iter()
        .filter_map(|s| s["run"].as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

fn uses(job: &Value) -> Vec<String> {
    job["steps"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|s| s["uses"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn ci_runs_host_tests_and_the_reference_broker_and_checks_the_firmware() {
    let ci = workflow("ci.yml");
    let host = &ci["jobs"]["host"];
    let r = runs(host);
    assert!(r.contains("apt-get install -y mosquitto"), "{r}");
    assert!(
        r.contains("cargo nextest run --workspace --profile ci"),
        "{r}"
    );
    assert!(
        r.contains("cargo clippy --workspace --all-targets -- -D warnings"),
        "{r}"
    );
    assert!(r.contains("cargo fmt --all --check"), "{r}");
    assert!(r.contains("cargo run -p hil -- run"), "{r}");
    let fw = &ci["jobs"]["firmware"];
    let r = runs(fw);
    assert!(r.contains("cargo build --release"), "{r}");
    assert!(r.contains("--target riscv32imc-unknown-none-elf"), "{r}");
    assert!(
        r.contains("firmware image") && r.contains("--max-bytes ${{ matrix.build.max }}"),
        "{r}"
    );
    // Every build the firmware ships, each with its budget.
    let builds = fw["strategy"]["matrix"]["build"].as_sequence().unwrap();
    let budgets: Vec<(&str, u64)> = builds
        .iter()
        .map(|b| (b["features"].as_str().unwrap(), b["max"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        budgets,
        [("", 716800), ("uart-console", 716800), ("tls", 983040)],
        "{budgets:?}"
    );
    let build = fw["steps"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|s| {
            s["run"]
                .as_str()
                .is_some_and(|r| r.starts_with("cargo build --release"))
        })
        .unwrap();
    assert_eq!(
        build["working-directory"].as_str(),
        Some("firmware"),
        "the firmware builds from inside firmware/ (its .cargo/config.toml)"
    );
    assert!(uses(fw)
        .iter()
        .any(|u| u.starts_with("actions/upload-artifact")));
}

#[test]
fn wokwi_uses_the_token_secret_and_the_fixture() {
    let w = workflow("wokwi.yml");
    let job = &w["jobs"]["wokwi"];
    assert_eq!(
        job["env"]["WOKWI_CLI_TOKEN"].as_str(),
        Some("${{ secrets.WOKWI_CLI_TOKEN }}")
    );
    let step = job["steps"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|s| {
            s["uses"]
                .as_str()
                .is_some_and(|u| u.starts_with("wokwi/wokwi-ci-action"))
        })
        .expect("wokwi-ci-action step");
    assert_eq!(
        step["with"]["token"].as_str(),
        Some("${{ secrets.WOKWI_CLI_TOKEN }}")
    );
    let path = step["with"]["path"].as_str().unwrap();
    let project = Path::new(ROOT).join(path);
    assert!(project.join("wokwi.toml").is_file() && project.join("diagram.json").is_file());
    let scenario = step["with"]["scenario"].as_str().unwrap();
    assert!(project.join(scenario).is_file(), "{scenario} missing");
    assert!(runs(job).contains("--dut wokwi"));
    // The diagram holds the C3 devkit with the USB-Serial-JTAG console (JSON is YAML).
    let diagram: Value =
        serde_yaml::from_str(&std::fs::read_to_string(project.join("diagram.json")).unwrap())
            .unwrap();
    assert_eq!(
        diagram["parts"][0]["type"].as_str(),
        Some("board-esp32-c3-devkitm-1")
    );
    assert_eq!(
        diagram["parts"][0]["attrs"]["serialInterface"].as_str(),
        Some("USB_SERIAL_JTAG")
    );
}

#[test]
fn bench_runs_every_rig_on_its_self_hosted_runner() {
    let b = workflow("bench.yml");
    let job = &b["jobs"]["hil"];
    let labels: Vec<&str> = job["runs-on"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(
        labels.contains(&"self-hosted") && labels.contains(&"${{ matrix.rig }}"),
        "{labels:?}"
    );
    let rigs = job["strategy"]["matrix"]["rig"].as_sequence().unwrap();
    assert!(!rigs.is_empty());
    for rig in rigs {
        let path = Path::new(ROOT)
            .join("fixtures/rigs")
            .join(format!("{}.toml", rig.as_str().unwrap()));
        hil::bench::rig::Rig::load(&path).unwrap_or_else(|e| panic!("{e}"));
    }
    let r = runs(job);
    assert!(r.contains("just hil"), "{r}");
    assert!(r.contains("just doctor"), "{r}");
    assert_eq!(
        job["concurrency"]["cancel-in-progress"].as_bool(),
        Some(false),
        "never kill a run mid-flash"
    );
    assert!(uses(job)
        .iter()
        .any(|u| u.starts_with("actions/upload-artifact")));
}

#[test]
fn every_just_recipe_the_workflows_and_readme_call_exists() {
    let just = std::fs::read_to_string(Path::new(ROOT).join("Justfile")).unwrap();
    let recipes: Vec<&str> = just
        .lines()
        .filter(|l| !l.starts_with([' ', '#', '\t']) && l.contains(':') && !l.contains(":="))
        .filter_map(|l| l.split([' ', ':']).next())
        .collect();
    for want in [
        "hil", "test", "firmware", "flash", "wokwi", "review", "doctor",
    ] {
        assert!(
            recipes.contains(&want),
            "Justfile lacks `{want}`: {recipes:?}"
        );
    }
    let b = workflow("bench.yml");
    for line in runs(&b["jobs"]["hil"]).lines() {
        if let Some(rest) = line.trim().strip_prefix("just ") {
            let recipe = rest.split(' ').next().unwrap();
            assert!(recipes.contains(&recipe), "bench.yml calls `just {recipe}`");
        }
    }
}
