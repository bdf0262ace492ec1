//! RFC 6901 JSON pointers, and finding what they point at in a body
//! without parsing it into a tree.
//!
//! A body is parsed once as [`RawValue`] (which checks all of it is
//! JSON); a [`Lookup`] then walks the objects and arrays on the way to
//! the map's pointers, reading each of them once for every pointer that
//! passes through it, and hands out the raw text found at each pointer.
//! Numbers stay their exact text (nothing goes through `f64`), nothing is
//! allocated per value, and the work is bounded by the body's size times
//! the depth of the deepest pointer.
//!
//! A key that appears twice in an object on the way is reported, not
//! resolved to one of its values: which one a provider meant is unknown.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// A parsed JSON pointer, such as `/data/object/id` (RFC 6901: `~1` is
/// `/` and `~0` is `~` inside a token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pointer {
    text: String,
    tokens: Vec<String>,
}

/// Why a text is not a usable JSON pointer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PointerError {
    /// The empty pointer names the whole body, which is never a field.
    #[error("is empty; a pointer names a place inside the body, such as \"/data/object/id\"")]
    Empty,
    /// Every token starts with `/`.
    #[error("must start with \"/\", such as \"/data/object/id\"")]
    NoLeadingSlash,
    /// `~` must be followed by `0` or `1`.
    #[error("has a \"~\" not followed by 0 or 1 (write \"~0\" for \"~\" and \"~1\" for \"/\")")]
    BadEscape,
}

impl Pointer {
    /// Parses `text` as an RFC 6901 pointer into the body.
    ///
    /// # Errors
    /// The empty pointer, one not starting with `/`, or a bad `~` escape.
    pub fn parse(text: &str) -> Result<Pointer, PointerError> {
        if text.is_empty() {
            return Err(PointerError::Empty);
        }
        let rest = text.strip_prefix('/').ok_or(PointerError::NoLeadingSlash)?;
        let tokens = rest
            .split('/')
            .map(|token| {
                let mut out = String::with_capacity(token.len());
                let mut chars = token.chars();
                while let Some(c) = chars.next() {
                    match c {
                        '~' => match chars.next() {
                            Some('0') => out.push('~'),
                            Some('1') => out.push('/'),
                            _ => return Err(PointerError::BadEscape),
                        },
                        c => out.push(c),
                    }
                }
                Ok(out)
            })
            .collect::<Result<_, _>>()?;
        Ok(Pointer {
            text: text.to_owned(),
            tokens,
        })
    }

    /// The pointer as written.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Pointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// What a body holds at one pointer.
#[derive(Debug, Clone, Copy)]
pub enum Found<'a> {
    /// Nothing: a key or an index on the way is missing, or a value on
    /// the way is not an object or array.
    Missing,
    /// The raw JSON text of the value (may be `null`).
    Value(&'a RawValue),
    /// A key on the way appears more than once in its object.
    Ambiguous,
}

/// The pointers of a map, merged into one tree so that each object or
/// array on the way to several of them is read once.
#[derive(Debug, Clone, Default)]
pub struct Lookup {
    nodes: Vec<Node>,
    /// How many pointers were added: the length of every answer.
    pointers: usize,
}

#[derive(Debug, Clone, Default)]
struct Node {
    /// Token → child node; a handful at most, so a list.
    children: Vec<Child>,
    /// The pointers that end here.
    ends: Vec<usize>,
}

#[derive(Debug, Clone)]
struct Child {
    token: String,
    /// The token as an array index, where it is one (`0`, or digits
    /// without a leading zero).
    index: Option<usize>,
    node: usize,
}

impl Lookup {
    /// Adds a pointer; returns its slot in [`Lookup::resolve`]'s answer.
    pub fn add(&mut self, pointer: &Pointer) -> usize {
        if self.nodes.is_empty() {
            self.nodes.push(Node::default());
        }
        let mut at = 0;
        for token in &pointer.tokens {
            let existing = self.nodes[at].children.iter().find(|c| c.token == *token);
            at = if let Some(child) = existing {
                child.node
            } else {
                let node = self.nodes.len();
                self.nodes.push(Node::default());
                self.nodes[at].children.push(Child {
                    token: token.clone(),
                    index: array_index(token),
                    node,
                });
                node
            };
        }
        let slot = self.pointers;
        self.nodes[at].ends.push(slot);
        self.pointers += 1;
        slot
    }

