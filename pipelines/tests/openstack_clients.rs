//! OpenStack's own clients against the real binary (issue 20): `tests/openstack/session.py`
//! runs gnocchiclient, aodhclient and the openstack CLI (pinned, in the venv `.ci/run`
//! creates) against `meterflow serve`, once with a token and once without, checking what each
//! command prints. `MF_OPENSTACK_PYTHON` names that venv's Python; without it the test says
//! it is skipped (the CI always sets it).

mod common;

use std::process::Command;

use common::http::*;
use common::*;
use serde_json::json;

#[test]
fn openstack_clients_work_unchanged_with_and_without_a_token() {
    let Some(python) = std::env::var_os("MF_OPENSTACK_PYTHON") else {
        eprintln!("skipped: set MF_OPENSTACK_PYTHON to a Python with gnocchiclient, aodhclient and python-openstackclient (.ci/run makes one)");
        return;
    };
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/openstack/session.py");
    for token in [Some("cli-token"), None] {
        let dir = tempfile::tempdir().unwrap();
        let five = json!({"name": "five", "aggregation_methods": ["mean", "max"], "definition": [{"granularity": 300, "timespan": 86400}]});
        let loads =
            json!({"name": "loads", "metric_pattern": "load*", "archive_policy_name": "medium"});
        let pipeline = store_definition(dir.path(), &five, &[loads]);
        let engine = Engine::serve(dir.path(), &pipeline, "3", token);
        let mut session = Command::new(&python);
        session.arg(&script).arg(&engine.base);
        if let Some(t) = token {
            session.arg(t);
        }
        let out = session.output().expect("the session script runs");
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "token {token:?}:\n{printed}");
        assert!(printed.contains("every check passed"), "{printed}");
    }
}
