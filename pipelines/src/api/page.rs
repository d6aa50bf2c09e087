//! Pagination as Gnocchi's and Aodh's APIs have it: `limit` (at most [`MAX_LIMIT`], which is
//! also the default, so no list is ever unbounded), `marker` (the id of the previous page's
//! last item) and `sort` (`KEY[:asc|desc]`, repeated; the id breaks ties, so pages stay
//! stable); a full page carries `Link: <...&marker=ID>; rel="next"`.

use std::cmp::Ordering;

use axum::http::{header, HeaderValue, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;

/// The most items one page holds (Gnocchi's `max_limit` default).
pub const MAX_LIMIT: usize = 1000;

/// One page's request.
#[derive(Debug)]
pub struct Page {
    limit: usize,
    marker: Option<String>,
    /// (key, descending), most significant first.
    sort: Vec<(String, bool)>,
}

impl Page {
    /// Reads `limit` and `marker` from the query; the error says what to give.
    pub fn from_query(pairs: &[(String, String)]) -> Result<Page, String> {
        let mut page = Page {
            limit: MAX_LIMIT,
            marker: None,
            sort: Vec::new(),
        };
        for (key, value) in pairs {
            match key.as_str() {
                "limit" => {
                    page.limit = value
                        .trim()
                        .parse::<usize>()
                        .ok()
                        .filter(|&l| l >= 1)
                        .ok_or_else(|| {
                            format!("Invalid value for limit: {value:?}; give a whole number from 1 to {MAX_LIMIT}")
                        })?
                        .min(MAX_LIMIT);
                }
                "marker" => page.marker = Some(value.clone()),
                "sort" => {
                    for key in value.split(',').map(str::trim).filter(|k| !k.is_empty()) {
                        let (key, direction) = key.split_once(':').unwrap_or((key, "asc"));
                        let descending = match direction {
                            "asc" => false,
                            "desc" => true,
                            other => {
                                return Err(format!(
                                    "Invalid sort direction {other:?} for {key}: give asc or desc"
                                ))
                            }
                        };
                        page.sort.push((key.to_owned(), descending));
                    }
                }
                _ => {}
            }
        }
        Ok(page)
    }

    /// This page of `items` (each with its id, in a stable order), and the next page's
    /// marker when there may be more.
    pub fn take(
        &self,
        mut items: Vec<(String, Value)>,
    ) -> Result<(Vec<Value>, Option<String>), String> {
        if !self.sort.is_empty() {
            items.sort_by(|(a_id, a), (b_id, b)| {
                self.sort
                    .iter()
                    .map(|(key, descending)| {
                        let o = json_order(a.get(key), b.get(key));
                        if *descending {
                            o.reverse()
                        } else {
                            o
                        }
                    })
                    .find(|o| o.is_ne())
                    .unwrap_or_else(|| a_id.cmp(b_id))
            });
        }
        let start = match &self.marker {
            None => 0,
            Some(marker) => {
                items
                    .iter()
                    .position(|(id, _)| id == marker)
                    .ok_or_else(|| format!("Invalid marker: `{marker}`: no item has this id; give the id of the last item of the previous page"))?
                    + 1
            }
        };
        let more = items.len().saturating_sub(start) > self.limit;
        let page: Vec<(String, Value)> = items.into_iter().skip(start).take(self.limit).collect();
        let next = more
            .then(|| page.last().map(|(id, _)| id.clone()))
            .flatten();
        Ok((page.into_iter().map(|(_, v)| v).collect(), next))
    }

    /// This page of `items` as a JSON list, with the next page's `Link` when there may be
    /// more (`uri` is the request's); the error is the 400's text.
    pub fn respond(&self, items: Vec<(String, Value)>, uri: &Uri) -> Result<Response, String> {
        let (values, next) = self.take(items)?;
        let mut response = Json(Value::Array(values)).into_response();
        if let Some(link) = next.and_then(|n| next_link(uri, &n)) {
            response.headers_mut().insert(header::LINK, link);
        }
        Ok(response)
    }
}

/// The order of two JSON values for sorting: absent or null first, then numbers, text and
/// booleans each in their own order; values of different kinds by their JSON text.
pub fn json_order(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    let a = a.filter(|v| !v.is_null());
    let b = b.filter(|v| !v.is_null());
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        (Some(Value::Number(x)), Some(Value::Number(y))) => x
            .as_f64()
            .partial_cmp(&y.as_f64())
            .unwrap_or(Ordering::Equal),
        (Some(Value::String(x)), Some(Value::String(y))) => x.cmp(y),
        (Some(Value::Bool(x)), Some(Value::Bool(y))) => x.cmp(y),
        (Some(x), Some(y)) => x.to_string().cmp(&y.to_string()),
    }
}