    /// What `body` holds at each pointer, by slot.
    ///
    /// # Errors
    /// Only if `body` is not valid JSON, which a `RawValue` always is.
    pub fn resolve<'a>(&self, body: &'a RawValue) -> Result<Vec<Found<'a>>, serde_json::Error> {
        let mut found = vec![Found::Missing; self.pointers];
        if !self.nodes.is_empty() {
            self.walk(0, body, &mut found)?;
        }
        Ok(found)
    }

    fn walk<'a>(
        &self,
        at: usize,
        value: &'a RawValue,
        found: &mut [Found<'a>],
    ) -> Result<(), serde_json::Error> {
        let node = &self.nodes[at];
        for &slot in &node.ends {
            found[slot] = Found::Value(value);
        }
        if node.children.is_empty() {
            return Ok(());
        }
        let mut scan = Scan {
            children: &node.children,
            values: vec![None; node.children.len()],
            repeated: vec![false; node.children.len()],
        };
        let text = value.get();
        let mut deserializer = serde_json::Deserializer::from_str(text);
        match text.trim_start().as_bytes().first() {
            Some(b'{') => deserializer.deserialize_map(&mut scan)?,
            Some(b'[') => deserializer.deserialize_seq(&mut scan)?,
            // A scalar has nothing inside it.
            _ => return Ok(()),
        }
        for (i, child) in node.children.iter().enumerate() {
            if scan.repeated[i] {
                self.mark_ambiguous(child.node, found);
            } else if let Some(value) = scan.values[i] {
                self.walk(child.node, value, found)?;
            }
        }
        Ok(())
    }

    fn mark_ambiguous(&self, at: usize, found: &mut [Found<'_>]) {
        let node = &self.nodes[at];
        for &slot in &node.ends {
            found[slot] = Found::Ambiguous;
        }
        for child in &node.children {
            self.mark_ambiguous(child.node, found);
        }
    }
}

/// A token as an array index: `0`, or digits not starting with `0` (RFC 6901).
fn array_index(token: &str) -> Option<usize> {
    let canonical = !token.is_empty()
        && token.bytes().all(|b| b.is_ascii_digit())
        && (token == "0" || !token.starts_with('0'));
    if canonical { token.parse().ok() } else { None }
}

/// One pass over an object or array, keeping the values of the children's
/// tokens and noting a key seen twice.
struct Scan<'n, 'a> {
    children: &'n [Child],
    values: Vec<Option<&'a RawValue>>,
    repeated: Vec<bool>,
}

impl Scan<'_, '_> {
    fn keep<'a>(slot: &mut Option<&'a RawValue>, repeated: &mut bool, value: &'a RawValue) {
        if slot.is_some() {
            *repeated = true;
        }
        *slot = Some(value);
    }
}

impl<'de> Visitor<'de> for &mut Scan<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object or array")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(matched) = map.next_key_seed(KeyMatch(self.children))? {
            match matched {
                Some(i) => {
                    let value: &'de RawValue = map.next_value()?;
                    Scan::keep(&mut self.values[i], &mut self.repeated[i], value);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let last = self.children.iter().filter_map(|c| c.index).max();
        let mut index = 0;
        while last.is_some_and(|last| index <= last) {
            let Some(value) = seq.next_element::<&'de RawValue>()? else {
                return Ok(());
            };
            for (i, child) in self.children.iter().enumerate() {
                if child.index == Some(index) {
                    self.values[i] = Some(value);
                }
            }
            index += 1;
        }
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(())
    }
}

/// Reads an object key and says which child's token it is, if any,
/// without allocating.
struct KeyMatch<'n>(&'n [Child]);

