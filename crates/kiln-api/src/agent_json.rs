//! proto3-JSON field encodings that serde does not do by itself.

/// `bytes` fields: base64 on output; standard or URL-safe, padded or not, on
/// input.
pub mod bytes_b64 {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = Option::<String>::deserialize(d)?.unwrap_or_default();
        decode(&s).map_err(serde::de::Error::custom)
    }

    pub fn decode(s: &str) -> Result<Vec<u8>, String> {
        for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
            if let Ok(v) = engine.decode(s) {
                return Ok(v);
            }
        }
        Err("invalid base64 in a bytes field".to_string())
    }
}

/// Optional `bytes` (a member of a oneof).
pub mod opt_bytes_b64 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => super::bytes_b64::serialize(v, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(s) => super::bytes_b64::decode(&s)
                .map(Some)
                .map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }
}

/// `int64` fields: a string on output; a string or a number on input.
pub mod int64 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &i64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        S(String),
        N(i64),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        match Option::<Either>::deserialize(d)? {
            None => Ok(0),
            Some(Either::N(n)) => Ok(n),
            Some(Either::S(s)) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// Scalars that may come as JSON `null` (proto3-JSON: the default value).
pub fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + serde::Deserialize<'de>,
{
    use serde::Deserialize;
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Declares a proto enum: serialized by name, deserialized from its name or
/// its number; unknown numbers and names become the zero value.
#[macro_export]
macro_rules! proto_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident = $num:literal => $wire:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
        pub enum $name {
            #[default]
            $($variant),+
        }

        impl $name {
            pub fn number(self) -> i32 {
                match self { $($name::$variant => $num),+ }
            }
            pub fn name(self) -> &'static str {
                match self { $($name::$variant => $wire),+ }
            }
            pub fn from_number(n: i64) -> Self {
                match n { $($num => $name::$variant,)+ _ => Self::default() }
            }
            pub fn from_name(s: &str) -> Self {
                match s { $($wire => $name::$variant,)+ _ => Self::default() }
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.name())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                match Option::<serde_json::Value>::deserialize(d)? {
                    None => Ok(Self::default()),
                    Some(serde_json::Value::String(s)) => Ok(Self::from_name(&s)),
                    Some(serde_json::Value::Number(n)) => match n.as_i64() {
                        Some(n) => Ok(Self::from_number(n)),
                        None => Err(serde::de::Error::custom("enum value is not an integer")),
                    },
                    Some(_) => Err(serde::de::Error::custom("enum value must be a name or a number")),
                }
            }
        }
    };
}
