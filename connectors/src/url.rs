//! Minimal URL parsing for publisher and input URLs (`scheme://target?key=value&...`).

/// A parsed `scheme://target?options` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Url {
    /// The scheme, lower case.
    pub scheme: String,
    /// Everything between `://` and `?` (a host, a path, or both).
    pub target: String,
    /// Query options in order.
    pub options: Vec<(String, String)>,
}

impl Url {
    /// Parses `text`; a text without `://` is taken as `text://` (Ceilometer's rule).
    pub fn parse(text: &str) -> Result<Url, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("empty URL".into());
        }
        let (scheme, rest) = text.split_once("://").unwrap_or((text, ""));
        if scheme.is_empty()
            || !scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        {
            return Err(format!(
                "{text:?} does not start with a scheme like file:// or kafka://"
            ));
        }
        let (target, query) = rest.split_once('?').unwrap_or((rest, ""));
        let options = query
            .split('&')
            .filter(|kv| !kv.is_empty())
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (k.to_owned(), v.to_owned())
            })
            .collect();
        Ok(Url {
            scheme: scheme.to_ascii_lowercase(),
            target: target.to_owned(),
            options,
        })
    }

    /// The value of option `key`, if given.
    pub fn option(&self, key: &str) -> Option<&str> {
        self.options
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// A boolean option: absent, `false`, `0` → false; `true`, `1` or a bare `key` → true.
    pub fn flag(&self, key: &str) -> Result<bool, String> {
        match self.option(key) {
            None | Some("false") | Some("0") => Ok(false),
            Some("true") | Some("1") | Some("") => Ok(true),
            Some(other) => Err(format!(
                "{}://: {key}={other:?}: use true or false",
                self.scheme
            )),
        }
    }

    /// Errors on any option not in `known`, listing the known ones.
    pub fn reject_options(&self, known: &[&str]) -> Result<(), String> {
        for (k, _) in &self.options {
            if !known.contains(&k.as_str()) {
                let list = if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                };
                return Err(format!(
                    "unknown option {k:?} for {}:// (known: {list})",
                    self.scheme
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_paths_and_options() {
        let u = Url::parse("file:///tmp/a.jsonl?max_bytes=10&backup_count=2").unwrap();
        assert_eq!(u.target, "/tmp/a.jsonl");
        assert_eq!(u.option("backup_count"), Some("2"));
        assert_eq!(Url::parse("file://rel/out").unwrap().target, "rel/out");
        assert_eq!(Url::parse("gnocchi").unwrap().scheme, "gnocchi");
        assert!(Url::parse("").is_err());
        assert!(Url::parse("/abs/path").is_err());
        let u = Url::parse("x://t?a&b=false&c=maybe").unwrap();
        assert_eq!(
            (u.flag("a"), u.flag("b"), u.flag("none")),
            (Ok(true), Ok(false), Ok(false))
        );
        assert!(u.flag("c").unwrap_err().contains("use true or false"));
    }
}
