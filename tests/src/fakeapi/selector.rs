//! Label and field selectors as the API server parses them from `labelSelector` and
//! `fieldSelector` query parameters.

use serde_json::Value;

use super::ApiError;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Term {
    Eq(String, String),
    NotEq(String, String),
    Exists(String),
    NotExists(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

/// A parsed label selector (`app=x,tier!=db,env in (a,b),!legacy`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector {
    terms: Vec<Term>,
}

/// A parsed field selector (`metadata.name=x,status.phase!=Running`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector {
    // (dotted path, value, equal?)
    terms: Vec<(String, String, bool)>,
}

/// Splits on commas outside parentheses.
fn split_top(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out.into_iter()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect()
}

fn bad(sel: &str) -> ApiError {
    ApiError::bad_request(format!(
        "unable to parse requirement: invalid selector {sel:?}"
    ))
}

fn set_values(rest: &str, sel: &str) -> Result<Vec<String>, ApiError> {
    let inner = rest
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| bad(sel))?;
    Ok(inner
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect())
}

impl LabelSelector {
    /// Parses the Kubernetes label selector syntax.
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        let mut terms = Vec::new();
        for t in split_top(s) {
            let term = if let Some(k) = t.strip_prefix('!') {
                Term::NotExists(k.trim().to_string())
            } else if let Some((k, v)) = t.split_once("!=") {
                Term::NotEq(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = t.split_once("==") {
                Term::Eq(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = t.split_once('=') {
                Term::Eq(k.trim().into(), v.trim().into())
            } else if let Some((k, rest)) = t.split_once(" notin ") {
                Term::NotIn(k.trim().into(), set_values(rest, s)?)
            } else if let Some((k, rest)) = t.split_once(" in ") {
                Term::In(k.trim().into(), set_values(rest, s)?)
            } else if t.contains(|c: char| c.is_whitespace() || "()".contains(c)) {
                return Err(bad(s));
            } else {
                Term::Exists(t.to_string())
            };
            terms.push(term);
        }
        Ok(LabelSelector { terms })
    }

    /// Whether an object (JSON, labels under `metadata.labels`) matches.
    pub fn matches(&self, obj: &Value) -> bool {
        let labels = &obj["metadata"]["labels"];
        let get = |k: &str| labels.get(k).and_then(Value::as_str);
        self.terms.iter().all(|t| match t {
            Term::Eq(k, v) => get(k) == Some(v),
            Term::NotEq(k, v) => get(k) != Some(v),
            Term::Exists(k) => get(k).is_some(),
            Term::NotExists(k) => get(k).is_none(),
            Term::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Term::NotIn(k, vs) => get(k).is_none_or(|x| vs.iter().all(|v| v != x)),
        })
    }
}

/// The string value at a dotted path (`spec.nodeName`); missing fields read as `""`.
pub fn field_value(obj: &Value, path: &str) -> String {
    let mut cur = obj;
    for part in path.split('.') {
        match cur.get(part) {
            Some(v) => cur = v,
            None => return String::new(),
        }
    }
    match cur {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

impl FieldSelector {
    /// Parses `path=value`, `path==value`, `path!=value` terms.
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        let mut terms = Vec::new();
        for t in split_top(s) {
            let term = if let Some((k, v)) = t.split_once("!=") {
                (k, v, false)
            } else if let Some((k, v)) = t.split_once("==") {
                (k, v, true)
            } else if let Some((k, v)) = t.split_once('=') {
                (k, v, true)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid field selector: {s:?}"
                )));
            };
            terms.push((term.0.trim().to_string(), term.1.trim().to_string(), term.2));
        }
        Ok(FieldSelector { terms })
    }

    /// Whether an object matches every term.
    pub fn matches(&self, obj: &Value) -> bool {
        self.terms
            .iter()
            .all(|(path, v, eq)| (field_value(obj, path) == *v) == *eq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_selectors() {
        let o = json!({"metadata": {"labels": {"app": "db", "tier": "back"}}});
        let m = |s: &str| LabelSelector::parse(s).unwrap().matches(&o);
        assert!(m("app=db"));
        assert!(m("app==db,tier"));
        assert!(!m("app!=db"));
        assert!(m("!missing"));
        assert!(!m("!app"));
        assert!(m("app in (db, web),tier notin (front)"));
        assert!(!m("app notin (db)"));
        assert!(m("missing notin (x)"));
        assert!(!m("missing in (x)"));
        assert!(m(""));
    }

    #[test]
    fn field_selectors() {
        let o = json!({"metadata": {"name": "a"}, "status": {"phase": "Running"}});
        let m = |s: &str| FieldSelector::parse(s).unwrap().matches(&o);
        assert!(m("metadata.name=a,status.phase!=Pending"));
        assert!(!m("spec.nodeName=n1"));
        assert!(m("spec.nodeName="));
    }
}
