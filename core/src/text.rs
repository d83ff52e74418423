//! [`Text`]: a UTF-8 string that shares the bytes of the frame it came from.

use std::fmt;
use std::ops::Deref;

use bytes::Bytes;
use bytestring::ByteString;

/// A UTF-8 string backed by reference-counted [`Bytes`].
///
/// Method names, topics and metadata keys decoded from a frame are slices of
/// that frame's buffer: no copy and no allocation. Building one from a
/// `&'static str` is free as well; from a `String` it takes ownership of the
/// string's buffer.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Text(ByteString);

// Hash exactly as `str` does, so that maps keyed by `Text` can be queried
// with a `&str` (the `Borrow<str>` contract).
impl std::hash::Hash for Text {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}

impl Text {
    /// An empty string.
    pub const fn new() -> Self {
        Text(ByteString::new())
    }

    /// A `Text` pointing at static memory (no allocation).
    pub const fn from_static(s: &'static str) -> Self {
        Text(ByteString::from_static(s))
    }

    /// Validates `bytes` as UTF-8 without copying them.
    pub fn from_utf8(bytes: Bytes) -> Result<Self, std::str::Utf8Error> {
        ByteString::try_from(bytes).map(Text)
    }

    /// The string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The underlying bytes (a cheap reference-counted clone).
    pub fn as_bytes(&self) -> &Bytes {
        self.0.as_bytes()
    }

    /// Converts into the underlying bytes.
    pub fn into_bytes(self) -> Bytes {
        self.0.into_bytes()
    }
}

impl Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Text {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for Text {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<&'static str> for Text {
    fn from(s: &'static str) -> Self {
        Text::from_static(s)
    }
}

impl From<String> for Text {
    fn from(s: String) -> Self {
        Text(ByteString::from(s))
    }
}

impl From<&String> for Text {
    fn from(s: &String) -> Self {
        Text(ByteString::from(s.as_str()))
    }
}

impl PartialEq<str> for Text {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Text {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.as_str(), f)
    }
}
