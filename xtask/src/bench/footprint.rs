//! stub
use anyhow::Result;
use serde_json::Value;
/// s
#[derive(Debug, Clone, Copy)]
pub struct Settings;
impl Settings {
    /// q
    pub fn quick() -> Self {
        Self
    }
    /// f
    pub fn full() -> Self {
        Self
    }
}
/// r
pub fn run(_s: Settings) -> Result<Value> {
    Ok(Value::Null)
}
