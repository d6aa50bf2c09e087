//! Which alarm actions the engine may carry out: the operator's rules for `file://` paths and
//! for the hosts of `http(s)://` and `kafka://` actions.
//!
//! An alarm action makes the engine write a file or call a host as its own user, and alarms
//! can come from the API. So:
//! - `file://` actions are written only under the notification directory (`--action-dir`)
//!   when one is set. Without one, definitions may name any path but never one the engine
//!   itself keeps (the store, the checkpoint state, inputs, outputs, dead letters); the API
//!   may create `file://` actions only when the operator allows it (`--allow-api-file-actions`,
//!   which needs `--action-dir`). A path with `..`, a relative path, a link and anything that
//!   is not a plain file are refused.
//! - `http(s)://` and `kafka://` hosts must match the allow-list (`--action-hosts`). Its
//!   default, `*`, is every host except link-local and unspecified addresses (the cloud
//!   metadata service at 169.254.169.254 is the classic target of a forged webhook), because
//!   Aodh's own users (Heat autoscaling, Senlin, Zaqar) register webhooks on control-plane
//!   hosts the engine cannot know in advance. An operator whose API tenants are not trusted
//!   lists the receivers' hosts or networks.
//!
//! The same check runs when a definition is loaded, when the API creates or changes an alarm
//! (a refusal is a 400 naming the rule) and again before each delivery (alarms stored by an
//! earlier run under other rules are dead-lettered, not delivered).

use std::net::IpAddr;
use std::path::{Component, Path, PathBuf};

/// Who asked for an action: the operator's definition files, or the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActionSource {
    /// A definition file given on the command line.
    Definition,
    /// An alarm created or changed through the HTTP API.
    Api,
}

/// One entry of the host allow-list.
#[derive(Clone, Debug, PartialEq, Eq)]
enum HostRule {
    /// `*`: every host but link-local and unspecified addresses.
    Any,
    /// `name` or `name:port`, case-insensitive.
    Exact { host: String, port: Option<u16> },
    /// `*.domain`: every name ending in `.domain`.
    Suffix(String),
    /// `10.0.0.0/8`: every address in the network.
    Network(ipnet::IpNet),
}

/// The operator's rules for alarm actions (see the module doc).
#[derive(Clone, Debug)]
pub struct ActionPolicy {
    dir: Option<PathBuf>,
    api_files: bool,
    hosts: Vec<HostRule>,
    protected: Vec<PathBuf>,
}

impl Default for ActionPolicy {
    fn default() -> Self {
        ActionPolicy {
            dir: None,
            api_files: false,
            hosts: vec![HostRule::Any],
            protected: Vec::new(),
        }
    }
}

