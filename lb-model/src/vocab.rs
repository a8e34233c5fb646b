//! The shared vocabulary: how a value given by an operator (a config file value, a control
//! request field, a CLI argument) is read, and how a refusal names it.
//!
//! - [`Raw`]: any value as serde hands it over (TOML or JSON), shown the way the operator
//!   wrote it (`"leastconn"`, `300`, `the date/time 00:30:00`, `a table`).
//! - [`FromRaw`]: a type read from a [`Raw`], whose refusal says "X is not accepted: use Y";
//!   [`from_raw!`](crate::from_raw) gives it `Deserialize`.
//! - [`named!`](crate::named): an enum whose values each have one name, used on the wire,
//!   in the config file, in answers and in messages (`Display`, `FromStr`, serde).
//! - [`Shown`]: a value and how it was written, for checks that involve several fields.

use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// A value as given, before it is read as the type a field expects.
#[derive(Clone, Debug, PartialEq)]
pub enum Raw {
    Str(String),
    Int(i128),
    Float(f64),
    Bool(bool),
    /// A TOML date or time, as written.
    DateTime(String),
    Table,
    Array,
    Null,
}

impl fmt::Display for Raw {
    /// The value the way a refusal shows it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Raw::Str(s) => write!(f, "{}", excerpt(s, 80)),
            Raw::Int(n) => write!(f, "{n}"),
            Raw::Float(x) => write!(f, "{x}"),
            Raw::Bool(b) => write!(f, "{b}"),
            Raw::DateTime(d) => write!(f, "the date/time {d}"),
            Raw::Table => f.write_str("a table"),
            Raw::Array => f.write_str("an array"),
            Raw::Null => f.write_str("null"),
        }
    }
}

impl Raw {
    /// "X is not accepted: use ACCEPTED".
    pub fn refuse(&self, accepted: &str) -> String {
        format!("{self} is not accepted: use {accepted}")
    }

    /// The string, if it is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Raw::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The integer, if it is one.
    pub fn as_int(&self) -> Option<i128> {
        match self {
            Raw::Int(n) => Some(*n),
            _ => None,
        }
    }
}

