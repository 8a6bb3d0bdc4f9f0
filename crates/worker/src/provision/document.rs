//! A JSON document as it came, read once: objects keep every entry in order, a name given
//! twice included. The decoder refuses such a name (two readers of one body could take
//! different values from it), and the dead-letter copy walks every string of the same
//! reading instead of parsing the body again.

use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};
use std::fmt;
use zeroize::Zeroize as _;

/// Holds a body's credential wherever it stands: `Debug` prints no string, and every
/// string is wiped when dropped.
#[derive(Clone, PartialEq)]
pub(crate) enum Json {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl fmt::Debug for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Json::Null => f.write_str("Null"),
            Json::Bool(b) => write!(f, "Bool({b})"),
            Json::Number(n) => write!(f, "Number({n})"),
            Json::String(s) => write!(f, "String([REDACTED, {} bytes])", s.len()),
            Json::Array(items) => f.debug_list().entries(items).finish(),
            Json::Object(entries) => {
                f.debug_map().entries(entries.iter().map(|(_, value)| ("[REDACTED]", value))).finish()
            }
        }
    }
}

/// Children wipe their own strings as they are dropped after this.
impl Drop for Json {
    fn drop(&mut self) {
        match self {
            Json::String(s) => s.zeroize(),
            Json::Object(entries) => entries.iter_mut().for_each(|(name, _)| name.zeroize()),
            Json::Null | Json::Bool(_) | Json::Number(_) | Json::Array(_) => {}
        }
    }
}

impl Json {
    /// The document as serde_json's value, to decode a schema from; `Err` names the first
    /// name an object gives twice.
    pub(crate) fn to_value(&self) -> Result<serde_json::Value, String> {
        Ok(match self {
            Json::Null => serde_json::Value::Null,
            Json::Bool(b) => serde_json::Value::Bool(*b),
            Json::Number(n) => serde_json::Value::Number(n.clone()),
            Json::String(s) => serde_json::Value::String(s.clone()),
            Json::Array(items) => serde_json::Value::Array(items.iter().map(Json::to_value).collect::<Result<_, _>>()?),
            Json::Object(entries) => {
                let mut map = serde_json::Map::with_capacity(entries.len());
                for (name, value) in entries {
                    if map.insert(name.clone(), value.to_value()?).is_some() {
                        return Err(name.clone());
                    }
                }
                serde_json::Value::Object(map)
            }
        })
    }

    /// Calls `f` on every string of the document, object names included; `f` may replace
    /// it. Returns how many `f` replaced.
    pub(crate) fn rewrite_strings(&mut self, f: &mut impl FnMut(&str) -> Option<Json>) -> usize {
        match self {
            Json::String(s) => match f(s) {
                Some(replacement) => {
                    *self = replacement;
                    1
                }
                None => 0,
            },
            Json::Array(items) => items.iter_mut().map(|item| item.rewrite_strings(f)).sum(),
            Json::Object(entries) => entries
                .iter_mut()
                .map(|(name, value)| {
                    let renamed = match f(name) {
                        // A name is a string whatever replaces it.
                        Some(Json::String(ref mut new)) => {
                            *name = std::mem::take(new);
                            1
                        }
                        Some(_) => {
                            *name = bunq_protocol::redact::MASK.to_owned();
                            1
                        }
                        None => 0,
                    };
                    renamed + value.rewrite_strings(f)
                })
                .sum(),
            Json::Null | Json::Bool(_) | Json::Number(_) => 0,
        }
    }

    pub(crate) fn to_vec(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a document serialises")
    }
}

impl Serialize for Json {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Json::Null => serializer.serialize_unit(),
            Json::Bool(b) => serializer.serialize_bool(*b),
            Json::Number(n) => n.serialize(serializer),
            Json::String(s) => serializer.serialize_str(s),
            Json::Array(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Json::Object(entries) => {
                let mut map = serializer.serialize_map(Some(entries.len()))?;
                for (name, value) in entries {
                    map.serialize_entry(name, value)?;
                }
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Json, E> {
        Ok(Json::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Json, E> {
        Ok(Json::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Json, E> {
        Ok(Json::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Json, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Json::Null, Json::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Json, E> {
        Ok(Json::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Json, E> {
        Ok(Json::String(v))
    }

    fn visit_unit<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_none<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Json, D::Error> {
        Deserialize::deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0).min(64));
        while let Some((name, value)) = map.next_entry::<String, Json>()? {
            entries.push((name, value));
        }
        Ok(Json::Object(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_duplicates_and_order_and_round_trips() {
        let doc: Json = serde_json::from_str(r#"{"a":1,"b":[true,null,"x"],"a":2}"#).unwrap();
        let Json::Object(entries) = &doc else { panic!("{doc:?}") };
        assert_eq!(entries.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["a", "b", "a"]);
        assert_eq!(doc.to_value().unwrap_err(), "a");
        assert_eq!(String::from_utf8(doc.to_vec()).unwrap(), r#"{"a":1,"b":[true,null,"x"],"a":2}"#);
    }

    #[test]
    fn rewrites_every_string_names_included() {
        let mut doc: Json = serde_json::from_str(r#"{"s":"s","n":{"s":["s",1]}}"#).unwrap();
        let replaced = doc.rewrite_strings(&mut |s| (s == "s").then(|| Json::String("t".into())));
        assert_eq!(replaced, 4);
        assert_eq!(String::from_utf8(doc.to_vec()).unwrap(), r#"{"t":"t","n":{"t":["t",1]}}"#);
    }
}
