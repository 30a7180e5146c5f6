//! The rqlite-compatible JSON shapes: statements in, results out.

use bop_sql::{ExecOutcome, Params, Rows, Statement, Value};
use serde_json::{json, Map, Value as Json};

/// Most statements one request may carry.
pub const STATEMENTS_MAX: usize = 1000;

/// Parses a request body: a JSON array whose elements are an SQL string, or `[sql, params...]` with
/// positional parameters, or `[sql, {name: value}]` with named ones.
pub fn parse_statements(body: &[u8]) -> Result<Vec<Statement>, String> {
    let parsed: Json = serde_json::from_slice(body).map_err(|e| format!("malformed JSON: {e}"))?;
    let Json::Array(items) = parsed else { return Err("expected a JSON array of statements".into()) };
    if items.len() > STATEMENTS_MAX {
        return Err(format!("{} statements exceed {STATEMENTS_MAX}", items.len()));
    }
    items.iter().map(parse_statement).collect()
}

fn parse_statement(item: &Json) -> Result<Statement, String> {
    match item {
        Json::String(sql) => Ok(Statement::new(sql.clone())),
        Json::Array(parts) => {
            let Some(Json::String(sql)) = parts.first() else {
                return Err("a parameterized statement starts with its SQL string".into());
            };
            let args = &parts[1..];
            let params = match args {
                [] => Params::None,
                [Json::Object(named)] => {
                    Params::Named(named.iter().map(|(k, v)| Ok((k.clone(), to_value(v)?))).collect::<Result<
                        _,
                        String,
                    >>(
                    )?)
                }
                positional => Params::Positional(positional.iter().map(to_value).collect::<Result<_, _>>()?),
            };
            Ok(Statement { sql: sql.clone(), params })
        }
        other => Err(format!("a statement is a string or an array, not {other}")),
    }
}

fn to_value(json: &Json) -> Result<Value, String> {
    Ok(match json {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Integer(i64::from(*b)),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Value::Integer(i),
            None => Value::Real(n.as_f64().ok_or_else(|| format!("number {n} out of range"))?),
        },
        Json::String(s) => Value::Text(s.clone()),
        other => return Err(format!("unsupported parameter {other}")),
    })
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A value as rqlite answers it: a blob as base64 text, or with `blob_array` (rqlite's parameter) as an
/// array of its bytes.
fn to_json(value: &Value, blob_array: bool) -> Json {
    match value {
        Value::Null => Json::Null,
        Value::Integer(i) => json!(i),
        Value::Real(f) => json!(f),
        Value::Text(s) => json!(s),
        Value::Blob(b) if blob_array => json!(b),
        Value::Blob(b) => json!(base64(b)),
    }
}

/// `{"last_insert_id": .., "rows_affected": ..}`: what one write did.
pub fn exec_result(outcome: &ExecOutcome) -> Json {
    json!({ "last_insert_id": outcome.last_insert_rowid, "rows_affected": outcome.rows_affected })
}

/// One query result, as rows of values or (associative) as objects; blobs as byte arrays with `blob_array`.
/// How a query's rows are answered (rqlite's parameters).
#[derive(Debug, Clone, Copy, Default)]
pub struct Shape {
    /// `associative`: each row an object keyed by column name.
    pub associative: bool,
    /// `blob_array`: blobs as arrays of bytes instead of base64.
    pub blob_array: bool,
    /// `qualify_columns`: a column from a table is named `table.column`.
    pub qualify_columns: bool,
}

impl Shape {
    /// The shape a call's query parameters ask for.
    pub fn of(params: &std::collections::HashMap<String, String>) -> Shape {
        Shape {
            associative: params.contains_key("associative"),
            blob_array: params.contains_key("blob_array"),
            qualify_columns: params.contains_key("qualify_columns"),
        }
    }
}

pub fn query_result(rows: &Rows, shape: Shape) -> Json {
    let Shape { associative, blob_array, qualify_columns } = shape;
    let names: Vec<String> = rows
        .columns
        .iter()
        .map(|c| match &c.table {
            Some(table) if qualify_columns => format!("{table}.{}", c.name),
            _ => c.name.clone(),
        })
        .collect();
    let columns: Vec<Json> = names.iter().map(|name| json!(name)).collect();
    let types: Vec<Json> =
        rows.columns.iter().map(|c| json!(c.decl_type.clone().unwrap_or_default().to_lowercase())).collect();
    if associative {
        let objects: Vec<Json> = rows
            .rows
            .iter()
            .map(|row| {
                let mut object = Map::new();
                for (name, value) in names.iter().zip(row) {
                    object.insert(name.clone(), to_json(value, blob_array));
                }
                Json::Object(object)
            })
            .collect();
        json!({ "types": Json::Object(names.iter().cloned().zip(types).collect()), "rows": objects })
    } else {
        let values: Vec<Json> = rows
            .rows
            .iter()
            .map(|row| Json::Array(row.iter().map(|v| to_json(v, blob_array)).collect()))
            .collect();
        let mut out = json!({ "columns": columns, "types": types });
        if !values.is_empty() {
            out["values"] = Json::Array(values);
        }
        out
    }
}

/// `{"results": [{"error": ..}]}`: what a failed request answers.
pub fn error_result(message: &str) -> Json {
    json!({ "results": [{ "error": message }] })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_in_every_rqlite_shape_parse() {
        let body = br#"["CREATE TABLE t (x)", ["INSERT INTO t VALUES (?)", 7], ["INSERT INTO t VALUES (:v)", {"v": "a"}]]"#;
        let statements = parse_statements(body).expect("parse");
        assert_eq!(statements.len(), 3);
        assert_eq!(statements[1].params, Params::Positional(vec![Value::Integer(7)]));
        assert_eq!(statements[2].params, Params::Named(vec![("v".into(), Value::Text("a".into()))]));
        assert!(parse_statements(b"{}").is_err());
        assert!(parse_statements(b"[1]").is_err());
        assert!(parse_statements(b"not json").is_err());
    }

    #[test]
    fn blobs_are_base64() {
        assert_eq!(base64(b"hello"), "aGVsbG8=");
        assert_eq!(base64(b"hi"), "aGk=");
        assert_eq!(base64(b""), "");
    }
}
