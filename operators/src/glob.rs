//! Ceilometer's name selection: names, fnmatch wildcards and `!` exclusions, as sources pick
//! meters, event definitions pick event types and Aodh's event rules match them.

use regex::Regex;

/// One fnmatch pattern, compiled.
#[derive(Clone, Debug)]
pub enum Glob {
    /// `*`.
    Any,
    /// No wildcard.
    Exact(String),
    /// The translated pattern.
    Pattern(Regex),
}

impl Glob {
    /// Compiles `text` (`*`, `?`, `[seq]`, `[!seq]`; anything else literal).
    pub fn new(text: &str) -> Glob {
        if text == "*" {
            Glob::Any
        } else if text.contains(['*', '?', '[']) {
            Glob::Pattern(Regex::new(&fnmatch_to_regex(text)).unwrap_or_else(|_| {
                Regex::new(&format!("^{}$", regex::escape(text))).expect("escaped")
            }))
        } else {
            Glob::Exact(text.to_owned())
        }
    }

    /// Whether `name` matches, as Python's `fnmatch.fnmatchcase`.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            Glob::Any => true,
            Glob::Exact(e) => e == name,
            Glob::Pattern(re) => re.is_match(name),
        }
    }
}

/// Python's `fnmatch.translate`: `*`, `?`, `[seq]`, `[!seq]`, anchored, case-sensitive.
fn fnmatch_to_regex(pattern: &str) -> String {
    let mut out = String::from("^");
    let chars: Vec<char> = pattern.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '*' => out.push_str(".*"),
            '?' => out.push('.'),
            '[' => {
                let mut j = i + 1;
                if j < chars.len() && chars[j] == '!' {
                    j += 1;
                }
                if j < chars.len() && chars[j] == ']' {
                    j += 1;
                }
                while j < chars.len() && chars[j] != ']' {
                    j += 1;
                }
                if j >= chars.len() {
                    out.push_str("\\[");
                } else {
                    let mut class: String = chars[i + 1..j].iter().collect();
                    if let Some(rest) = class.strip_prefix('!') {
                        class = format!("^{rest}");
                    }
                    out.push('[');
                    out.push_str(&class.replace('\\', "\\\\"));
                    out.push(']');
                    i = j;
                }
            }
            c => out.push_str(&regex::escape(&c.to_string())),
        }
        i += 1;
    }
    out.push('$');
    out
}

/// A list of patterns with `!` exclusions (a source's `meters`, an event definition's
/// `event_type`): accepts a name when no exclusion matches it and some inclusion does, or when
/// the list holds only exclusions.
#[derive(Clone, Debug)]
pub struct MeterMatcher {
    include: Vec<Glob>,
    exclude: Vec<Glob>,
}

impl MeterMatcher {
    /// Compiles a validated `meters` list.
    ///
    /// # Examples
    /// ```
    /// use meterflow_operators::glob::MeterMatcher;
    /// let m = MeterMatcher::new(&["*".into(), "!cpu".into()]);
    /// assert!(m.accepts("memory") && !m.accepts("cpu"));
    /// let m = MeterMatcher::new(&["cpu".into(), "disk.*".into()]);
    /// assert!(m.accepts("disk.read.bytes") && !m.accepts("memory"));
    /// assert!(MeterMatcher::new(&["!cpu".into()]).accepts("memory"));
    /// ```
    pub fn new(meters: &[String]) -> MeterMatcher {
        let mut include = Vec::new();
        let mut exclude = Vec::new();
        for m in meters {
            match m.strip_prefix('!') {
                Some(rest) => exclude.push(Glob::new(rest)),
                None => include.push(Glob::new(m)),
            }
        }
        MeterMatcher { include, exclude }
    }

    /// Whether `name` is accepted.
    pub fn accepts(&self, name: &str) -> bool {
        if self.exclude.iter().any(|p| p.matches(name)) {
            return false;
        }
        self.include.is_empty() || self.include.iter().any(|p| p.matches(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnmatch_semantics() {
        let m = |p: &str, n: &str| MeterMatcher::new(&[p.to_owned()]).accepts(n);
        assert!(m("storage.*", "storage.objects.outgoing.bytes"));
        assert!(!m("storage.*", "storagex"));
        assert!(m("disk.?.bytes", "disk.r.bytes"));
        assert!(m("cpu[_.]util", "cpu_util"));
        assert!(!m("cpu[!_]util", "cpu_util"));
        assert!(m("a.b", "a.b") && !m("a.b", "axb"));
        assert!(!m("CPU", "cpu"));
    }
}
