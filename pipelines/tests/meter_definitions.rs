//! The shipped meter definitions (`pipelines/examples/definitions/meters.d/`) against
//! real-shaped nova, cinder, glance, neutron and swift notifications: the samples Ceilometer's
//! notification agent makes of them, attribute by attribute.

use meterflow_engine::Sample;
use meterflow_pipelines::plan::Plan;
use meterflow_pipelines::sequential;

const ALL: &str = "sources:\n  - {name: all, meters: ['*'], sinks: [out]}\nsinks:\n  - {name: out, publishers: ['file:///dev/null']}\n";

/// `name type unit volume resource user project timestamp` of each sample the shipped
/// definitions make of `file`'s notifications, in order.
fn samples(file: &str) -> Vec<Sample> {
    let plan = Plan::from_yaml(ALL, "all.yaml").expect("valid");
    let path = format!(
        "{}/tests/data/notifications/{file}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    sequential::run(&plan, &lines)
        .into_iter()
        .map(|(_, s)| s)
        .collect()
}

fn line(s: &Sample) -> String {
    let volume = serde_json::to_string(&match s.volume {
        meterflow_engine::Volume::Int(i) => serde_json::json!(i),
        meterflow_engine::Volume::Float(f) => serde_json::json!(f),
    })
    .unwrap();
    format!(
        "{} {} {} {volume} {} {} {} {}",
        s.name.as_str(),
        s.kind,
        s.unit.as_str(),
        s.resource_id.as_str(),
        s.user_id.map_or("-", |u| u.as_str()),
        s.project_id.map_or("-", |p| p.as_str()),
        s.timestamp.as_str()
    )
}

fn metadata(s: &Sample) -> serde_json::Value {
    serde_json::from_str(s.resource_metadata.as_str()).unwrap()
}

const P: &str = "6f70656e737461636b20342065766572";
const U: &str = "9b2a64c1b6f94c1f8b4f1b6e2f3a7c11";

#[test]
fn nova_instances_and_hypervisor_metrics() {
    let out = samples("nova.jsonl");
    let vm = "8f2c0c8e-2b0a-4b7b-9c55-7a1f3ad5e0b1";
    let t = "2024-05-01T11:59:41.117825+00:00";
    let node = "cmp-01_cmp-01.example.org";
    let m = "2024-05-01T12:00:00+00:00";
    let got: Vec<String> = out.iter().map(line).collect();
    let want = vec![
        // compute.instance.create.end (the file's last definition first, as Ceilometer).
        format!("compute.instance.booting.time gauge sec 28.25 {vm} {U} {P} {t}"),
        format!("disk.ephemeral.size gauge GB 0 {vm} {U} {P} {t}"),
        format!("disk.root.size gauge GB 20 {vm} {U} {P} {t}"),
        format!("vcpus gauge vcpu 1 {vm} {U} {P} {t}"),
        format!("memory gauge MB 2048 {vm} {U} {P} {t}"),
        // compute.instance.update: no meter (excluded by the event_type pattern).
        // compute.metrics.update: one sample per metric, at the metric's own time.
        format!("compute.node.cpu.percent gauge percent 14.000000000000002 {node} - - {m}"),
        format!("compute.node.cpu.iowait.percent gauge percent 1.0 {node} - - {m}"),
        format!("compute.node.cpu.user.percent gauge percent 12.0 {node} - - {m}"),
        format!("compute.node.cpu.idle.percent gauge percent 86.0 {node} - - {m}"),
        format!("compute.node.cpu.kernel.percent gauge percent 1.0 {node} - - {m}"),
        format!("compute.node.cpu.iowait.time cumulative ns 6121490000000 {node} - - {m}"),
        format!("compute.node.cpu.idle.time cumulative ns 1592705190000000 {node} - - {m}"),
        format!("compute.node.cpu.kernel.time cumulative ns 943860000000 {node} - - {m}"),
        format!("compute.node.cpu.user.time cumulative ns 17421440000000 {node} - - {m}"),
        format!("compute.node.cpu.frequency gauge MHz 2400 {node} - - {m}"),
    ];
    assert_eq!(got, want);
    let memory = metadata(&out[4]);
    assert_eq!(memory["flavor_name"], "m1.small");
    assert_eq!(memory["image_ref"], "3d7d4a1c-6e0e-4f0e-9a3b-7b6a9b2f1c01");
    assert_eq!(memory["launched_at"], "2024-05-01T11:59:40.250000");
    // Empty values are left out; only the metering.* instance metadata is kept.
    assert!(memory.get("deleted_at").is_none());
    assert_eq!(
        memory["user_metadata"],
        serde_json::json!({"stack": "a1b2", "server_group": "web"})
    );
    let frequency = metadata(&out[14]);
    assert_eq!(
        frequency,
        serde_json::json!({"event_type": "compute.metrics.update", "host": "compute.cmp-01", "source": "libvirt.LibvirtDriver"})
    );
}

#[test]
fn cinder_volumes_snapshots_backups_and_capacity() {
    let out = samples("cinder.jsonl");
    let vol = "c0a1f3d2-5e6f-4a7b-8c9d-0e1f2a3b4c5d";
    let got: Vec<String> = out.iter().map(line).collect();
    let pool = "blk-01@lvm#lvm";
    let backend = "blk-01@lvm";
    let c = "2024-05-01T12:05:00+00:00";
    let want = vec![
        format!("volume.size gauge GB 100 {vol} {U} {P} 2024-05-01T12:01:00.000100+00:00"),
        format!("volume.size gauge GB 100 {vol} {U} {P} 2024-05-01T12:02:00+00:00"),
        format!("snapshot.size gauge GB 100 e4d3c2b1-0a9f-4e8d-7c6b-5a4f3e2d1c0b {U} {P} 2024-05-01T12:03:00+00:00"),
        format!("backup.size gauge GB 100 b1a2c3d4-e5f6-4789-9abc-def012345678 {U} {P} 2024-05-01T12:04:00+00:00"),
        format!("volume.provider.pool.capacity.virtual_free gauge GB 1801 {pool} - - {c}"),
        format!("volume.provider.pool.capacity.provisioned gauge GB 121.5 {pool} - - {c}"),
        format!("volume.provider.pool.capacity.allocated gauge GB 100 {pool} - - {c}"),
        format!("volume.provider.pool.capacity.free gauge GB 902.5 {pool} - - {c}"),
        format!("volume.provider.pool.capacity.total gauge GB 1024 {pool} - - {c}"),
        format!("volume.provider.capacity.virtual_free gauge GB 1801 {backend} - - {c}"),
        format!("volume.provider.capacity.provisioned gauge GB 121.5 {backend} - - {c}"),
        format!("volume.provider.capacity.allocated gauge GB 100 {backend} - - {c}"),
        format!("volume.provider.capacity.free gauge GB 902.5 {backend} - - {c}"),
        format!("volume.provider.capacity.total gauge GB 1024 {backend} - - {c}"),
    ];
    assert_eq!(got, want);
    // The image a volume was made from (a filter over glance_metadata) and the server it is
    // attached to.
    assert_eq!(
        metadata(&out[0]),
        serde_json::json!({"display_name": "db-data", "volume_type": "2f1e0d9c-8b7a-4c6d-9e5f-1a2b3c4d5e6f",
            "volume_type_id": "2f1e0d9c-8b7a-4c6d-9e5f-1a2b3c4d5e6f", "image_id": "3d7d4a1c-6e0e-4f0e-9a3b-7b6a9b2f1c01"})
    );
    assert_eq!(
        metadata(&out[1])["instance_id"],
        "8f2c0c8e-2b0a-4b7b-9c55-7a1f3ad5e0b1"
    );
    assert_eq!(
        metadata(&out[4]),
        serde_json::json!({"provider": "blk-01@lvm"})
    );
    // No metadata configured: the payload, plus event_type and host.
    let backend_meta = metadata(&out[13]);
    assert_eq!(backend_meta["event_type"], "capacity.backend.stats");
    assert_eq!(backend_meta["host"], "capacity.blk-01@lvm");
    assert_eq!(backend_meta["reported_at"], "2024-05-01T12:05:00.000000");
}

#[test]
fn glance_uploads_downloads_and_deletes() {
    let out = samples("glance.jsonl");
    let img = "3d7d4a1c-6e0e-4f0e-9a3b-7b6a9b2f1c01";
    let got: Vec<String> = out.iter().map(line).collect();
    let want = vec![
        format!("image.size gauge B 629145600 {img} - {P} 2024-05-01T12:10:00.250000+00:00"),
        format!("image.serve delta B 629145600 {img} - {P} 2024-05-01T12:11:00+00:00"),
        format!("image.download delta B 629145600 {img} c1c2c3c4c5c6c7c8c9c0d1d2d3d4d5d6 a1a2a3a4a5a6a7a8a9a0b1b2b3b4b5b6 2024-05-01T12:11:00+00:00"),
        format!("image.size gauge B 629145600 {img} - {P} 2024-05-01T12:12:00+00:00"),
    ];
    assert_eq!(got, want);
    assert_eq!(metadata(&out[0])["name"], "ubuntu-24.04");
}

#[test]
fn neutron_resources_and_bandwidth() {
    let out = samples("neutron.jsonl");
    let net = "a0b1c2d3-e4f5-4a6b-8c7d-9e0f1a2b3c4d";
    let port = "d4c3b2a1-0f9e-4d8c-b7a6-5f4e3d2c1b0a";
    let fip = "f1e2d3c4-b5a6-4978-8695-a4b3c2d1e0f9";
    let got: Vec<String> = out.iter().map(line).collect();
    let want = vec![
        format!("network.create delta network 1 {net} {U} {P} 2024-05-01T12:20:00+00:00"),
        format!("network gauge network 1 {net} {U} {P} 2024-05-01T12:20:00+00:00"),
        format!("port.create delta port 1 {port} {U} {P} 2024-05-01T12:20:05+00:00"),
        format!("port gauge port 1 {port} {U} {P} 2024-05-01T12:20:05+00:00"),
        format!("ip.floating gauge ip 1 {fip} - {P} 2024-05-01T12:20:10+00:00"),
        format!("bandwidth delta B 1803264 9a8b7c6d-5e4f-4a3b-2c1d-0e9f8a7b6c5d - {P} 2024-05-01T12:20:30+00:00"),
    ];
    assert_eq!(got, want);
    assert_eq!(
        metadata(&out[1]),
        serde_json::json!({"name": "private", "status": "ACTIVE", "admin_state_up": true})
    );
    assert_eq!(metadata(&out[3])["device_owner"], "compute:nova");
    assert!(
        metadata(&out[3]).get("name").is_none(),
        "an empty name is left out"
    );
    assert_eq!(metadata(&out[4])["floating_ip_address"], "203.0.113.7");
}

#[test]
fn swift_requests_become_one_sample_per_measurement() {
    let out = samples("swift.jsonl");
    let got: Vec<String> = out.iter().map(line).collect();
    let acct = format!("AUTH_{P}");
    let t = "2024-05-01T12:30:00.000321+00:00";
    assert_eq!(
        got,
        vec![
            format!("storage.objects.outgoing.bytes delta B 52428800 {acct} {U} {P} {t}"),
            format!("storage.objects.incoming.bytes delta B 0 {acct} {U} {P} {t}"),
        ]
    );
    assert_eq!(metadata(&out[0])["action"], "read");
}

#[test]
fn every_shipped_file_loads_without_problems() {
    let plan = Plan::from_yaml(ALL, "all.yaml").expect("valid");
    assert_eq!(plan.meters.len(), 44);
    assert_eq!(plan.meters_from, "the shipped meter_definitions");
    assert_eq!(plan.events.len(), 12, "11 and the catch-all");
}

#[test]
fn a_definition_brings_its_own_meters_or_none() {
    let inline = format!(
        "{ALL}meter_definitions:\n  metric:\n    - {{name: image.bytes, event_type: 'image\\.(upload|update)', type: gauge, unit: B, volume: $.payload.size, resource_id: $.payload.id}}\n"
    );
    let plan = Plan::from_yaml(&inline, "inline.yaml").expect("valid");
    assert_eq!(plan.meters.len(), 1);
    let text = std::fs::read_to_string(format!(
        "{}/tests/data/notifications/glance.jsonl",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let names: Vec<String> = sequential::run(&plan, &lines)
        .iter()
        .map(|(_, s)| format!("{} {}", s.name.as_str(), s.timestamp.as_str()))
        .collect();
    assert_eq!(names, vec!["image.bytes 2024-05-01T12:10:00.250000+00:00"]);

    let none = Plan::from_yaml(&format!("{ALL}meter_definitions: []\n"), "none.yaml").unwrap();
    assert!(none.meters.is_empty());
    assert!(sequential::run(&none, &lines).is_empty());
}

#[test]
fn bad_meter_definitions_are_reported_with_their_place() {
    let bad = format!(
        "{ALL}meter_definitions:\n  metric:\n    - {{name: a, event_type: x, type: level, unit: B, volume: $.v, resource_id: $.r}}\n    - {{name: b, event_type: x, type: gauge, unit: B, volume: '$.v[', resource_id: $.r}}\n"
    );
    let problems = Plan::from_yaml(&bad, "bad.yaml").unwrap_err().to_string();
    assert!(
        problems.contains("meter_definitions.metric[0].type: Invalid type level"),
        "{problems}"
    );
    assert!(
        problems.contains("meter_definitions.metric[1].volume: cannot parse JSONPath"),
        "{problems}"
    );
    let missing = Plan::from_yaml(
        &format!("{ALL}meter_definitions: no/such/meters.yaml\n"),
        "m.yaml",
    )
    .unwrap_err()
    .to_string();
    assert!(
        missing.contains("meter_definitions: cannot read no/such/meters.yaml"),
        "{missing}"
    );
}

/// `meterflow run` on every data file, 1 and 3 workers: the published samples are the
/// sequential implementation's (as a multiset; fresh message ids aside).
#[test]
fn the_engine_publishes_what_the_definitions_make() {
    let dir = tempfile::tempdir().unwrap();
    let data = format!("{}/tests/data/notifications", env!("CARGO_MANIFEST_DIR"));
    let files = ["nova", "cinder", "glance", "neutron", "swift"];
    let mut all = String::new();
    for f in files {
        all.push_str(&std::fs::read_to_string(format!("{data}/{f}.jsonl")).unwrap());
    }
    let lines: Vec<&str> = all.lines().collect();
    let plan = Plan::from_yaml(ALL, "all.yaml").unwrap();
    let mut want: Vec<String> = sequential::run(&plan, &lines)
        .iter()
        .map(|(_, s)| format!("{} {}", line(s), s.resource_metadata.as_str()))
        .collect();
    want.sort();
    assert_eq!(want.len(), 41);
    for workers in ["1", "3"] {
        let out = dir.path().join(format!("out-{workers}.jsonl"));
        let def = dir.path().join("all.yaml");
        std::fs::write(
            &def,
            ALL.replace("file:///dev/null", &format!("file://{}", out.display())),
        )
        .unwrap();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_meterflow"));
        cmd.arg("run")
            .arg(&def)
            .arg("--workers")
            .arg(workers)
            .arg("--no-progress")
            .arg("--summary-json");
        for f in files {
            cmd.arg("--input").arg(format!("{data}/{f}.jsonl"));
        }
        let run = cmd.output().unwrap();
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        let summary: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
        assert_eq!(summary["samples_in"], 41);
        // The one notification no shipped definition takes (compute.instance.update).
        assert_eq!(summary["dropped"]["no_meter_definition"], 1);
        let mut got: Vec<String> = std::fs::read_to_string(&out)
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                let s = meterflow_engine::Sample {
                    name: meterflow_engine::Sym::new(v["counter_name"].as_str().unwrap()),
                    kind: meterflow_engine::SampleType::parse(v["counter_type"].as_str().unwrap())
                        .unwrap(),
                    unit: meterflow_engine::Sym::new(v["counter_unit"].as_str().unwrap()),
                    volume: match v["counter_volume"].as_i64() {
                        Some(i) => meterflow_engine::Volume::Int(i),
                        None => {
                            meterflow_engine::Volume::Float(v["counter_volume"].as_f64().unwrap())
                        }
                    },
                    user_id: v["user_id"].as_str().map(meterflow_engine::Sym::new),
                    project_id: v["project_id"].as_str().map(meterflow_engine::Sym::new),
                    ..Sample::gauge(
                        "x",
                        v["resource_id"].as_str().unwrap(),
                        0.0,
                        v["timestamp"].as_str().unwrap(),
                    )
                };
                format!(
                    "{} {}",
                    line(&s),
                    serde_json::to_string(&v["resource_metadata"]).unwrap()
                )
            })
            .collect();
        got.sort();
        assert_eq!(got, want, "{workers} workers");
    }
}

/// The shipped event definitions on the same notifications: the traits event alarms query.
#[test]
fn shipped_event_definitions_make_events() {
    let plan = Plan::from_yaml(ALL, "all.yaml").unwrap();
    let data = format!("{}/tests/data/notifications", env!("CARGO_MANIFEST_DIR"));
    let first = |file: &str| {
        let text = std::fs::read_to_string(format!("{data}/{file}")).unwrap();
        let view =
            meterflow_operators::notification::message_view(text.lines().next().unwrap()).unwrap();
        let event = plan.events.event(&view).expect("an event");
        let traits: std::collections::BTreeMap<String, serde_json::Value> = event
            .traits
            .iter()
            .map(|t| (t.name.clone(), serde_json::to_value(&t.value).unwrap()))
            .collect();
        (event, traits)
    };
    let (e, t) = first("nova.jsonl");
    assert_eq!(e.event_type, "compute.instance.create.end");
    assert_eq!(e.generated, "2024-05-01T11:59:41.117825");
    assert_eq!(e.message_id, "5f5a3f2e-8c9b-4d41-9a53-0d6f3c1f2a01");
    assert_eq!(t["instance_id"], "8f2c0c8e-2b0a-4b7b-9c55-7a1f3ad5e0b1");
    assert_eq!(t["tenant_id"], P);
    assert_eq!(t["memory_mb"], 2048);
    assert_eq!(t["host"], "cmp-01");
    assert_eq!(t["service"], "compute");
    assert_eq!(t["launched_at"], "2024-05-01T11:59:40.250000");
    assert_eq!(t["request_id"], "req-6a3c1c1e-51a1-4b6e-8a0d-0c3f8d9a2b11");
    assert!(
        !t.contains_key("deleted_at"),
        "an empty datetime is left out"
    );
    let (_, t) = first("cinder.jsonl");
    assert_eq!(t["resource_id"], "c0a1f3d2-5e6f-4a7b-8c9d-0e1f2a3b4c5d");
    assert_eq!(t["size"], 100);
    assert_eq!(t["image_id"], "3d7d4a1c-6e0e-4f0e-9a3b-7b6a9b2f1c01");
    let (_, t) = first("glance.jsonl");
    assert_eq!(
        (t["name"].as_str(), t["size"].as_i64()),
        (Some("ubuntu-24.04"), Some(629145600))
    );
    let (_, t) = first("neutron.jsonl");
    assert_eq!(t["resource_id"], "a0b1c2d3-e4f5-4a6b-8c7d-9e0f1a2b3c4d");
    assert_eq!(t["project_id"], P);
    let (_, t) = first("swift.jsonl");
    assert_eq!(
        (t["action"].as_str(), t["container"].as_str()),
        (Some("read"), Some("backups"))
    );
}
