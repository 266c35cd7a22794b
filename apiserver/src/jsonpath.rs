//! The subset of Kubernetes JSONPath used by `additionalPrinterColumns`: `.a.b`, `.a[0].b`,
//! `.a[*].b`, `['a.b']` and filters like `[?(@.type=="Ready")]`. Missing keys yield no values
//! instead of an error, as the CRD table convertor allows.

use serde_json::Value;

#[derive(Clone, Debug, PartialEq)]
enum Step {
    Field(String),
    Index(i64),
    All,
    Filter {
        path: Vec<String>,
        op: Option<(String, Value)>,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct JsonPath {
    steps: Vec<Step>,
}

fn parse_literal(s: &str) -> Result<Value, String> {
    let s = s.trim();
    if let Some(inner) = s
        .strip_prefix('"')
        .and_then(|r| r.strip_suffix('"'))
        .or_else(|| s.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')))
    {
        return Ok(Value::String(inner.to_string()));
    }
    serde_json::from_str(s).map_err(|_| format!("unrecognized literal {s:?}"))
}

impl JsonPath {
    pub fn parse(expr: &str) -> Result<Self, String> {
        let mut s = expr.trim();
        if let Some(inner) = s.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
            s = inner.trim();
        }
        let s = s.strip_prefix('$').unwrap_or(s);
        let chars: Vec<char> = s.chars().collect();
        let mut steps = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            match chars[i] {
                '.' => {
                    let start = i + 1;
                    let mut j = start;
                    while j < chars.len() && chars[j] != '.' && chars[j] != '[' {
                        j += 1;
                    }
                    let name: String = chars[start..j].iter().collect();
                    if name.is_empty() {
                        if j == chars.len() && steps.is_empty() {
                            // "." alone is the whole object.
                            break;
                        }
                        return Err(format!("invalid JSONPath {expr:?}: empty field name"));
                    }
                    steps.push(Step::Field(name));
                    i = j;
                }
                '[' => {
                    // Find the matching bracket, honouring quotes inside filters.
                    let mut j = i + 1;
                    let mut quote: Option<char> = None;
                    while j < chars.len() {
                        match (quote, chars[j]) {
                            (None, '"' | '\'') => quote = Some(chars[j]),
                            (Some(q), c) if c == q => quote = None,
                            (None, ']') => break,
                            _ => {}
                        }
                        j += 1;
                    }
                    if j == chars.len() {
                        return Err(format!("invalid JSONPath {expr:?}: unclosed ["));
                    }
                    let inner: String = chars[i + 1..j].iter().collect();
                    steps.push(Self::parse_bracket(inner.trim(), expr)?);
                    i = j + 1;
                }
                c if steps.is_empty() && (c.is_alphanumeric() || c == '_') => {
                    // Tolerate a missing leading dot.
                    let mut j = i;
                    while j < chars.len() && chars[j] != '.' && chars[j] != '[' {
                        j += 1;
                    }
                    steps.push(Step::Field(chars[i..j].iter().collect()));
                    i = j;
                }
                _ => return Err(format!("invalid JSONPath {expr:?}")),
            }
        }
        Ok(Self { steps })
    }

    fn parse_bracket(inner: &str, expr: &str) -> Result<Step, String> {
        if inner == "*" {
            return Ok(Step::All);
        }
        if let Some(filter) = inner.strip_prefix("?(").and_then(|r| r.strip_suffix(')')) {
            let filter = filter.trim();
            let rel = filter
                .strip_prefix('@')
                .ok_or_else(|| format!("invalid JSONPath filter in {expr:?}"))?;
            for op in ["==", "!=", "<=", ">=", "<", ">"] {
                if let Some((lhs, rhs)) = rel.split_once(op) {
                    let path = lhs
                        .trim()
                        .split('.')
                        .filter(|s| !s.is_empty())
                        .map(String::from);
                    return Ok(Step::Filter {
                        path: path.collect(),
                        op: Some((op.to_string(), parse_literal(rhs)?)),
                    });
                }
            }
            let path = rel
                .trim()
                .split('.')
                .filter(|s| !s.is_empty())
                .map(String::from);
            return Ok(Step::Filter {
                path: path.collect(),
                op: None,
            });
        }
        if let Value::String(name) = parse_literal(inner).unwrap_or(Value::Null) {
            return Ok(Step::Field(name));
        }
        inner
            .parse::<i64>()
            .map(Step::Index)
            .map_err(|_| format!("invalid JSONPath {expr:?}: unsupported [{inner}]"))
    }

    /// Every value the path selects; empty when something along the way is missing.
    pub fn find<'a>(&self, root: &'a Value) -> Vec<&'a Value> {
        let mut current = vec![root];
        for step in &self.steps {
            let mut next = Vec::new();
            for v in current {
                match step {
                    Step::Field(name) => {
                        if let Some(x) = v.get(name.as_str()) {
                            next.push(x);
                        }
                    }
                    Step::Index(i) => {
                        if let Some(arr) = v.as_array() {
                            let idx = if *i < 0 { arr.len() as i64 + i } else { *i };
                            if let Some(x) = usize::try_from(idx).ok().and_then(|i| arr.get(i)) {
                                next.push(x);
                            }
                        }
                    }
                    Step::All => match v {
                        Value::Array(a) => next.extend(a.iter()),
                        Value::Object(o) => next.extend(o.values()),
                        _ => {}
                    },
                    Step::Filter { path, op } => {
                        for item in v.as_array().into_iter().flatten() {
                            let mut cur = Some(item);
                            for seg in path {
                                cur = cur.and_then(|c| c.get(seg.as_str()));
                            }
                            let keep = match (cur, op) {
                                (None, _) => false,
                                (Some(_), None) => true,
                                (Some(got), Some((op, want))) => compare(got, op, want),
                            };
                            if keep {
                                next.push(item);
                            }
                        }
                    }
                }
            }
            current = next;
        }
        current
    }
}

fn compare(got: &Value, op: &str, want: &Value) -> bool {
    match op {
        "==" => got == want,
        "!=" => got != want,
        _ => match (got.as_f64(), want.as_f64()) {
            (Some(a), Some(b)) => match op {
                "<" => a < b,
                ">" => a > b,
                "<=" => a <= b,
                ">=" => a >= b,
                _ => false,
            },
            _ => false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn printer_column_paths() {
        let obj = json!({
            "spec": {"nics": [{"ip": "10.0.0.2"}, {"ip": "10.0.0.3"}], "a.b": 1},
            "status": {"conditions": [
                {"type": "Scheduled", "reason": "Placed"},
                {"type": "Ready", "reason": "Booted", "n": 3}
            ]}
        });
        let find = |p: &str| -> Vec<Value> {
            JsonPath::parse(p)
                .expect(p)
                .find(&obj)
                .into_iter()
                .cloned()
                .collect()
        };
        assert_eq!(find(".spec.nics[0].ip"), vec![json!("10.0.0.2")]);
        assert_eq!(find(".spec.nics[-1].ip"), vec![json!("10.0.0.3")]);
        assert_eq!(find(".spec.nics[*].ip").len(), 2);
        assert_eq!(
            find(".status.conditions[?(@.type==\"Ready\")].reason"),
            vec![json!("Booted")]
        );
        assert_eq!(
            find("{.status.conditions[?(@.n>2)].type}"),
            vec![json!("Ready")]
        );
        assert_eq!(find(".spec['a.b']"), vec![json!(1)]);
        assert!(find(".status.missing.deeper").is_empty());
        assert!(find(".spec.nics[5].ip").is_empty());
        assert!(JsonPath::parse(".a[").is_err());
    }
}
