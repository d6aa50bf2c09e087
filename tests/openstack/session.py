"""A scripted session of OpenStack's own clients against a running meterflow (issue 20).

Runs the gnocchi, aodh and openstack CLIs (and gnocchiclient's and aodhclient's Python APIs)
against ENDPOINT as an operator would, and checks what they print, not only that they exit 0.

    python session.py ENDPOINT [TOKEN]

With TOKEN the clients authenticate with keystoneauth's admin_token plugin (X-Auth-Token);
without, with the noauth plugins (X-User-Id / X-Project-Id). The CLIs are taken from the
directory of this Python (the venv .ci/run creates). Exits 1 naming every check that failed.
"""

import json
import os
import subprocess
import sys
import tempfile

ENDPOINT = sys.argv[1]
TOKEN = sys.argv[2] if len(sys.argv) > 2 else None
BIN = os.path.dirname(sys.executable)
USER, PROJECT = "user-1", "project-1"
FAILURES = []


def auth(cli):
    """The authentication options each CLI takes, with or without a token."""
    if TOKEN:
        return ["--os-auth-type", "admin_token", "--os-endpoint", ENDPOINT, "--os-token", TOKEN]
    if cli == "gnocchi":
        return ["--os-auth-type", "gnocchi-noauth", "--gnocchi-endpoint", ENDPOINT,
                "--user-id", USER, "--project-id", PROJECT]
    if cli == "aodh":
        return ["--os-auth-type", "aodh-noauth", "--aodh-endpoint", ENDPOINT,
                "--user-id", USER, "--project-id", PROJECT]
    return ["--os-auth-type", "none", "--os-endpoint", ENDPOINT]


def run(cli, *args, expect_ok=True):
    """Runs one CLI command; its output (parsed when JSON was asked for) or its error text."""
    command = [os.path.join(BIN, cli)] + auth(cli) + list(args)
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    shown = " ".join([cli] + list(args))
    if expect_ok and done.returncode != 0:
        FAILURES.append(f"{shown}: exit {done.returncode}: {done.stderr.strip()[-600:]}")
        return None
    if not expect_ok:
        if done.returncode == 0:
            FAILURES.append(f"{shown}: expected a failure, got: {done.stdout.strip()[:300]}")
        return done.stderr
    if "-f" in args and args[args.index("-f") + 1] == "json":
        try:
            return json.loads(done.stdout)
        except ValueError as e:
            FAILURES.append(f"{shown}: not JSON ({e}): {done.stdout[:300]}")
            return None
    return done.stdout


def check(what, ok, detail=""):
    if not ok:
        FAILURES.append(f"{what}: {detail}")


