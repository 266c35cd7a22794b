//! `meta.k8s.io/v1` Table and PartialObjectMetadata renderings, chosen by the Accept header.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::jsonpath::JsonPath;
use crate::registry::ResourceDef;

/// How the client asked to see objects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rendering {
    Object,
    Table,
    /// PartialObjectMetadata for single objects and watch events, PartialObjectMetadataList for lists.
    Metadata,
}

impl Rendering {
    /// Picks the first alternative of `Accept` the server can produce.
    pub fn from_accept(accept: Option<&str>) -> Rendering {
        let Some(accept) = accept else {
            return Rendering::Object;
        };
        for alt in accept.split(',') {
            let mut parts = alt.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default();
            let params: Vec<(&str, &str)> = parts.filter_map(|p| p.split_once('=')).collect();
            let param = |k: &str| params.iter().find(|(n, _)| *n == k).map(|(_, v)| *v);
            if media != "application/json" && media != "*/*" && media != "application/*" {
                continue;
            }
            match (param("as"), param("g"), param("v")) {
                (None, _, _) => return Rendering::Object,
                (Some("Table"), Some("meta.k8s.io"), Some("v1")) => return Rendering::Table,
                (
                    Some("PartialObjectMetadata" | "PartialObjectMetadataList"),
                    Some("meta.k8s.io"),
                    Some("v1"),
                ) => return Rendering::Metadata,
                _ => continue,
            }
        }
        Rendering::Object
    }
}

/// `?includeObject=` for table rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IncludeObject {
    None,
    Metadata,
    Object,
}

impl IncludeObject {
    pub fn parse(v: Option<&str>) -> IncludeObject {
        match v {
            Some("None") => IncludeObject::None,
            Some("Object") => IncludeObject::Object,
            _ => IncludeObject::Metadata,
        }
    }
}

pub fn partial_metadata(obj: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({})),
    })
}

pub fn partial_metadata_list(items: &[Value], list_meta: Value) -> Value {
    json!({
        "kind": "PartialObjectMetadataList",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "items": items.iter().map(partial_metadata).collect::<Vec<_>>(),
    })
}

/// Like kubectl's `duration.HumanDuration`.
pub fn human_duration(d: chrono::Duration) -> String {
    let secs = d.num_seconds();
    if secs < -1 {
        return "<invalid>".into();
    }
    if secs < 0 {
        return "0s".into();
    }
    let minutes = secs / 60;
    let hours = secs / 3600;
    let days = hours / 24;
    let years = days / 365;
    if secs < 60 * 2 {
        format!("{secs}s")
    } else if minutes < 10 {
        let s = secs % 60;
        if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        }
    } else if minutes < 60 * 3 {
        format!("{minutes}m")
    } else if hours < 8 {
        let m = minutes % 60;
        if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        }
    } else if hours < 48 {
        format!("{hours}h")
    } else if hours < 24 * 8 {
        let h = hours % 24;
        if h == 0 {
            format!("{days}d")
        } else {
            format!("{days}d{h}h")
        }
    } else if hours < 24 * 365 * 2 {
        format!("{days}d")
    } else if hours < 24 * 365 * 8 {
        let dy = days % 365;
        if dy == 0 {
            format!("{years}y")
        } else {
            format!("{years}y{dy}d")
        }
    } else {
        format!("{years}y")
    }
}

/// One cell, typed by the column's type; `null` when the path finds nothing.
pub fn cell(type_: &str, values: &[&Value], now: DateTime<Utc>) -> Value {
    let Some(first) = values.first() else {
        return Value::Null;
    };
    match type_ {
        "date" => match first
            .as_str()
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        {
            Some(t) => Value::String(human_duration(now - t.with_timezone(&Utc))),
            None => Value::Null,
        },
        "integer" => first.as_i64().map(Value::from).unwrap_or(Value::Null),
        "number" => first.as_f64().map(Value::from).unwrap_or(Value::Null),
        "boolean" => first.as_bool().map(Value::from).unwrap_or(Value::Null),
        _ => {
            let render = |v: &Value| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            Value::String(
                values
                    .iter()
                    .map(|v| render(v))
                    .collect::<Vec<_>>()
                    .join(","),
            )
        }
    }
}

