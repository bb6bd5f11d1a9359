//! stub
use serde_json::Value;
/// m
pub fn markdown(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap()
}
