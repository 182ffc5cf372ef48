//! The deployment files are valid: every Kubernetes manifest in `k8s/` against the API schemas of
//! recent Kubernetes releases (`kubernetes-validate`, strict), and `deploy/docker-compose.yml`.
//!
//! These tests use the test virtualenv (`make venv`, via `DISPATCHER_TEST_PYTHON`).

use dispatcher_e2e::{python_script, run_python, test_python, workspace_root};
use serde_json::Value;
use std::collections::BTreeSet;

/// Kubernetes releases the manifests must validate against: the newest schemas the pinned
/// `kubernetes-validate` ships, and an older release still in wide use.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.35.0", "1.37.0"];

/// Every service `deploy/docker-compose.yml` must define.
const COMPOSE_SERVICES: [&str; 8] = [
    "postgres",
    "rabbitmq",
    "migrate",
    "ingest-api",
    "status-api",
    "dispatch-worker",
    "webhook-deliverer",
    "receiver",
];

fn report(out: &std::process::Output, what: &str) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{what} report: {e}: {stdout}"))
}

#[tokio::test]
async fn kubernetes_manifests_validate_against_recent_kubernetes() {
    test_python();
    let dir = workspace_root().join("k8s");
    let dir_arg = dir.to_string_lossy().into_owned();
    let script = python_script("check_deploy.py");
    let mut args = vec![script.as_str(), "k8s", dir_arg.as_str()];
    args.extend(KUBERNETES_VERSIONS);
    let out = run_python(&args, b"").await;
    let report = report(&out, "kubernetes-validate of k8s/");

    // Nothing skipped: every manifest file was read, and every document in each was checked
    // against every version (the Kustomization by its own rules).
    let on_disk: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml"))
        .collect();
    assert!(!on_disk.is_empty(), "no manifests in {}", dir.display());
    let files: BTreeSet<String> = report["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(files, on_disk, "{report}");
    let checked = report["checked"].as_array().unwrap();
    for file in &on_disk {
        let docs: Vec<&Value> = checked.iter().filter(|c| c["file"] == *file).collect();
        assert!(!docs.is_empty(), "{file} was not checked: {report}");
        if docs.iter().all(|c| c["kind"] == "Kustomization") {
            continue;
        }
        for v in KUBERNETES_VERSIONS {
            let minor = v.rsplit_once('.').unwrap().0;
            assert!(
                docs.iter().any(|c| c["version"] == minor),
                "{file} was not validated against {v}: {report}"
            );
        }
    }
    for kind in [
        "Namespace",
        "ConfigMap",
        "Secret",
        "Job",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "Kustomization",
    ] {
        assert!(
            checked.iter().any(|c| c["kind"] == kind),
            "no {kind} among the manifests: {report}"
        );
    }
}

/// The production engines (`k8s/engines/`): the operators' custom resources against the CRD
/// schemas vendored beside them, the rest against Kubernetes, all strictly.
#[tokio::test]
async fn engine_manifests_validate_against_their_operators_crds() {
    test_python();
    let dir = workspace_root().join("k8s/engines");
    let dir_arg = dir.to_string_lossy().into_owned();
    let schemas = dir.join("schemas").to_string_lossy().into_owned();
    let script = python_script("check_deploy.py");
    let mut args = vec![script.as_str(), "k8s", dir_arg.as_str(), "--crds", &schemas];
    args.extend(KUBERNETES_VERSIONS);
    let out = run_python(&args, b"").await;
    let report = report(&out, "validation of k8s/engines/");

    let on_disk: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml"))
        .collect();
    let checked = report["checked"].as_array().unwrap();
    for file in &on_disk {
        assert!(
            checked.iter().any(|c| c["file"] == *file),
            "{file} was not checked: {report}"
        );
    }
    for (kind, schema) in [
        ("Cluster", "postgresql.cnpg.io_v1_cluster.json"),
        (
            "RabbitmqCluster",
            "rabbitmq.com_v1beta1_rabbitmqcluster.json",
        ),
    ] {
        assert!(
            checked
                .iter()
                .any(|c| c["kind"] == kind && c["validator"] == "crd" && c["schema"] == schema),
            "no {kind} validated against {schema}: {report}"
        );
    }
    assert!(
        checked.iter().any(|c| c["kind"] == "Kustomization"),
        "no Kustomization in k8s/engines: {report}"
    );
}

/// Whether the Docker Compose plugin works on this machine.
async fn docker_compose_works() -> bool {
    tokio::process::Command::new("docker")
        .args(["compose", "version"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success())
}

#[tokio::test]
async fn docker_compose_file_defines_every_service() {
    let file = workspace_root().join("deploy/docker-compose.yml");
    let file_arg = file.to_string_lossy().into_owned();
    let services: BTreeSet<String> = if docker_compose_works().await {
        // The real parser: interpolation, merge keys and the whole compose model.
        let out = tokio::process::Command::new("docker")
            .args(["compose", "-f", &file_arg, "config", "--services"])
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "docker compose config: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    } else {
        // No compose plugin here: parse it with PyYAML and check its structure.
        test_python();
        let script = python_script("check_deploy.py");
        let mut args = vec![script.as_str(), "compose", file_arg.as_str()];
        args.extend(COMPOSE_SERVICES);
        let out = run_python(&args, b"").await;
        let report = report(&out, "docker-compose.yml check");
        report["services"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect()
    };
    for s in COMPOSE_SERVICES {
        assert!(services.contains(s), "service {s} missing: {services:?}");
    }
}