def gnocchi_session():
    status = run("gnocchi", "status", "-f", "json") or {}
    check("gnocchi status", status.get("storage/total number of measures to process") == 0, status)
    caps = run("gnocchi", "capabilities", "list", "-f", "json") or {}
    check("gnocchi capabilities list", "rate:mean" in caps.get("aggregation_methods", []), caps)

    policies = run("gnocchi", "archive-policy", "list", "-f", "json") or []
    names = {p["name"] for p in policies}
    check("gnocchi archive-policy list", {"low", "medium", "five"} <= names, names)
    low = run("gnocchi", "archive-policy", "show", "low", "-f", "json") or {}
    check("gnocchi archive-policy show low", low.get("definition") == [
        {"granularity": "0:05:00", "points": 8640, "timespan": "30 days, 0:00:00"}], low)
    rules = run("gnocchi", "archive-policy-rule", "list", "-f", "json") or []
    check("gnocchi archive-policy-rule list", any(r["name"] == "loads" for r in rules), rules)

    # An archive policy's life: created, changed, refused while in use, deleted.
    made = run("gnocchi", "archive-policy", "create", "-d", "granularity:1m,points:60",
               "-d", "granularity:1h,timespan:1d", "-m", "mean", "-m", "max", "-b", "0",
               "made", "-f", "json") or {}
    check("gnocchi archive-policy create", made.get("definition") == [
        {"granularity": "1:00:00", "points": 24, "timespan": "1 day, 0:00:00"},
        {"granularity": "0:01:00", "points": 60, "timespan": "1:00:00"}], made)
    changed = run("gnocchi", "archive-policy", "update", "-d", "granularity:1m,points:120",
                  "-d", "granularity:1h,timespan:2d", "made", "-f", "json") or {}
    check("gnocchi archive-policy update", [d["points"] for d in changed.get("definition", [])]
          == [48, 120], changed)
    error = run("gnocchi", "archive-policy", "update", "-d", "granularity:5m,points:1", "made",
                expect_ok=False) or ""
    check("gnocchi archive-policy update (granularities)", "Cannot add or drop granularities"
          in error, error)
    error = run("gnocchi", "archive-policy", "create", "-d", "granularity:1m,points:6", "made",
                expect_ok=False) or ""
    check("gnocchi archive-policy create (taken)", "Archive policy made already exists" in error
          and "HTTP 409" in error, error)
    error = run("gnocchi", "archive-policy", "create", "-d", "granularity:soon,points:6", "bad",
                expect_ok=False) or ""
    check("gnocchi archive-policy create (bad)", "HTTP 400" in error, error)
    run("gnocchi", "archive-policy", "create", "-d", "granularity:1m,points:5", "spare")
    run("gnocchi", "archive-policy", "delete", "spare")
    error = run("gnocchi", "archive-policy", "show", "spare", expect_ok=False) or ""
    check("gnocchi archive-policy delete", "does not exist" in error, error)

    # A rule's life: created, shown, renamed, used by a new metric, deleted.
    rule = run("gnocchi", "archive-policy-rule", "create", "-a", "made", "-m", "disk.*", "disks",
               "-f", "json") or {}
    check("gnocchi archive-policy-rule create", rule == {
        "name": "disks", "metric_pattern": "disk.*", "archive_policy_name": "made"}, rule)
    renamed = run("gnocchi", "archive-policy-rule", "update", "disks", "--name", "disk-rule",
                  "-f", "json") or {}
    check("gnocchi archive-policy-rule update", renamed.get("name") == "disk-rule", renamed)
    shown = run("gnocchi", "archive-policy-rule", "show", "disk-rule", "-f", "json") or {}
    check("gnocchi archive-policy-rule show", shown.get("metric_pattern") == "disk.*", shown)
    error = run("gnocchi", "archive-policy-rule", "create", "-a", "nope", "-m", "x*", "bad",
                expect_ok=False) or ""
    check("gnocchi archive-policy-rule create (unknown policy)",
          "Archive policy nope does not exist" in error, error)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({"host-4": {"disk.read": [{"timestamp": "2024-05-01T12:00:10", "value": 1}]}}, f)
    run("gnocchi", "measures", "batch-resources-metrics", "--create-metrics", f.name)
    disk = run("gnocchi", "metric", "show", "--resource-id", "host-4", "disk.read", "-f", "json") or {}
    check("a rule created through the API gives new metrics their policy",
          disk.get("archive_policy/name") == "made", disk)
    run("gnocchi", "archive-policy-rule", "delete", "disk-rule")
    left = run("gnocchi", "archive-policy-rule", "list", "-f", "json") or []
    check("gnocchi archive-policy-rule delete", [r["name"] for r in left] == ["loads", "default"],
          left)

    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({"host-3": {"temp": {"archive_policy_name": "made", "measures": [
            {"timestamp": "2024-05-01T12:00:10", "value": 20}]}}}, f)
    run("gnocchi", "measures", "batch-resources-metrics", "--create-metrics", f.name)
    error = run("gnocchi", "archive-policy", "delete", "made", expect_ok=False) or ""
    check("gnocchi archive-policy delete (in use)", "Archive policy made is still in use" in error,
          error)

    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({"host-1": {"load": {"archive_policy_name": "five", "measures": [
            {"timestamp": "2024-05-01T12:00:10", "value": 1.5},
            {"timestamp": "2024-05-01T12:06:10", "value": 2.5},
            {"timestamp": "2024-05-01T12:07:10", "value": 4.5}]}},
            "host-2": {"load": [{"timestamp": "2024-05-01T12:00:10", "value": 7}]}}, f)
    run("gnocchi", "measures", "batch-resources-metrics", "--create-metrics", f.name)

    metrics = run("gnocchi", "metric", "list", "-f", "json") or []
    loads = [m for m in metrics if m["name"] == "load"]
    check("gnocchi metric list", len(metrics) == 4 and len(loads) == 2
          and {m["archive_policy/name"] for m in loads} == {"five", "medium"}, metrics)
    first = run("gnocchi", "metric", "list", "--sort", "name:desc", "--limit", "1", "-f", "json") or []
    check("gnocchi metric list --sort --limit", [m["name"] for m in first] == ["temp"], first)
    resources = run("gnocchi", "resource", "list", "-f", "json") or []
    originals = sorted(r["original_resource_id"] for r in resources)
    check("gnocchi resource list", originals == ["host-1", "host-2", "host-3", "host-4"],
          resources)
    found = run("gnocchi", "resource", "search", "original_resource_id like 'host-%' and not "
                "original_resource_id in ('host-2', 'host-4')", "--sort",
                "original_resource_id:desc", "-f", "json") or []
    check("gnocchi resource search", [r["original_resource_id"] for r in found]
          == ["host-3", "host-1"], found)
    error = run("gnocchi", "resource", "search", "original_resource_id = ", expect_ok=False) or ""
    check("gnocchi resource search (bad filter)", "HTTP 400" in error, error)
    host1 = run("gnocchi", "resource", "show", "host-1", "-f", "json") or {}
    check("gnocchi resource show", host1.get("type") == "generic" and "load" in str(host1.get("metrics")), host1)

    shown = run("gnocchi", "metric", "show", "--resource-id", "host-1", "load", "-f", "json") or {}
    check("gnocchi metric show --resource-id", shown.get("archive_policy/name") == "five", shown)
    metric_id = shown.get("id", "missing")
    by_id = run("gnocchi", "metric", "show", metric_id, "-f", "json") or {}
    check("gnocchi metric show ID", by_id.get("name") == "load", by_id)

    measures = run("gnocchi", "measures", "show", "--resource-id", "host-1", "load", "-f", "json") or []
    got = [(m["timestamp"], m["granularity"], m["value"]) for m in measures]
    check("gnocchi measures show", got == [("2024-05-01T12:00:00+00:00", 300.0, 1.5),
                                          ("2024-05-01T12:05:00+00:00", 300.0, 3.5)], got)
    run("gnocchi", "measures", "add", "-m", "2024-05-01T12:11:00@10", metric_id)
    maxima = run("gnocchi", "measures", "show", "--aggregation", "mean", "--start",
                 "2024-05-01T12:10:00", metric_id, "-f", "json") or []
    check("gnocchi measures add, then show --start", [m["value"] for m in maxima] == [10.0], maxima)

    made_metric = run("gnocchi", "metric", "create", "--resource-id", "host-1", "-a", "five",
                      "--unit", "B", "extra", "-f", "json") or {}
    check("gnocchi metric create", made_metric.get("name") == "extra"
          and made_metric.get("archive_policy_name") == "five" and made_metric.get("unit") == "B",
          made_metric)
    run("gnocchi", "measures", "add", "-m", "2024-05-01T12:01:00@5", made_metric.get("id", "?"))
    extra = run("gnocchi", "measures", "show", "--resource-id", "host-1", "extra", "-f", "json") or []
    check("measures of a created metric", [m["value"] for m in extra] == [5.0], extra)
    # Cross-metric: host-1's load (1.5, 3.5, 10 at 12:00, 12:05, 12:10) and extra (5 at 12:00).
    extra_id = made_metric.get("id", "?")
    summed = run("gnocchi", "aggregates", f"(aggregate sum (metric ({metric_id} mean) "
                 f"({extra_id} mean)))", "-f", "json") or []
    check("gnocchi aggregates (by id)", [(m["name"], m["timestamp"], m["value"]) for m in summed]
          == [("aggregated", "2024-05-01T12:00:00+00:00", 6.5),
              ("aggregated", "2024-05-01T12:05:00+00:00", 3.5),
              ("aggregated", "2024-05-01T12:10:00+00:00", 10.0)], summed)
    per = run("gnocchi", "aggregates", "(metric loa* mean)", "original_resource_id='host-1'",
              "-f", "json") or []
    check("gnocchi aggregates (over resources)", [m["value"] for m in per] == [1.5, 3.5, 10.0]
          and all(m["name"].endswith("/load/mean") for m in per), per)
    grouped = run("gnocchi", "aggregates", "--groupby", "original_resource_id",
                  "(aggregate max (metric extra mean))", "original_resource_id like 'host-%'",
                  "-f", "json") or []
    check("gnocchi aggregates --groupby", [(m["group"], m["value"]) for m in grouped]
          == [("original_resource_id: host-1", 5.0)], grouped)
    overlap = run("gnocchi", "measures", "aggregation", "-m", metric_id, extra_id,
                  "--needed-overlap", "0", "-f", "json") or []
    check("gnocchi measures aggregation", [(m["timestamp"], m["value"]) for m in overlap]
          == [("2024-05-01T12:00:00+00:00", 3.25)], overlap)
    error = run("gnocchi", "aggregates", "(aggregate mean (metric nope mean))", "id!='x'",
                expect_ok=False) or ""
    check("gnocchi aggregates (unknown metric)", "Metric ['nope'] does not exist" in error
          and "HTTP 404" in error, error)
    error = run("gnocchi", "aggregates", "(aggregate mean (metric nope mean)", expect_ok=False) or ""
    check("gnocchi aggregates (bad operations)", "Invalid operations" in error
          and "HTTP 400" in error, error)

    error = run("gnocchi", "metric", "create", "--resource-id", "host-1", "-a", "five", "extra",
                expect_ok=False) or ""
    check("gnocchi metric create (taken)", "Named metric extra already exists" in error
          and "HTTP 409" in error, error)

    # A resource type's life, and a resource's: created, changed, its history, deleted.
    box = run("gnocchi", "resource-type", "create", "-a", "host:string:true:max_length=16",
              "-a", "cores:number:false:min=1", "box", "-f", "json") or {}
    check("gnocchi resource-type create", box.get("name") == "box"
          and "max_length=16" in str(box.get("attributes/host")), box)
    types = run("gnocchi", "resource-type", "list", "-f", "json") or []
    check("gnocchi resource-type list", {"generic", "box"} <= {t["name"] for t in types}, types)
    error = run("gnocchi", "resource-type", "create", "box", expect_ok=False) or ""
    check("gnocchi resource-type create (taken)", "HTTP 409" in error, error)
    made = run("gnocchi", "resource", "create", "--type", "box", "-a", "host:h1", "-a", "cores:4",
               "-n", "temp:five", "box-1", "-f", "json") or {}
    check("gnocchi resource create", made.get("original_resource_id") == "box-1"
          and made.get("host") == "h1" and made.get("cores") == 4.0 and made.get("type") == "box"
          and "temp" in str(made.get("metrics")) and made.get("started_at"), made)
    error = run("gnocchi", "resource", "create", "--type", "box", "-a", "cores:4", "box-2",
                expect_ok=False) or ""
    check("gnocchi resource create (required attribute)", "HTTP 400" in error
          and "host" in error, error)
    error = run("gnocchi", "resource", "create", "--type", "box", "-a", "host:h1", "box-1",
                expect_ok=False) or ""
    check("gnocchi resource create (taken)", "HTTP 409" in error, error)
    changed = run("gnocchi", "resource", "update", "--type", "box", "-a", "host:h2",
                  "-n", "fans:five", "box-1", "-f", "json") or {}
    check("gnocchi resource update", changed.get("host") == "h2"
          and "fans" in str(changed.get("metrics")), changed)
    history = run("gnocchi", "resource", "history", "--type", "box", "box-1", "-f", "json") or []
    check("gnocchi resource history", [h.get("host") for h in history] == ["h1", "h2"], history)
    error = run("gnocchi", "resource-type", "delete", "box", expect_ok=False) or ""
    check("gnocchi resource-type delete (in use)", "still in use" in error, error)
    run("gnocchi", "resource", "create", "--type", "box", "-a", "host:h9", "box-2")
    run("gnocchi", "resource", "delete", made.get("id", "?"))
    error = run("gnocchi", "resource", "show", "--type", "box", "box-1", expect_ok=False) or ""
    check("gnocchi resource delete", "HTTP 404" in error, error)
    gone = run("gnocchi", "resource", "batch", "delete", "--type", "box", "host='h9'",
               "-f", "json") or {}
    check("gnocchi resource batch delete", gone.get("deleted") == 1, gone)
    run("gnocchi", "resource-type", "update", "-a", "zone:string:false", "-r", "cores", "box")
    box = run("gnocchi", "resource-type", "show", "box", "-f", "json") or {}
    check("gnocchi resource-type update", "attributes/zone" in box
          and "attributes/cores" not in box, box)
    run("gnocchi", "resource-type", "delete", "box")
    error = run("gnocchi", "resource-type", "show", "box", expect_ok=False) or ""
    check("gnocchi resource-type delete", "HTTP 404" in error, error)

    alone = run("gnocchi", "metric", "create", "-a", "five", "alone", "-f", "json") or {}
    check("gnocchi metric create (no resource)", alone.get("name") == "alone"
          and alone.get("resource_id") is None, alone)
    run("gnocchi", "measures", "add", "-m", "2024-05-01T12:01:00@8", alone.get("id", "?"))
    shown = run("gnocchi", "measures", "show", alone.get("id", "?"), "-f", "json") or []
    check("measures of a metric of no resource", [m["value"] for m in shown] == [8.0], shown)
    run("gnocchi", "metric", "delete", alone.get("id", "?"))

    spare = run("gnocchi", "metric", "create", "--resource-id", "host-1", "-a", "five", "spare",
                "-f", "json") or {}
    run("gnocchi", "metric", "delete", spare.get("id", "?"))
    error = run("gnocchi", "metric", "show", spare.get("id", "?"), expect_ok=False) or ""
    check("gnocchi metric delete", "HTTP 404" in error, error)
    run("gnocchi", "metric", "create", "--resource-id", "host-1", "-a", "five", "spare2")
    run("gnocchi", "metric", "delete", "--resource-id", "host-1", "spare2")
    error = run("gnocchi", "metric", "show", "--resource-id", "host-1", "spare2",
                expect_ok=False) or ""
    check("gnocchi metric delete --resource-id", "HTTP 404" in error, error)

    if not TOKEN:
        # A caller without the admin role sees its own project's resources only.
        command = [os.path.join(BIN, "gnocchi"), "--os-auth-type", "gnocchi-noauth",
                   "--gnocchi-endpoint", ENDPOINT, "--user-id", USER, "--project-id",
                   "elsewhere", "--roles", "member", "resource", "list", "-f", "json"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        check("gnocchi resource list (a member of another project)", done.returncode == 0
              and done.stdout.strip() in ("", "[]"), done.stdout + done.stderr)

    nobody = "00000000-0000-4000-8000-000000000000"
    error = run("gnocchi", "metric", "show", nobody, expect_ok=False) or ""
    check("gnocchi metric show (unknown)", f"Metric {nobody} does not exist" in error
          and "HTTP 404" in error, error)
    error = run("gnocchi", "archive-policy", "show", "nope", expect_ok=False) or ""
    check("gnocchi archive-policy show (unknown)", "Archive policy nope does not exist" in error, error)


def openstack_session():
    metrics = run("openstack", "metric", "list", "-f", "json") or []
    check("openstack metric list", len(metrics) == 5, metrics)
    measures = run("openstack", "metric", "measures", "show", "--resource-id", "host-2", "load",
                   "--granularity", "60", "-f", "json") or []
    check("openstack metric measures show", [m["value"] for m in measures] == [7.0], measures)
    status = run("openstack", "metric", "status", "-f", "json") or {}
    check("openstack metric status", "metricd/processors" in status, status)
    caps = run("openstack", "alarming", "capabilities", "list", "-f", "json") or {}
    check("openstack alarming capabilities list",
          caps.get("api", {}).get("alarms:query:complex") is True, caps)


def aodh_session():
    caps = run("aodh", "capabilities", "list", "-f", "json") or {}
    check("aodh capabilities list", "alarm_storage" in caps, caps)
    created = run("aodh", "alarm", "create", "--name", "load_high", "--type",
                  "gnocchi_resources_threshold", "--metric", "load", "--resource-id", "host-1",
                  "--resource-type", "generic", "--aggregation-method", "mean", "--granularity",
                  "300", "--comparison-operator", "gt", "--threshold", "4",
                  "--alarm-action", "log://", "-f", "json") or {}
    check("aodh alarm create", created.get("state") == "insufficient data"
          and created.get("threshold") == 4.0, created)
    if not TOKEN:
        check("aodh alarm create records the caller (noauth)",
              created.get("project_id") == PROJECT and created.get("user_id") == USER, created)
    alarm_id = created.get("alarm_id", "missing")
    listed = run("aodh", "alarm", "list", "-f", "json") or []
    check("aodh alarm list", [a["name"] for a in listed] == ["load_high"], listed)
    by_name = run("aodh", "alarm", "show", "--name", "load_high", "-f", "json") or {}
    check("aodh alarm show --name", by_name.get("alarm_id") == alarm_id, by_name)
    queried = run("aodh", "alarm", "list", "--query", "severity=low", "-f", "json") or []
    check("aodh alarm list --query", [a["alarm_id"] for a in queried] == [alarm_id], queried)
    none = run("aodh", "alarm", "list", "--query", "severity=critical", "-f", "json")
    check("aodh alarm list --query (no match)", none == [], none)
    run("aodh", "alarm", "state", "set", "--name", "load_high", "--state", "alarm")
    state = run("aodh", "alarm", "state", "get", "--name", "load_high", "-f", "json") or {}
    check("aodh alarm state set/get --name", state.get("state") == "alarm", state)
    updated = run("aodh", "alarm", "update", "--name", "load_high", "--threshold", "7",
                  "-f", "json") or {}
    check("aodh alarm update --name", updated.get("threshold") == 7.0, updated)
    history = run("aodh", "alarm-history", "show", alarm_id, "-f", "json") or []
    kinds = [h["type"] for h in history]
    check("aodh alarm-history show", kinds[-1:] == ["creation"] and "state transition" in kinds, kinds)
    searched = run("aodh", "alarm-history", "search", "--query", "type=creation", "-f", "json") or []
    check("aodh alarm-history search", len(searched) == 1, searched)
    error = run("aodh", "alarm", "show", "no-such-alarm", expect_ok=False) or ""
    check("aodh alarm show (unknown)", "Alarm no-such-alarm not found" in error, error)
    error = run("aodh", "alarm", "list", "--query", "colour=red", expect_ok=False) or ""
    check("aodh alarm list --query (bad field)", "colour" in error and "HTTP 400" in error, error)

    # Alarm quotas: a project limited to one alarm gets a 403 for its second.
    quota = run("openstack", "alarm", "quota", "set", "quota-project", "--alarm", "1",
                "-f", "json") or {}
    check("openstack alarm quota set", quota == {"alarms": 1}, quota)
    shown = run("openstack", "alarm", "quota", "show", "--project", "quota-project",
                "-f", "json") or {}
    check("openstack alarm quota show", shown == {"alarms": 1}, shown)
    alarm_args = ["--type", "gnocchi_resources_threshold", "--metric", "load", "--resource-id",
                  "host-1", "--resource-type", "generic", "--aggregation-method", "mean",
                  "--granularity", "300", "--comparison-operator", "gt", "--threshold", "4",
                  "--project-id", "quota-project"]
    run("aodh", "alarm", "create", "--name", "quota_one", *alarm_args)
    error = run("aodh", "alarm", "create", "--name", "quota_two", *alarm_args,
                expect_ok=False) or ""
    check("aodh alarm create over the quota", "Alarm quota exceeded" in error
          and "HTTP 403" in error, error)
    run("aodh", "alarm", "delete", "--name", "quota_one")

    # openstack's alarm commands over the same alarm.
    shown = run("openstack", "alarm", "show", "--name", "load_high", "-f", "json") or {}
    check("openstack alarm show --name", shown.get("alarm_id") == alarm_id, shown)
    run("aodh", "alarm", "delete", "--name", "load_high")
    gone = run("aodh", "alarm", "list", "-f", "json")
    check("aodh alarm delete --name", gone == [], gone)


def python_api_session():
    """gnocchiclient's and aodhclient's Python APIs, as Grafana plug-ins and Heat use them."""
    from keystoneauth1 import session as ks_session
    from keystoneauth1 import token_endpoint
    from gnocchiclient import auth as gnocchi_auth
    from gnocchiclient.v1 import client as gnocchi_client
    from aodhclient.v2 import client as aodh_client
    from aodhclient import noauth as aodh_noauth

    if TOKEN:
        plugin = token_endpoint.Token(ENDPOINT, TOKEN)
        aodh_plugin = plugin
    else:
        plugin = gnocchi_auth.GnocchiNoAuthPlugin(USER, PROJECT, "admin", ENDPOINT)
        aodh_plugin = aodh_noauth.AodhNoAuthPlugin(USER, PROJECT, "admin", ENDPOINT)
    gnocchi = gnocchi_client.Client(session=ks_session.Session(auth=plugin))
    metrics = gnocchi.metric.list()
    check("gnocchiclient metric.list", len(metrics) == 5
          and all("archive_policy" in m for m in metrics), metrics)
    measures = gnocchi.metric.get_measures("load", resource_id="host-1", granularity=300)
    check("gnocchiclient metric.get_measures", [m[2] for m in measures] == [1.5, 3.5, 10.0],
          measures)
    policy = gnocchi.archive_policy.get("five")
    check("gnocchiclient archive_policy.get", policy["definition"][0]["granularity"] == "0:05:00",
          policy)
    aodh = aodh_client.Client(session=ks_session.Session(auth=aodh_plugin))
    check("aodhclient alarm.list", aodh.alarm.list() == [], aodh.alarm.list())
    found = aodh.alarm.query(json.dumps({"=": {"name": "nothing"}}))
    check("aodhclient alarm.query", found == [], found)


def main():
    gnocchi_session()
    openstack_session()
    aodh_session()
    python_api_session()
    mode = "with a token" if TOKEN else "without a token (noauth)"
    if FAILURES:
        print(f"{len(FAILURES)} checks failed {mode}:")
        for f in FAILURES:
            print(f"  - {f}")
        sys.exit(1)
    print(f"every check passed {mode}")


main()