impl ActionPolicy {
    /// Rules from the command line: the notification directory, whether the API may create
    /// `file://` actions, and the host allow-list (comma-separated `*`, `host`, `host:port`,
    /// `*.domain`, `10.0.0.0/8`; empty: no host at all).
    pub fn new(dir: Option<&Path>, api_files: bool, hosts: &str) -> Result<ActionPolicy, String> {
        if api_files && dir.is_none() {
            return Err("--allow-api-file-actions needs --action-dir DIR: file:// actions created through the API are confined to that directory".into());
        }
        let dir = match dir {
            None => None,
            Some(d) => {
                std::fs::create_dir_all(d)
                    .map_err(|e| format!("cannot create the --action-dir {}: {e}", d.display()))?;
                Some(
                    d.canonicalize().map_err(|e| {
                        format!("cannot resolve the --action-dir {}: {e}", d.display())
                    })?,
                )
            }
        };
        let hosts = hosts
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(parse_host_rule)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ActionPolicy {
            dir,
            api_files,
            hosts,
            protected: Vec::new(),
        })
    }

    /// Adds paths the engine keeps (directories or files) that no `file://` action may touch.
    pub fn protect(mut self, paths: impl IntoIterator<Item = PathBuf>) -> ActionPolicy {
        for p in paths {
            let p = resolve(&p).unwrap_or(p);
            if !self.protected.contains(&p) {
                self.protected.push(p);
            }
        }
        self
    }

    /// Whether `url` may be carried out when asked for by `source`; the error names the rule
    /// and the flag that changes it.
    pub fn check(&self, url: &str, source: ActionSource) -> Result<(), String> {
        let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
        match scheme {
            "log" => Ok(()),
            "file" => self.check_file(rest.split('?').next().unwrap_or(rest), source),
            "http" | "https" => {
                let parsed = reqwest::Url::parse(url)
                    .map_err(|e| format!("action {url} is not a valid URL: {e}"))?;
                let host = parsed
                    .host_str()
                    .ok_or_else(|| format!("action {url} names no host"))?;
                let host = host.trim_start_matches('[').trim_end_matches(']');
                self.check_host(url, host, parsed.port_or_known_default())
            }
            "kafka" => {
                let brokers = rest.split('/').next().unwrap_or_default();
                if brokers.is_empty() {
                    return Err(format!(
                        "action {url} names no broker; write kafka://HOST:PORT/TOPIC"
                    ));
                }
                for broker in brokers.split(',') {
                    let (host, port) = split_host_port(broker);
                    self.check_host(url, host, port)?;
                }
                Ok(())
            }
            other => Err(format!("action {url}: no notifier for scheme {other:?}")),
        }
    }

    fn check_host(&self, url: &str, host: &str, port: Option<u16>) -> Result<(), String> {
        let host = host.to_ascii_lowercase();
        let ip: Option<IpAddr> = host.parse().ok();
        let allowed = self.hosts.iter().any(|rule| match rule {
            HostRule::Any => !ip.is_some_and(|ip| never_by_default(&ip)),
            HostRule::Exact { host: h, port: p } => *h == host && p.is_none_or(|p| Some(p) == port),
            HostRule::Suffix(s) => host.ends_with(s.as_str()),
            HostRule::Network(net) => ip.is_some_and(|ip| net.contains(&ip)),
        });
        if allowed {
            return Ok(());
        }
        let why = if self.hosts.contains(&HostRule::Any) {
            "link-local and unspecified addresses (such as the metadata service 169.254.169.254) are refused unless --action-hosts names them"
        } else {
            "it is not in --action-hosts"
        };
        Err(format!(
            "action {url}: host {host} is not allowed: {why}; the operator can add it to --action-hosts (e.g. --action-hosts '{host},*.example.com,10.0.0.0/8')"
        ))
    }

    fn check_file(&self, path: &str, source: ActionSource) -> Result<(), String> {
        let shown = format!("file://{path}");
        let path = Path::new(path);
        if !path.is_absolute() {
            return Err(format!(
                "action {shown}: a file action needs an absolute path, e.g. file:///var/lib/meterflow/actions/alarms.jsonl"
            ));
        }
        if path.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(format!(
                "action {shown}: a file action's path may not contain .."
            ));
        }
        if source == ActionSource::Api && !self.api_files {
            return Err(format!(
                "action {shown}: file:// actions cannot be created through the API unless the operator starts meterflow with --action-dir DIR --allow-api-file-actions; use http(s):// or kafka://, or put the alarm in a definition file"
            ));
        }
        let resolved = resolve(path).ok_or_else(|| {
            format!("action {shown}: its directory does not exist; create it first")
        })?;
        match std::fs::symlink_metadata(&resolved) {
            Ok(m) if !m.file_type().is_file() => {
                return Err(format!(
                    "action {shown}: it exists and is not a plain file (a link, a directory, a device or a FIFO)"
                ))
            }
            _ => {}
        }
        if let Some(dir) = &self.dir {
            if !resolved.starts_with(dir) {
                return Err(format!(
                    "action {shown}: file actions are confined to the --action-dir {}; write the file there",
                    dir.display()
                ));
            }
        }
        if let Some(p) = self.protected.iter().find(|p| resolved.starts_with(p)) {
            return Err(format!(
                "action {shown}: {} is the engine's own (store, state, input or output); a file action may never write there",
                p.display()
            ));
        }
        Ok(())
    }
}

/// The path with its directory's links resolved (the file itself need not exist); `None`
/// when the directory does not exist.
fn resolve(path: &Path) -> Option<PathBuf> {
    if let Ok(p) = path.canonicalize() {
        return Some(p);
    }
    let parent = path.parent()?.canonicalize().ok()?;
    Some(parent.join(path.file_name()?))
}

/// Addresses `*` leaves out: link-local (metadata services) and unspecified.
fn never_by_default(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local() || v4.is_unspecified(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80 || v6.is_unspecified(),
    }
}

/// `host:port`, `[v6]:port` or a bare host.
fn split_host_port(text: &str) -> (&str, Option<u16>) {
    if let Some(rest) = text.strip_prefix('[') {
        if let Some((host, tail)) = rest.split_once(']') {
            return (host, tail.strip_prefix(':').and_then(|p| p.parse().ok()));
        }
    }
    match text.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => (host, port.parse().ok()),
        _ => (text, None),
    }
}

