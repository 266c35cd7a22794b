//! Label and field selectors, with the grammar of k8s.io/apimachinery's `labels` and `fields`.

use std::collections::BTreeMap;

use serde_json::Value;

#[derive(Clone, Debug, PartialEq)]
enum LabelOp {
    Exists,
    NotExists,
    Equals(String),
    NotEquals(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Gt(i64),
    Lt(i64),
}

#[derive(Clone, Debug, PartialEq)]
struct Requirement {
    key: String,
    op: LabelOp,
}

/// A parsed `labelSelector`; empty matches everything.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
}

fn valid_value(v: &str) -> bool {
    v.len() <= 63
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

fn valid_key(k: &str) -> bool {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-.".contains(c))
    });
    prefix_ok
        && !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// Splits on commas that are not inside parentheses.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn parse_set(rest: &str) -> Result<Vec<String>, String> {
    let rest = rest.trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| format!("found '{rest}', expected: '(' ... ')'"))?;
    let values: Vec<String> = inner
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect();
    if let Some(bad) = values.iter().find(|v| !valid_value(v)) {
        return Err(format!("invalid label value: {bad:?}"));
    }
    Ok(values)
}

impl LabelSelector {
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut requirements = Vec::new();
        if s.trim().is_empty() {
            return Ok(Self { requirements });
        }
        for part in split_top_level(s) {
            let part = part.trim();
            if part.is_empty() {
                return Err(format!("found '', expected: identifier in {s:?}"));
            }
            let req = if let Some(key) = part.strip_prefix('!') {
                Requirement {
                    key: key.trim().to_string(),
                    op: LabelOp::NotExists,
                }
            } else if let Some((key, value)) = part.split_once("!=") {
                Requirement {
                    key: key.trim().into(),
                    op: LabelOp::NotEquals(value.trim().into()),
                }
            } else if let Some((key, value)) = part.split_once("==") {
                Requirement {
                    key: key.trim().into(),
                    op: LabelOp::Equals(value.trim().into()),
                }
            } else if let Some((key, value)) = part.split_once('=') {
                Requirement {
                    key: key.trim().into(),
                    op: LabelOp::Equals(value.trim().into()),
                }
            } else if let Some((key, value)) = part.split_once('>') {
                let n = value
                    .trim()
                    .parse()
                    .map_err(|_| format!("invalid integer {value:?}"))?;
                Requirement {
                    key: key.trim().into(),
                    op: LabelOp::Gt(n),
                }
            } else if let Some((key, value)) = part.split_once('<') {
                let n = value
                    .trim()
                    .parse()
                    .map_err(|_| format!("invalid integer {value:?}"))?;
                Requirement {
                    key: key.trim().into(),
                    op: LabelOp::Lt(n),
                }
            } else {
                let mut words = part.splitn(2, char::is_whitespace);
                let key = words.next().unwrap_or_default().trim().to_string();
                let rest = words.next().unwrap_or_default().trim();
                if rest.is_empty() {
                    Requirement {
                        key,
                        op: LabelOp::Exists,
                    }
                } else if let Some(set) = rest.strip_prefix("notin") {
                    Requirement {
                        key,
                        op: LabelOp::NotIn(parse_set(set)?),
                    }
                } else if let Some(set) = rest.strip_prefix("in") {
                    Requirement {
                        key,
                        op: LabelOp::In(parse_set(set)?),
                    }
                } else {
                    return Err(format!("unable to parse requirement: {part:?}"));
                }
            };
            if !valid_key(&req.key) {
                return Err(format!("invalid label key {:?}", req.key));
            }
            if let LabelOp::Equals(v) | LabelOp::NotEquals(v) = &req.op {
                if !valid_value(v) {
                    return Err(format!("invalid label value: {v:?}"));
                }
            }
            requirements.push(req);
        }
        Ok(Self { requirements })
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| {
            let v = labels.get(&r.key);
            match &r.op {
                LabelOp::Exists => v.is_some(),
                LabelOp::NotExists => v.is_none(),
                LabelOp::Equals(want) => v == Some(want),
                LabelOp::NotEquals(want) => v != Some(want),
                LabelOp::In(set) => v.is_some_and(|v| set.contains(v)),
                LabelOp::NotIn(set) => v.is_none_or(|v| !set.contains(v)),
                LabelOp::Gt(n) => v
                    .and_then(|v| v.parse::<i64>().ok())
                    .is_some_and(|v| v > *n),
                LabelOp::Lt(n) => v
                    .and_then(|v| v.parse::<i64>().ok())
                    .is_some_and(|v| v < *n),
            }
        })
    }
}

