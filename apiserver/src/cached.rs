//! One object as the watch cache holds it: the encoded JSON the store holds, plus the few
//! things selectors, the garbage collector and the encoder need, read once when it is cached.
//!
//! A decoded `serde_json::Value` tree costs about 40× its JSON (a map node and a heap string per
//! key), and most reads only copy the object out again: gets, lists and watch events are
//! answered by splicing the resourceVersion into the stored bytes, and only writes, Table and
//! metadata renderings decode the tree ([`Cached::value`]).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;

use bytes::Bytes;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::selectors::render_field;

pub struct Cached {
    /// The stored JSON: the object without `metadata.resourceVersion`.
    bytes: Bytes,
    /// The resourceVersion it is served with (for a deletion event, the deletion's revision).
    rev: u64,
    /// Where the resourceVersion goes: just inside metadata's `{`. `None` when the bytes cannot
    /// take it by splicing (no metadata object, or one that already names a resourceVersion),
    /// and serving goes through a decoded tree.
    splice_at: Option<usize>,
    /// Metadata has no keys, so the spliced member takes no comma.
    meta_empty: bool,
    api_version: Option<Box<str>>,
    labels: BTreeMap<String, String>,
    uid: Option<Box<str>>,
    owner_uids: Box<[Box<str>]>,
    /// Field values selectors asked for, rendered; selectors ask for the same few paths.
    fields: Mutex<Vec<(Box<str>, Box<str>)>>,
}

impl fmt::Debug for Cached {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cached")
            .field("rev", &self.rev)
            .field("bytes", &self.bytes.len())
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct Top<'a> {
    #[serde(rename = "apiVersion", default)]
    api_version: Option<String>,
    #[serde(borrow, default)]
    metadata: Option<&'a RawValue>,
}

#[derive(Deserialize, Default)]
struct Meta {
    #[serde(default)]
    labels: Option<BTreeMap<String, Value>>,
    #[serde(default)]
    uid: Option<String>,
    #[serde(rename = "ownerReferences", default)]
    owner_references: Option<Vec<OwnerRef>>,
    #[serde(rename = "resourceVersion", default)]
    resource_version: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct OwnerRef {
    #[serde(default)]
    uid: Option<String>,
}

impl Cached {
    /// Reads what the cache needs out of `bytes`, which must be a JSON object.
    pub fn decode(bytes: Bytes, rev: u64) -> Result<Cached, serde_json::Error> {
        let top: Top = serde_json::from_slice(&bytes)?;
        let (splice_at, meta_empty, meta) = match top.metadata {
            Some(raw) if raw.get().starts_with('{') => {
                // A type mismatch inside metadata (only possible for objects another writer
                // put into etcd) leaves the object unselectable rather than uncacheable.
                let meta: Meta = serde_json::from_str(raw.get()).unwrap_or_default();
                let open = raw.get().as_ptr() as usize - bytes.as_ptr() as usize + 1;
                let empty = raw.get()[1..].trim_start().starts_with('}');
                let at = meta.resource_version.is_none().then_some(open);
                (at, empty, meta)
            }
            _ => (None, false, Meta::default()),
        };
        Ok(Cached {
            splice_at,
            meta_empty,
            api_version: top.api_version.map(Into::into),
            labels: meta
                .labels
                .unwrap_or_default()
                .into_iter()
                .filter_map(|(k, v)| match v {
                    Value::String(s) => Some((k, s)),
                    _ => None,
                })
                .collect(),
            uid: meta.uid.map(Into::into),
            owner_uids: meta
                .owner_references
                .unwrap_or_default()
                .into_iter()
                .filter_map(|r| r.uid.map(Into::into))
                .collect(),
            fields: Mutex::new(Vec::new()),
            bytes,
            rev,
        })
    }

    /// The same object served at another revision (a deletion's), sharing the bytes.
    pub fn at(&self, rev: u64) -> Cached {
        Cached {
            bytes: self.bytes.clone(),
            rev,
            splice_at: self.splice_at,
            meta_empty: self.meta_empty,
            api_version: self.api_version.clone(),
            labels: self.labels.clone(),
            uid: self.uid.clone(),
            owner_uids: self.owner_uids.clone(),
            fields: Mutex::new(Vec::new()),
        }
    }

    pub fn rev(&self) -> u64 {
        self.rev
    }

    /// The apiVersion it was stored under.
    pub fn api_version(&self) -> Option<&str> {
        self.api_version.as_deref()
    }

    pub fn labels(&self) -> &BTreeMap<String, String> {
        &self.labels
    }

    pub fn uid(&self) -> Option<&str> {
        self.uid.as_deref()
    }

    /// The uids its ownerReferences name.
    pub fn owner_uids(&self) -> impl Iterator<Item = &str> {
        self.owner_uids.iter().map(|u| &**u)
    }

    /// The decoded object, with its resourceVersion.
    pub fn value(&self) -> Value {
        // The bytes were decoded once already, in `decode`.
        let mut obj: Value = serde_json::from_slice(&self.bytes).unwrap_or(Value::Null);
        crate::cache::set_resource_version(&mut obj, self.rev);
        obj
    }