fn parse_host_rule(text: &str) -> Result<HostRule, String> {
    if text == "*" {
        return Ok(HostRule::Any);
    }
    if let Some(domain) = text.strip_prefix("*.") {
        return Ok(HostRule::Suffix(format!(
            ".{}",
            domain.to_ascii_lowercase()
        )));
    }
    if text.contains('/') {
        return text
            .parse::<ipnet::IpNet>()
            .map(HostRule::Network)
            .map_err(|e| format!("--action-hosts {text:?}: {e}; write a network like 10.0.0.0/8"));
    }
    let (host, port) = split_host_port(text);
    if host.is_empty()
        || text.ends_with(':')
        || (text.contains(':') && port.is_none() && host.parse::<IpAddr>().is_err())
    {
        return Err(format!(
            "--action-hosts {text:?}: write a host, host:port, *.domain, a network like 10.0.0.0/8, or *"
        ));
    }
    Ok(HostRule::Exact {
        host: host.to_ascii_lowercase(),
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_follow_the_allow_list() {
        let any = ActionPolicy::default();
        assert!(any
            .check("http://heat.internal:8004/hook", ActionSource::Api)
            .is_ok());
        assert!(any.check("https://[::1]/x", ActionSource::Api).is_ok());
        let meta = any
            .check("http://169.254.169.254/latest/meta-data", ActionSource::Api)
            .unwrap_err();
        assert!(meta.contains("link-local"), "{meta}");
        assert!(any
            .check("kafka://0.0.0.0:9092/t", ActionSource::Api)
            .is_err());

        let listed = ActionPolicy::new(
            None,
            false,
            "hooks.example.com:8080, *.corp.local,10.1.0.0/16",
        )
        .unwrap();
        assert!(listed
            .check("http://hooks.example.com:8080/a", ActionSource::Api)
            .is_ok());
        assert!(listed
            .check("http://HOOKS.example.com:8081/a", ActionSource::Api)
            .is_err());
        assert!(listed
            .check("https://a.b.corp.local/a", ActionSource::Api)
            .is_ok());
        assert!(listed
            .check("http://corp.local.evil.com/a", ActionSource::Api)
            .is_err());
        assert!(listed
            .check("kafka://10.1.2.3:9092,10.1.9.9:9092/t", ActionSource::Api)
            .is_ok());
        let second = listed
            .check("kafka://10.1.2.3:9092,10.2.0.1:9092/t", ActionSource::Api)
            .unwrap_err();
        assert!(
            second.contains("10.2.0.1") && second.contains("--action-hosts"),
            "{second}"
        );
        assert!(listed
            .check("http://user@evil.com@10.1.0.1/", ActionSource::Api)
            .is_ok());
        assert!(listed
            .check("http://10.1.0.1@evil.com/", ActionSource::Api)
            .is_err());

        let none = ActionPolicy::new(None, false, "").unwrap();
        assert!(none
            .check("http://127.0.0.1/", ActionSource::Definition)
            .is_err());
        assert!(none.check("log://", ActionSource::Api).is_ok());
        assert!(ActionPolicy::new(None, false, "10.0.0.0/33").is_err());
        assert!(ActionPolicy::new(None, true, "*").is_err());
    }

    #[test]
    fn files_stay_in_the_action_dir_and_out_of_the_engines_own() {
        let tmp = tempfile::tempdir().unwrap();
        let store = tmp.path().join("store");
        std::fs::create_dir_all(store.join("metrics")).unwrap();
        let free = ActionPolicy::default().protect([store.clone()]);
        let url = |p: &Path| format!("file://{}", p.display());
        let out = tmp.path().join("alarms.jsonl");
        assert!(free.check(&url(&out), ActionSource::Definition).is_ok());
        let api = free.check(&url(&out), ActionSource::Api).unwrap_err();
        assert!(api.contains("--allow-api-file-actions"), "{api}");
        let own = free
            .check(
                &url(&store.join("metrics/g1-p0of1.parquet")),
                ActionSource::Definition,
            )
            .unwrap_err();
        assert!(own.contains("engine's own"), "{own}");
        let dotted = tmp.path().join("x/../store/metrics/a");
        assert!(free.check(&url(&dotted), ActionSource::Definition).is_err());
        assert!(free
            .check("file://relative.jsonl", ActionSource::Definition)
            .is_err());
        assert!(free
            .check(
                &url(&tmp.path().join("missing/a.jsonl")),
                ActionSource::Definition
            )
            .is_err());

        let dir = tmp.path().join("actions");
        let confined = ActionPolicy::new(Some(&dir), true, "*")
            .unwrap()
            .protect([store.clone()]);
        assert!(confined
            .check(&url(&dir.join("a.jsonl")), ActionSource::Api)
            .is_ok());
        let outside = confined
            .check(&url(&out), ActionSource::Definition)
            .unwrap_err();
        assert!(outside.contains("--action-dir"), "{outside}");
        // A link inside the directory to the store is followed and refused.
        std::os::unix::fs::symlink(&store, dir.join("sneaky")).unwrap();
        assert!(confined
            .check(
                &url(&dir.join("sneaky/metrics/x.parquet")),
                ActionSource::Api
            )
            .is_err());
        std::os::unix::fs::symlink(store.join("metrics"), dir.join("link.jsonl")).unwrap();
        assert!(confined
            .check(&url(&dir.join("link.jsonl")), ActionSource::Api)
            .is_err());
        // A FIFO or a device is never a target.
        assert!(free
            .check("file:///dev/zero", ActionSource::Definition)
            .is_err());
    }
}