/// A parsed `fieldSelector`: `field=value`, `field==value`, `field!=value`, comma-separated.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FieldSelector {
    /// (field path without leading dot, wanted value, equal?)
    terms: Vec<(String, String, bool)>,
}

/// Undoes the `\` escaping of `\,`, `\=` and `\\` in field selector values.
fn unescape(v: &str) -> String {
    let mut out = String::new();
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Splits on `sep` not preceded by a backslash.
fn split_unescaped(s: &str, sep: char) -> Vec<String> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut escaped = false;
    for c in s.chars() {
        if escaped {
            cur.push('\\');
            cur.push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            parts.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    parts.push(cur);
    parts
}

impl FieldSelector {
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut terms = Vec::new();
        if s.trim().is_empty() {
            return Ok(Self { terms });
        }
        for part in split_unescaped(s, ',') {
            let (field, value, eq) = if let Some((f, v)) = part.split_once("!=") {
                (f, v, false)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, v, true)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, v, true)
            } else {
                return Err(format!(
                    "invalid selector: '{part}'; can't understand '{part}'"
                ));
            };
            terms.push((
                field.trim().trim_start_matches('.').to_string(),
                unescape(value),
                eq,
            ));
        }
        Ok(Self { terms })
    }

    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.terms.iter().map(|(f, _, _)| f.as_str())
    }

    /// True if every term holds; `lookup` renders a field's value ("" when missing).
    pub fn matches(&self, lookup: impl Fn(&str) -> String) -> bool {
        self.terms
            .iter()
            .all(|(f, want, eq)| (lookup(f) == *want) == *eq)
    }

    /// The name this selector pins with `metadata.name=`, if any.
    pub fn pinned_name(&self) -> Option<&str> {
        self.terms
            .iter()
            .find(|(f, _, eq)| f == "metadata.name" && *eq)
            .map(|(_, v, _)| v.as_str())
    }

    /// The first `field=value` term: every object this selector matches has that value.
    pub fn first_equality(&self) -> Option<(&str, &str)> {
        self.terms
            .iter()
            .find(|(_, _, eq)| *eq)
            .map(|(f, v, _)| (f.as_str(), v.as_str()))
    }

    pub fn add_name(&mut self, name: &str) {
        self.terms.push(("metadata.name".into(), name.into(), true));
    }
}

/// Renders a field of an object like upstream's `fmt.Sprint` of the value: strings as they are,
/// numbers and booleans in their JSON form, missing as "". The cache reads fields without
/// decoding the object ([`crate::cached::Cached::field`]); this is what it must agree with.
#[cfg(test)]
pub(crate) fn field_value(obj: &Value, path: &str) -> String {
    let mut cur = obj;
    for seg in path.split('.') {
        cur = &cur[seg];
    }
    render_field(cur)
}

/// One field's value as [`field_value`] renders it.
pub fn render_field(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn label_selector_grammar() {
        let l = labels(&[("app", "web"), ("tier", "front"), ("n", "5")]);
        let cases = [
            ("", true),
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("app", true),
            ("!app", false),
            ("!missing", true),
            ("app in (web, db)", true),
            ("app notin (web,db)", false),
            ("missing notin (x)", true),
            ("app=web,tier=front", true),
            ("app=web,tier=back", false),
            ("n>3", true),
            ("n<3", false),
            ("strata.io/zone", false),
        ];
        for (sel, want) in cases {
            let s = LabelSelector::parse(sel).unwrap_or_else(|e| panic!("{sel}: {e}"));
            assert_eq!(s.matches(&l), want, "{sel}");
        }
        assert!(LabelSelector::parse("app in web").is_err());
        assert!(LabelSelector::parse("bad key=x").is_err());
        assert!(LabelSelector::parse("a=b,").is_err());
    }

    #[test]
    fn field_selector_grammar_and_values() {
        let obj =
            json!({"metadata": {"name": "a,b"}, "spec": {"host": "h1", "cpu": 2, "on": true}});
        let get = |f: &str| field_value(&obj, f);
        assert!(FieldSelector::parse("spec.host=h1")
            .expect("parse")
            .matches(get));
        assert!(FieldSelector::parse("spec.host==h1,spec.cpu=2")
            .expect("parse")
            .matches(get));
        assert!(!FieldSelector::parse("spec.host!=h1")
            .expect("parse")
            .matches(get));
        assert!(FieldSelector::parse("metadata.name=a\\,b")
            .expect("parse")
            .matches(get));
        assert!(FieldSelector::parse("spec.on=true,spec.missing=")
            .expect("parse")
            .matches(get));
        assert!(FieldSelector::parse("nonsense").is_err());
        let s = FieldSelector::parse("metadata.name=x").expect("parse");
        assert_eq!(s.pinned_name(), Some("x"));
    }
}