    /// A field rendered as field selectors compare it (see [`render_field`]); `path` is
    /// dot-separated, without the leading dot.
    pub fn field(&self, path: &str) -> String {
        let mut memo = self.fields.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, v)) = memo.iter().find(|(p, _)| &**p == path) {
            return v.to_string();
        }
        let rendered = if path == "metadata.resourceVersion" {
            self.rev.to_string()
        } else {
            raw_at(&self.bytes, path)
                .and_then(|raw| serde_json::from_str::<Value>(raw.get()).ok())
                .map(|v| render_field(&v))
                .unwrap_or_default()
        };
        memo.push((path.into(), rendered.as_str().into()));
        rendered
    }

    /// Appends the object's JSON as served under `api_version` to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>, api_version: &str) {
        match self.splice_at {
            Some(at) if self.api_version.as_deref() == Some(api_version) => {
                out.reserve(self.bytes.len() + 32);
                out.extend_from_slice(&self.bytes[..at]);
                out.extend_from_slice(b"\"resourceVersion\":\"");
                out.extend_from_slice(self.rev.to_string().as_bytes());
                out.push(b'"');
                if !self.meta_empty {
                    out.push(b',');
                }
                out.extend_from_slice(&self.bytes[at..]);
            }
            _ => {
                let mut obj = self.value();
                obj["apiVersion"] = Value::String(api_version.to_string());
                // Writing a Value into a Vec cannot fail.
                let _ = serde_json::to_writer(out, &obj);
            }
        }
    }

    /// The object's JSON as served under `api_version`.
    pub fn to_json(&self, api_version: &str) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_json(&mut out, api_version);
        out
    }

    /// Size of the stored encoding.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// The raw value at a dot-separated `path` in a JSON document, skipping over everything else.
fn raw_at<'a>(json: &'a [u8], path: &str) -> Option<&'a RawValue> {
    let mut cur: &'a RawValue = serde_json::from_slice(json).ok()?;
    for key in path.split('.') {
        let mut de = serde_json::Deserializer::from_str(cur.get());
        cur = Member(key).deserialize(&mut de).ok()??;
    }
    Some(cur)
}

/// Deserializes a JSON object into just the raw value of one of its members.
struct Member<'k>(&'k str);

impl<'de> DeserializeSeed<'de> for Member<'_> {
    type Value = Option<&'de RawValue>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Member<'_> {
    type Value = Option<&'de RawValue>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(key) = map.next_key::<String>()? {
            if key == self.0 && found.is_none() {
                found = Some(map.next_value::<&'de RawValue>()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cached(v: &Value, rev: u64) -> Cached {
        Cached::decode(Bytes::from(serde_json::to_vec(v).expect("encode")), rev).expect("decode")
    }

    #[test]
    fn serves_the_stored_bytes_with_the_revision_spliced_in() {
        let obj = json!({"apiVersion": "g.io/v1", "kind": "Thing",
            "metadata": {"name": "a", "labels": {"app": "web", "n": "1"}, "uid": "u1",
                         "ownerReferences": [{"uid": "o1"}, {"uid": "o2"}]},
            "spec": {"host": "h1", "cpu": 2, "tags": ["x"], "nested": {"a.b": true}}});
        let c = cached(&obj, 42);
        let served: Value = serde_json::from_slice(&c.to_json("g.io/v1")).expect("json");
        let mut want = obj.clone();
        want["metadata"]["resourceVersion"] = json!("42");
        assert_eq!(served, want);
        assert_eq!(c.value(), want);
        let other: Value = serde_json::from_slice(&c.to_json("g.io/v2")).expect("json");
        assert_eq!(other["apiVersion"], "g.io/v2");
        assert_eq!(other["metadata"]["resourceVersion"], "42");
        let gone: Value = serde_json::from_slice(&c.at(50).to_json("g.io/v1")).expect("json");
        assert_eq!(gone["metadata"]["resourceVersion"], "50");
        assert_eq!(c.labels().get("app").map(String::as_str), Some("web"));
        assert_eq!(c.uid(), Some("u1"));
        assert_eq!(c.owner_uids().collect::<Vec<_>>(), vec!["o1", "o2"]);
    }

    #[test]
    fn fields_render_like_field_selectors_compare_them() {
        let obj = json!({"metadata": {"name": "a,b", "namespace": "ns"},
            "spec": {"host": "h1", "cpu": 2, "on": true, "list": [1], "\"q\"": "esc"}});
        let c = cached(&obj, 7);
        for path in [
            "metadata.name",
            "metadata.namespace",
            "spec.host",
            "spec.cpu",
            "spec.on",
            "spec.list",
            "spec.missing",
            "spec.host.deeper",
            "status.phase",
        ] {
            let want = crate::selectors::field_value(&obj, path);
            assert_eq!(c.field(path), want, "{path}");
            assert_eq!(c.field(path), want, "{path}, memoized");
        }
        assert_eq!(c.field("spec.\"q\""), "esc");
        assert_eq!(c.field("metadata.resourceVersion"), "7");
    }

    #[test]
    fn empty_or_odd_metadata_still_serves() {
        let empty = cached(&json!({"metadata": {}, "spec": 1}), 3);
        let v: Value = serde_json::from_slice(&empty.to_json("v1")).expect("json");
        assert_eq!(v["metadata"], json!({"resourceVersion": "3"}));
        let none = cached(&json!({"kind": "X"}), 4);
        let v: Value = serde_json::from_slice(&none.to_json("v1")).expect("json");
        assert_eq!(v, json!({"kind": "X", "apiVersion": "v1"}));
        let pretty = Cached::decode(
            Bytes::from_static(b"{ \"apiVersion\": \"v1\", \"metadata\" : { \"name\": \"p\" } }"),
            5,
        )
        .expect("decode");
        let v: Value = serde_json::from_slice(&pretty.to_json("v1")).expect("json");
        assert_eq!(v["metadata"], json!({"name": "p", "resourceVersion": "5"}));
        assert!(Cached::decode(Bytes::from_static(b"[1]"), 1).is_err());
        assert!(Cached::decode(Bytes::from_static(b"{\"a\":"), 1).is_err());
    }
}
