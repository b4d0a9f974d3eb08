//! Serde for values written as strings (`"8080:80"`, `"data.img:ro"`, `"on-failure"`):
//! serialised with `Display`, parsed with `FromStr`, so a config or record holds the typed
//! value and files hold what users write.

use serde::{de::Error as _, Deserialize, Deserializer, Serializer};
use std::fmt::Display;
use std::str::FromStr;

/// `Option<T>` as an optional string.
pub mod option {
    use super::*;

    /// Serialise `Some(v)` as `v.to_string()`.
    pub fn serialize<T: Display, S: Serializer>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.collect_str(v),
            None => s.serialize_none(),
        }
    }

    /// Parse a string with `FromStr`; its error becomes the message.
    pub fn deserialize<'de, T, D>(d: D) -> Result<Option<T>, D::Error>
    where
        T: FromStr,
        T::Err: Display,
        D: Deserializer<'de>,
    {
        match Option::<String>::deserialize(d)? {
            Some(s) => s.parse().map(Some).map_err(D::Error::custom),
            None => Ok(None),
        }
    }
}

/// `Vec<T>` as a list of strings.
pub mod vec {
    use super::*;
    use serde::ser::SerializeSeq;

    /// Serialise each element with `Display`.
    pub fn serialize<T: Display, S: Serializer>(v: &[T], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(v.len()))?;
        for x in v {
            seq.serialize_element(&x.to_string())?;
        }
        seq.end()
    }

    /// Parse each string with `FromStr`.
    pub fn deserialize<'de, T, D>(d: D) -> Result<Vec<T>, D::Error>
    where
        T: FromStr,
        T::Err: Display,
        D: Deserializer<'de>,
    {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|s| s.parse().map_err(D::Error::custom))
            .collect()
    }
}