/// TOML hands a date/time to a visitor as a map with this one key.
const TOML_DATETIME: &str = "$__toml_private_datetime";

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Raw;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Raw, E> {
        Ok(Raw::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Raw, E> {
        Ok(Raw::Int(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Raw, E> {
        Ok(Raw::Int(v.into()))
    }
    fn visit_i128<E>(self, v: i128) -> Result<Raw, E> {
        Ok(Raw::Int(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Raw, E> {
        Ok(Raw::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Raw, E> {
        Ok(Raw::Str(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Raw, E> {
        Ok(Raw::Str(v))
    }
    fn visit_unit<E>(self) -> Result<Raw, E> {
        Ok(Raw::Null)
    }
    fn visit_none<E>(self) -> Result<Raw, E> {
        Ok(Raw::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Raw, D::Error> {
        d.deserialize_any(RawVisitor)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Raw, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Raw::Array)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw, A::Error> {
        let mut raw = Raw::Table;
        let mut first = true;
        while let Some(key) = map.next_key::<String>()? {
            if first && key == TOML_DATETIME {
                raw = Raw::DateTime(map.next_value::<String>()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
            first = false;
        }
        Ok(raw)
    }
}

/// Reads any value as a [`Raw`].
pub fn raw<'de, D: Deserializer<'de>>(d: D) -> Result<Raw, D::Error> {
    d.deserialize_any(RawVisitor)
}

impl<'de> serde::Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        raw(d)
    }
}

/// A type read from a [`Raw`], with a refusal that names the value and what is accepted.
pub trait FromRaw: Sized {
    fn from_raw(raw: &Raw) -> Result<Self, String>;
}

/// Reads a [`FromRaw`] type through serde (for `Deserialize` impls).
pub fn deserialize<'de, D: Deserializer<'de>, T: FromRaw>(d: D) -> Result<T, D::Error> {
    let raw = raw(d)?;
    T::from_raw(&raw).map_err(de::Error::custom)
}

/// Implements `Deserialize` for [`FromRaw`] types.
#[macro_export]
macro_rules! from_raw {
    ($($ty:ty),* $(,)?) => {
        $(
            impl<'de> serde::Deserialize<'de> for $ty {
                fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                    $crate::vocab::deserialize(d)
                }
            }
        )*
    };
}

/// A value and how it was written, for refusals by checks that involve several fields
/// (`"2s" is not accepted: use a timeout … at most the interval (1s)`). Two are equal when
/// their values are (`" 10.0.0.2"` and `"10.0.0.2"` are one address).
#[derive(Clone, Debug)]
pub struct Shown<T> {
    pub value: T,
    /// As written, e.g. `"2s"` or `251`.
    pub shown: String,
}

impl<T: PartialEq> PartialEq for Shown<T> {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}

impl<T> Shown<T> {
    /// A value given through the API (no text): shown the way it serialises.
    pub fn new(value: T) -> Self
    where
        T: fmt::Display,
    {
        let shown = value.to_string();
        Self { value, shown }
    }
}

impl<'de, T: FromRaw> serde::Deserialize<'de> for Shown<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = raw(d)?;
        let value = T::from_raw(&raw).map_err(de::Error::custom)?;
        Ok(Self {
            value,
            shown: raw.to_string(),
        })
    }
}

impl<T: serde::Serialize> serde::Serialize for Shown<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.value.serialize(s)
    }
}

/// `"a"`, `"a" or "b"`, `"a", "b" or "c"`.
pub fn one_of(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
    match quoted.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

/// At most `max` characters of `s`, quoted, for messages about input of any size.
pub fn excerpt(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((end, _)) => format!("{:?}...", &s[..end]),
        None => format!("{s:?}"),
    }
}

/// An enum whose values each have one name: in the config file, on the control socket, in
/// answers, metrics labels and messages. Gives `name()`, `NAMES`, `Display`, `FromStr`
/// (refusing with the accepted names) and serde.
#[macro_export]
macro_rules! named {
    (
        $(#[$meta:meta])*
        pub enum $ty:ident {
            $( $(#[$vmeta:meta])* $var:ident = $name:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $ty {
            $( $(#[$vmeta])* $var, )+
        }

        impl $ty {
            /// Every value, in declaration order.
            pub const ALL: &'static [$ty] = &[$($ty::$var),+];
            /// Every name, in declaration order.
            pub const NAMES: &'static [&'static str] = &[$($name),+];

            /// The name of this value.
            pub const fn name(self) -> &'static str {
                match self {
                    $( $ty::$var => $name, )+
                }
            }

            /// What is accepted: `"a", "b" or "c"`.
            pub fn accepted() -> String {
                $crate::vocab::one_of(Self::NAMES)
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }

        impl std::str::FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $( $name => Ok($ty::$var), )+
                    _ => Err(format!(
                        "{} is not accepted: use {}",
                        $crate::vocab::excerpt(s, 60),
                        Self::accepted()
                    )),
                }
            }
        }

        impl $crate::vocab::FromRaw for $ty {
            fn from_raw(raw: &$crate::vocab::Raw) -> Result<Self, String> {
                match raw {
                    $crate::vocab::Raw::Str(s) => s.parse(),
                    other => Err(other.refuse(&Self::accepted())),
                }
            }
        }

        $crate::from_raw!($ty);

        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.name())
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::named! {
        /// A test enum.
        pub enum Colour {
            Red = "red",
            /// Docs on a value.
            DarkBlue = "dark-blue",
        }
    }

    #[test]
    fn named_enums_have_one_name_each_way() {
        assert_eq!(Colour::DarkBlue.to_string(), "dark-blue");
        assert_eq!("red".parse::<Colour>(), Ok(Colour::Red));
        assert_eq!(
            "green".parse::<Colour>().unwrap_err(),
            "\"green\" is not accepted: use \"red\" or \"dark-blue\""
        );
        assert_eq!(serde_json::to_string(&Colour::Red).unwrap(), "\"red\"");
        let e = serde_json::from_str::<Colour>("5").unwrap_err().to_string();
        assert!(
            e.starts_with("5 is not accepted: use \"red\" or \"dark-blue\""),
            "{e}"
        );
        assert_eq!(Colour::ALL.len(), Colour::NAMES.len());
    }

    #[test]
    fn raw_values_are_shown_as_written() {
        let r = |json: &str| raw(&mut serde_json::Deserializer::from_str(json)).unwrap();
        assert_eq!(r("\"x\"").to_string(), "\"x\"");
        assert_eq!(r("-1").to_string(), "-1");
        assert_eq!(r("1.5").to_string(), "1.5");
        assert_eq!(r("true").to_string(), "true");
        assert_eq!(r("{\"a\":1}").to_string(), "a table");
        assert_eq!(r("[1,2]").to_string(), "an array");
        assert_eq!(r("null").to_string(), "null");
        assert_eq!(r("18446744073709551615"), Raw::Int(u64::MAX.into()));
        let t: std::collections::BTreeMap<String, Raw> =
            toml_edit::de::from_str("a = 00:30:00\nb = { c = 1 }").unwrap();
        assert_eq!(t["a"].to_string(), "the date/time 00:30:00");
        assert_eq!(t["b"], Raw::Table);
        assert_eq!(one_of(&["a"]), "\"a\"");
        assert_eq!(one_of(&["a", "b", "c"]), "\"a\", \"b\" or \"c\"");
        assert_eq!(excerpt("abcdef", 3), "\"abc\"...");
    }
}