/// The `Link` header pointing at the page after the one `uri` asked for.
fn next_link(uri: &Uri, next: &str) -> Option<HeaderValue> {
    let mut query: Vec<String> = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|kv| !kv.is_empty() && !kv.starts_with("marker="))
        .map(str::to_owned)
        .collect();
    if !query.iter().any(|kv| kv.starts_with("limit=")) {
        query.push(format!("limit={MAX_LIMIT}"));
    }
    query.push(format!("marker={}", percent_encode(next)));
    HeaderValue::from_str(&format!(
        "<{}?{}>; rel=\"next\"",
        uri.path(),
        query.join("&")
    ))
    .ok()
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_follow_markers_to_the_end() {
        let items: Vec<(String, Value)> = (0..25)
            .map(|i| (format!("id-{i:02}"), Value::from(i)))
            .collect();
        let mut seen = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let mut q = vec![("limit".to_owned(), "10".to_owned())];
            if let Some(m) = &marker {
                q.push(("marker".to_owned(), m.clone()));
            }
            let page = Page::from_query(&q).unwrap();
            let (values, next) = page.take(items.clone()).unwrap();
            seen.extend(values);
            match next {
                Some(n) => marker = Some(n),
                None => break,
            }
        }
        assert_eq!(seen, (0..25).map(Value::from).collect::<Vec<_>>());
        let query = |k: &str, v: &str| [(k.to_owned(), v.to_owned())];
        assert!(Page::from_query(&query("limit", "0")).is_err());
        assert!(Page::from_query(&query("limit", "x")).is_err());
        assert_eq!(
            Page::from_query(&query("limit", "99999")).unwrap().limit,
            MAX_LIMIT
        );
        let bad = Page::from_query(&query("marker", "nope"))
            .unwrap()
            .take(items)
            .unwrap_err();
        assert!(bad.contains("Invalid marker"), "{bad}");
        // Sorted by a field, descending, the id breaking ties; pages follow the sorted order.
        let rows: Vec<(String, Value)> = [("a", 2), ("b", 1), ("c", 2), ("d", 3)]
            .iter()
            .map(|(id, n)| ((*id).to_owned(), serde_json::json!({"id": id, "n": n})))
            .collect();
        let sorted = |q: &[(&str, &str)]| {
            let q: Vec<(String, String)> = q
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            let (values, next) = Page::from_query(&q).unwrap().take(rows.clone()).unwrap();
            let ids: Vec<String> = values
                .iter()
                .map(|v| v["id"].as_str().unwrap().to_owned())
                .collect();
            (ids, next)
        };
        assert_eq!(
            sorted(&[("sort", "n:desc"), ("limit", "3")]),
            (vec!["d".into(), "a".into(), "c".into()], Some("c".into()))
        );
        assert_eq!(sorted(&[("sort", "n:desc"), ("marker", "c")]).0, ["b"]);
        assert_eq!(sorted(&[("sort", "n")]).0, ["b", "a", "c", "d"]);
        assert!(Page::from_query(&query("sort", "n:up")).is_err());
        let uri: Uri = "/v1/metric?limit=10&marker=a&sort=id".parse().unwrap();
        assert_eq!(
            next_link(&uri, "x y").unwrap(),
            "</v1/metric?limit=10&sort=id&marker=x%20y>; rel=\"next\""
        );
    }
}
