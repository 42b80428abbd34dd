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

/// What Go's `json.NewDecoder(body).Decode(&v)` (Moby's request bodies) makes of
/// `bytes`: `Ok(None)` when there is no value, only blanks (Go's `io.EOF`); else the
/// first value, decoded with Go's key matching (what follows it is never read, as the
/// Decoder reads one value; `null` leaves `T` at its zero value); a syntax error is
/// worded as Go's scanner words it (`invalid character 'i' looking for beginning of
/// object key string`, `unexpected EOF`). A type error keeps serde's wording.
pub fn decode_first<T: DeserializeOwned + Default>(bytes: &[u8]) -> Result<Option<T>, String> {
    // Go's isSpace: space, tab, CR, LF (not form feed)
    if bytes.iter().all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n')) {
        return Ok(None);
    }
    let v = match serde_json::Deserializer::from_slice(bytes).into_iter::<Value>().next() {
        None => return Ok(None),
        Some(Ok(v)) => v,
        Some(Err(e)) => return Err(go_syntax_message(&e, bytes)),
    };
    if v.is_null() {
        return Ok(Some(T::default()));
    }
    T::deserialize(Go(v)).map(Some).map_err(|e| e.to_string())
}

/// Go's `SyntaxError` text for serde_json's syntax error `e` in `bytes`: the offending
/// byte quoted as Go's `quoteChar` does and the scanner's context. Hand-written: no
/// crate words JSON errors as Go's encoding/json does, and clients show the message.
fn go_syntax_message(e: &serde_json::Error, bytes: &[u8]) -> String {
    if e.classify() == serde_json::error::Category::Eof {
        return "unexpected EOF".into();
    }
    let full = e.to_string();
    let msg = full.rsplit_once(" at line ").map_or(full.as_str(), |(m, _)| m);
    // serde_json's line is 1-based and its column the offending byte's, 1-based (0:
    // the line's end, the newline itself)
    let line_start = bytes.split_inclusive(|b| *b == b'\n').take(e.line().saturating_sub(1)).map(<[u8]>::len).sum::<usize>();
    let Some(&c) = (line_start + e.column()).checked_sub(1).and_then(|i| bytes.get(i)) else {
        return msg.to_string();
    };
    let context = match msg {
        "expected value" => "looking for beginning of value".to_string(),
        "key must be a string" => "looking for beginning of object key string".to_string(),
        "trailing comma" if c == b'}' => "looking for beginning of object key string".to_string(),
        "trailing comma" => "looking for beginning of value".to_string(),
        "expected `:`" => "after object key".to_string(),
        "expected `,` or `}`" => "after object key:value pair".to_string(),
        "expected `,` or `]`" => "after array element".to_string(),
        "trailing characters" => "after top-level value".to_string(),
        "invalid number" => "in numeric literal".to_string(),
        "invalid escape" => "in string escape code".to_string(),
        m if m.starts_with("control character") => "in string literal".to_string(),
        "expected ident" => {
            // the literal began at the last t/f/n before the offending byte
            let i = line_start + e.column() - 1;
            let start = bytes[..i].iter().rposition(|b| matches!(b, b't' | b'f' | b'n'));
            let lit = match start.map(|s| bytes[s]) {
                Some(b't') => "true",
                Some(b'f') => "false",
                _ => "null",
            };
            let at = start.map_or(0, |s| i - s);
            match lit.as_bytes().get(at) {
                Some(&want) => format!("in literal {lit} (expecting {})", quote_char(want)),
                None => "after top-level value".to_string(),
            }
        }
        _ => return msg.to_string(),
    };
    format!("invalid character {} {context}", quote_char(c))
}

/// Go's `quoteChar`: the byte in single quotes, escaped as `strconv.Quote` escapes.
fn quote_char(c: u8) -> String {
    match c {
        b'\'' => r"'\''".to_string(),
        b'"' => "'\"'".to_string(),
        b'\\' => r"'\\'".to_string(),
        b'\n' => r"'\n'".to_string(),
        b'\t' => r"'\t'".to_string(),
        b'\r' => r"'\r'".to_string(),
        0x07 => r"'\a'".to_string(),
        0x08 => r"'\b'".to_string(),
        0x0c => r"'\f'".to_string(),
        0x0b => r"'\v'".to_string(),
        0x20..=0x7e => format!("'{}'", c as char),
        0x00..=0x1f | 0x7f => format!(r"'\x{c:02x}'"),
        _ => format!("'{}'", char::from(c)),
    }
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

    /// Go's `json.Decoder` as Moby 20.10 reads a body (its answers recorded side by
    /// side: notes/contract-moby-json-bodies.txt): one value, the rest unread.
    #[test]
    fn bodies_decode_as_gos_decoder() {
        let d = |b: &str| super::decode_first::<Outer>(b.as_bytes());
        assert_eq!(d(""), Ok(None));
        assert_eq!(d(" \r\n\t"), Ok(None));
        assert_eq!(d("null"), Ok(Some(Outer::default())));
        assert_eq!(d("{}x"), Ok(Some(Outer::default())));
        assert_eq!(d(r#" {"size":2} {"#), Ok(Some(Outer { size: Some(2), ..Outer::default() })));
        // Moby's words for these bodies
        assert_eq!(d("{invalid json").unwrap_err(), "invalid character 'i' looking for beginning of object key string");
        assert_eq!(d(r#"{"Name":"x","#).unwrap_err(), "unexpected EOF");
        // Go's scanner for the other syntax errors (encoding/json's scanner.go)
        for (body, go) in [
            ("x", "invalid character 'x' looking for beginning of value"),
            (r#"{"a" 1}"#, "invalid character '1' after object key"),
            (r#"{"a":1 x}"#, "invalid character 'x' after object key:value pair"),
            (r#"{"List":[1 x]}"#, "invalid character 'x' after array element"),
            (r#"{"a":1,}"#, "invalid character '}' looking for beginning of object key string"),
            (r#"{"List":[1,]}"#, "invalid character ']' looking for beginning of value"),
            (r#"{"a":tru}"#, "invalid character '}' in literal true (expecting 'e')"),
            (r#"{"a":nulx}"#, "invalid character 'x' in literal null (expecting 'l')"),
            (r#"{"a":-x}"#, "invalid character 'x' in numeric literal"),
            ("{\"a\":\"\n\"}", r"invalid character '\n' in string literal"),
            (r#"{"a":"\q"}"#, "invalid character 'q' in string escape code"),
            ("{'a':1}", r"invalid character '\'' looking for beginning of object key string"),
        ] {
            assert_eq!(d(body).unwrap_err(), go, "{body}");
        }
        assert!(d("[]").is_err(), "an array is no object");
    }
}
