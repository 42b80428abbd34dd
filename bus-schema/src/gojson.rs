//! Request bodies decoded as Go's `encoding/json` decodes them for Moby: an object key
//! names a struct field exactly or, failing that, case-insensitively (docker-py sends
//! exec create's `detachKeys`, Docker's field is `DetachKeys`). Maps (labels, options)
//! keep their keys as sent.
//!
//! Hand-written: serde matches field names exactly and no kept crate offers Go's
//! fallback (serde-aux's case-insensitive helper lowercases every key, which needs
//! lowercase field names). This is a thin `Deserializer` over `serde_json::Value` that
//! renames a struct's keys before serde sees them; everything else is the Value's.

use serde::de::value::{MapDeserializer, SeqDeserializer};
use serde::de::{DeserializeOwned, Deserializer, IntoDeserializer, Visitor};
use serde::forward_to_deserialize_any;
use serde_json::{Map, Value};

/// Decodes `bytes` into `T` with Go's key matching. Syntax errors are serde_json's
/// (with their line and column).
pub fn from_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, serde_json::Error> {
    let v: Value = serde_json::from_slice(bytes)?;
    T::deserialize(Go(v))
}

struct Go(Value);

impl<'de> IntoDeserializer<'de, serde_json::Error> for Go {
    type Deserializer = Go;
    fn into_deserializer(self) -> Go {
        self
    }
}

/// The keys of `m` that miss every field exactly but match one case-insensitively,
/// renamed to that field (Go keeps the last of duplicate keys; so does this).
fn rename(m: Map<String, Value>, fields: &[&str]) -> Vec<(String, Go)> {
    m.into_iter()
        .map(|(k, v)| {
            let k = if fields.contains(&k.as_str()) {
                k
            } else {
                fields.iter().find(|f| f.eq_ignore_ascii_case(&k)).map(|f| f.to_string()).unwrap_or(k)
            };
            (k, Go(v))
        })
        .collect()
}

fn visit_entries<'de, V: Visitor<'de>>(entries: Vec<(String, Go)>, visitor: V) -> Result<V::Value, serde_json::Error> {
    let mut d = MapDeserializer::new(entries.into_iter());
    let r = visitor.visit_map(&mut d)?;
    d.end()?;
    Ok(r)
}

impl<'de> Deserializer<'de> for Go {
    type Error = serde_json::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Array(a) => {
                let mut d = SeqDeserializer::new(a.into_iter().map(Go));
                let r = visitor.visit_seq(&mut d)?;
                d.end()?;
                Ok(r)
            }
            Value::Object(m) => visit_entries(m.into_iter().map(|(k, v)| (k, Go(v))).collect(), visitor),
            other => other.deserialize_any(visitor),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Object(m) => visit_entries(rename(m, fields), visitor),
            other => other.deserialize_struct(name, fields, visitor),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _name: &'static str, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.deserialize_enum(name, variants, visitor)
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde::Deserialize;

    #[derive(Deserialize, Debug, Default, PartialEq)]
    struct Inner {
        #[serde(rename = "Name")]
        name: Option<String>,
    }

    #[derive(Deserialize, Debug, Default, PartialEq)]
    struct Outer {
        #[serde(rename = "DetachKeys")]
        detach_keys: Option<String>,
        #[serde(rename = "Labels")]
        labels: Option<HashMap<String, String>>,
        #[serde(rename = "Inner")]
        inner: Option<Inner>,
        #[serde(rename = "List")]
        list: Option<Vec<Inner>>,
        #[serde(rename = "Size")]
        size: Option<i64>,
    }

    #[test]
    fn keys_match_fields_as_go_does() {
        let o: Outer = super::from_slice(
            br#"{"detachKeys":"ctrl-p","labels":{"detachKeys":"x","A":"b"},"INNER":{"name":"n"},"list":[{"nAmE":"m"}],"size":-3}"#,
        )
        .unwrap();
        assert_eq!(o.detach_keys.as_deref(), Some("ctrl-p"));
        // a map's keys are data, kept as sent
        assert_eq!(o.labels.unwrap(), HashMap::from([("detachKeys".to_string(), "x".to_string()), ("A".to_string(), "b".to_string())]));
        assert_eq!(o.inner.unwrap().name.as_deref(), Some("n"));
        assert_eq!(o.list.unwrap()[0].name.as_deref(), Some("m"));
        assert_eq!(o.size, Some(-3));
        let o: Outer = super::from_slice(br#"{"DetachKeys":null,"Unknown":1}"#).unwrap();
        assert_eq!(o, Outer::default());
        assert!(super::from_slice::<Outer>(br#"{"Size":"x"}"#).is_err());
        assert!(super::from_slice::<Outer>(b"{").unwrap_err().to_string().contains("line 1"));
    }
}
