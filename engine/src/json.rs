//! Allocation-free member lookup in raw JSON text (for `resource_metadata.x.y` in expressions).

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// The value found at a path in a JSON document.
#[derive(Clone, Debug, PartialEq)]
pub enum Lookup<'a> {
    /// No member at that path (Ceilometer's empty, false-y namespace).
    Missing,
    /// JSON `null`.
    Null,
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float (or an integer too large for `i64`).
    Float(f64),
    /// A string.
    Str(Cow<'a, str>),
    /// An object; `empty` tells whether it has members.
    Object {
        /// Whether the object has no members.
        empty: bool,
    },
    /// An array; `empty` tells whether it has elements.
    Array {
        /// Whether the array has no elements.
        empty: bool,
    },
}

/// Looks up `path` (member names, outermost first) in `json`; [`Lookup::Missing`] when any step
/// is absent, is not an object, or the text is not JSON.
///
/// # Examples
/// ```
/// use meterflow_engine::json::{lookup, Lookup};
/// let md = r#"{"flavor": {"name": "m1.small", "ram": 512}, "cpu_number": 2}"#;
/// assert_eq!(lookup(md, &["cpu_number"]), Lookup::Int(2));
/// assert_eq!(lookup(md, &["flavor", "ram"]), Lookup::Int(512));
/// assert_eq!(lookup(md, &["flavor", "disk"]), Lookup::Missing);
/// ```
pub fn lookup<'a, S: AsRef<str>>(json: &'a str, path: &[S]) -> Lookup<'a> {
    let mut de = serde_json::Deserializer::from_str(json);
    PathSeed { path }
        .deserialize(&mut de)
        .unwrap_or(Lookup::Missing)
}

struct PathSeed<'p, S> {
    path: &'p [S],
}

impl<'de, S: AsRef<str>> DeserializeSeed<'de> for PathSeed<'_, S> {
    type Value = Lookup<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, S: AsRef<str>> Visitor<'de> for PathSeed<'_, S> {
    type Value = Lookup<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(self.leaf(Lookup::Bool(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(self.leaf(Lookup::Int(v)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(self.leaf(i64::try_from(v).map_or(Lookup::Float(v as f64), Lookup::Int)))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(self.leaf(Lookup::Float(v)))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(self.leaf(Lookup::Str(Cow::Borrowed(v))))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(self.leaf(Lookup::Str(Cow::Owned(v.to_owned()))))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(self.leaf(Lookup::Null))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut empty = true;
        while seq.next_element::<IgnoredAny>()?.is_some() {
            empty = false;
        }
        Ok(self.leaf(Lookup::Array { empty }))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let Some((first, rest)) = self.path.split_first() else {
            let empty = map.next_entry::<IgnoredAny, IgnoredAny>()?.is_none();
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            return Ok(Lookup::Object { empty });
        };
        let mut found = Lookup::Missing;
        while let Some(hit) = map.next_key_seed(KeyIs(first.as_ref()))? {
            if hit && found == Lookup::Missing {
                found = map.next_value_seed(PathSeed { path: rest })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

impl<S> PathSeed<'_, S> {
    fn leaf<'a>(&self, value: Lookup<'a>) -> Lookup<'a> {
        if self.path.is_empty() {
            value
        } else {
            Lookup::Missing
        }
    }
}

/// Deserialises a map key into "is it this name?" without allocating.
struct KeyIs<'k>(&'k str);

impl<'de> DeserializeSeed<'de> for KeyIs<'_> {
    type Value = bool;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyIs<'_> {
    type Value = bool;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a member name")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
        Ok(v == self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_values_of_every_kind() {
        let md = r#"{"a": null, "b": true, "c": 1.5, "d": "x\"y", "e": {}, "f": [1], "g": 18446744073709551615}"#;
        assert_eq!(lookup(md, &["a"]), Lookup::Null);
        assert_eq!(lookup(md, &["b"]), Lookup::Bool(true));
        assert_eq!(lookup(md, &["c"]), Lookup::Float(1.5));
        assert_eq!(lookup(md, &["d"]), Lookup::Str("x\"y".into()));
        assert_eq!(lookup(md, &["e"]), Lookup::Object { empty: true });
        assert_eq!(lookup(md, &["f"]), Lookup::Array { empty: false });
        assert_eq!(lookup(md, &["g"]), Lookup::Float(18446744073709551615.0));
        assert_eq!(lookup(md, &["b", "x"]), Lookup::Missing);
        assert_eq!(lookup("not json", &["a"]), Lookup::Missing);
    }
}