pub fn column_definitions(def: &ResourceDef) -> Value {
    let mut cols = vec![json!({
        "name": "Name", "type": "string", "format": "name", "priority": 0,
        "description": "Name must be unique within a namespace. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names",
    })];
    for c in &def.columns {
        cols.push(json!({
            "name": c.name, "type": c.type_, "format": c.format,
            "description": c.description, "priority": c.priority,
        }));
    }
    Value::Array(cols)
}

pub fn row(def: &ResourceDef, obj: &Value, include: IncludeObject, now: DateTime<Utc>) -> Value {
    let mut cells = vec![obj["metadata"]["name"].clone()];
    for c in &def.columns {
        let values = JsonPath::parse(&c.json_path)
            .map(|p| p.find(obj))
            .unwrap_or_default();
        cells.push(cell(&c.type_, &values, now));
    }
    let mut row = json!({"cells": cells});
    match include {
        IncludeObject::None => {}
        IncludeObject::Metadata => row["object"] = partial_metadata(obj),
        IncludeObject::Object => row["object"] = obj.clone(),
    }
    row
}

/// A Table of `objects`; `with_columns` is false for watch events after the first.
pub fn table(
    def: &ResourceDef,
    objects: &[Value],
    list_meta: Value,
    include: IncludeObject,
    with_columns: bool,
) -> Value {
    let now = Utc::now();
    let mut t = json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "rows": objects.iter().map(|o| row(def, o, include, now)).collect::<Vec<_>>(),
    });
    if with_columns {
        t["columnDefinitions"] = column_definitions(def);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Column;

    #[test]
    fn durations_read_like_kubectl() {
        let d = chrono::Duration::seconds;
        assert_eq!(human_duration(d(5)), "5s");
        assert_eq!(human_duration(d(119)), "119s");
        assert_eq!(human_duration(d(5 * 60)), "5m");
        assert_eq!(human_duration(d(5 * 60 + 3)), "5m3s");
        assert_eq!(human_duration(d(90 * 60)), "90m");
        assert_eq!(human_duration(d(4 * 3600 + 60)), "4h1m");
        assert_eq!(human_duration(d(30 * 3600)), "30h");
        assert_eq!(human_duration(d(2 * 86400)), "2d");
        assert_eq!(human_duration(d(3 * 86400 + 3600)), "3d1h");
        assert_eq!(human_duration(d(400 * 86400)), "400d");
        assert_eq!(human_duration(d(-5)), "<invalid>");
    }

    #[test]
    fn accept_header_selects_rendering() {
        let kubectl = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert_eq!(Rendering::from_accept(Some(kubectl)), Rendering::Table);
        assert_eq!(
            Rendering::from_accept(Some(
                "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
            )),
            Rendering::Metadata
        );
        assert_eq!(
            Rendering::from_accept(Some("application/json, */*")),
            Rendering::Object
        );
        assert_eq!(Rendering::from_accept(None), Rendering::Object);
    }

    #[test]
    fn rows_follow_printer_columns() {
        let mut def =
            crate::registry::ResourceDef::from_crd(&crate::registry::builtin_crds()[0], true)
                .remove(0);
        def.columns = vec![
            Column {
                name: "CPUs".into(),
                type_: "integer".into(),
                format: String::new(),
                description: String::new(),
                priority: 0,
                json_path: ".spec.cpu".into(),
            },
            Column {
                name: "Reason".into(),
                type_: "string".into(),
                format: String::new(),
                description: String::new(),
                priority: 1,
                json_path: ".status.conditions[?(@.type==\"Ready\")].reason".into(),
            },
            Column {
                name: "Age".into(),
                type_: "date".into(),
                format: String::new(),
                description: String::new(),
                priority: 0,
                json_path: ".metadata.creationTimestamp".into(),
            },
        ];
        let created = (Utc::now() - chrono::Duration::minutes(20)).to_rfc3339();
        let obj = json!({"metadata": {"name": "vm1", "creationTimestamp": created},
                          "spec": {"cpu": 2}, "status": {}});
        let t = table(&def, &[obj], json!({}), IncludeObject::Metadata, true);
        assert_eq!(t["columnDefinitions"][0]["name"], "Name");
        assert_eq!(t["columnDefinitions"][2]["priority"], 1);
        assert_eq!(t["rows"][0]["cells"], json!(["vm1", 2, null, "20m"]));
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    }
}