impl<'de> DeserializeSeed<'de> for KeyMatch<'_> {
    type Value = Option<usize>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Option<usize>, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for KeyMatch<'_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Option<usize>, E> {
        Ok(self.0.iter().position(|child| child.token == key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(pointers: &[&str]) -> Lookup {
        let mut lookup = Lookup::default();
        for (slot, text) in pointers.iter().enumerate() {
            assert_eq!(lookup.add(&Pointer::parse(text).unwrap()), slot);
        }
        lookup
    }

    /// The raw text at each pointer (`-` missing, `?` ambiguous).
    fn texts(pointers: &[&str], body: &str) -> Vec<String> {
        let raw: &RawValue = serde_json::from_str(body).unwrap();
        lookup(pointers)
            .resolve(raw)
            .unwrap()
            .into_iter()
            .map(|found| match found {
                Found::Missing => "-".to_owned(),
                Found::Value(v) => v.get().to_owned(),
                Found::Ambiguous => "?".to_owned(),
            })
            .collect()
    }

    #[test]
    fn pointers_follow_rfc_6901() {
        assert_eq!(Pointer::parse("/a~1b/c~0d").unwrap().tokens, ["a/b", "c~d"]);
        assert_eq!(Pointer::parse("/").unwrap().tokens, [""]);
        assert_eq!(Pointer::parse("//x").unwrap().tokens, ["", "x"]);
        assert_eq!(Pointer::parse(""), Err(PointerError::Empty));
        assert_eq!(Pointer::parse("data/id"), Err(PointerError::NoLeadingSlash));
        assert_eq!(Pointer::parse("/a~2"), Err(PointerError::BadEscape));
        assert_eq!(Pointer::parse("/a~"), Err(PointerError::BadEscape));
    }

    #[test]
    fn values_are_found_as_their_exact_text() {
        let body = r#"{"type":"x","data":{"object":{"id":"pi_1","amount":150050,"big":12345678901234567890123.4500,"n":null}},"list":[{"k":1},{"k":2.50}]}"#;
        assert_eq!(
            texts(
                &[
                    "/data/object/id",
                    "/data/object/amount",
                    "/data/object/big",
                    "/type",
                    "/data/object/n",
                    "/list/1/k",
                    "/data/object",
                ],
                body
            ),
            [
                r#""pi_1""#,
                "150050",
                "12345678901234567890123.4500",
                r#""x""#,
                "null",
                "2.50",
                r#"{"id":"pi_1","amount":150050,"big":12345678901234567890123.4500,"n":null}"#,
            ]
        );
    }

    #[test]
    fn what_is_not_there_is_missing() {
        let body = r#"{"a":{"b":1},"s":"text","list":[1,2]}"#;
        assert_eq!(
            texts(
                &[
                    "/x", "/a/x", "/s/0", "/a/b/c", "/list/2", "/list/-", "/list/01", "/list/x"
                ],
                body
            ),
            ["-"; 8]
        );
    }

    #[test]
    fn a_repeated_key_on_the_way_is_ambiguous() {
        let body = r#"{"data":{"id":"a"},"data":{"id":"b"},"type":"t","o":{"id":1,"id":2,"k":3}}"#;
        assert_eq!(
            texts(&["/data/id", "/type", "/o/id", "/o/k"], body),
            ["?", r#""t""#, "?", "3"]
        );
    }

    #[test]
    fn escaped_keys_match_their_decoded_tokens() {
        let body = r#"{"a/b":{"c~d":1},"\u0069d":"x"}"#;
        assert_eq!(texts(&["/a~1b/c~0d", "/id"], body), ["1", r#""x""#]);
    }

    #[test]
    fn values_come_without_the_whitespace_around_them() {
        let body = "{ \"a\" :\n\t null , \"b\" : [ 1 ,\r\n 2.50 ] , \"c\":\"x\"  }";
        assert_eq!(
            texts(&["/a", "/b/1", "/c"], body),
            ["null", "2.50", "\"x\""]
        );
    }

    #[test]
    fn shared_prefixes_and_repeated_pointers_both_get_answers() {
        let body = r#"{"a":{"b":1,"c":2}}"#;
        assert_eq!(texts(&["/a/b", "/a/c", "/a/b"], body), ["1", "2", "1"]);
    }
}
