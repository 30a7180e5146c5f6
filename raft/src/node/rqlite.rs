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
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn to_json(value: &Value) -> Json {
    match value {
        Value::Null => Json::Null,
        Value::Integer(i) => json!(i),
        Value::Real(f) => json!(f),
        Value::Text(s) => json!(s),
        Value::Blob(b) => json!(base64(b)),
    }
}

/// `{"last_insert_id": .., "rows_affected": ..}`: what one write did.
pub fn exec_result(outcome: &ExecOutcome) -> Json {
    json!({ "last_insert_id": outcome.last_insert_rowid, "rows_affected": outcome.rows_affected })
}

/// One query result, as rows of values or (associative) as objects.
pub fn query_result(rows: &Rows, associative: bool) -> Json {
    let columns: Vec<Json> = rows.columns.iter().map(|c| json!(c.name)).collect();
    let types: Vec<Json> =
        rows.columns.iter().map(|c| json!(c.decl_type.clone().unwrap_or_default().to_lowercase())).collect();
    if associative {
        let objects: Vec<Json> = rows
            .rows
            .iter()
            .map(|row| {
                let mut object = Map::new();
                for (column, value) in rows.columns.iter().zip(row) {
                    object.insert(column.name.clone(), to_json(value));
                }
                Json::Object(object)
            })
            .collect();
        json!({ "types": Json::Object(rows.columns.iter().zip(types).map(|(c, t)| (c.name.clone(), t)).collect()), "rows": objects })
    } else {
        let values: Vec<Json> =
            rows.rows.iter().map(|row| Json::Array(row.iter().map(to_json).collect())).collect();
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
