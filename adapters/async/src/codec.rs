//! Payload encodings: postcard by default, JSON on request, raw bytes always.

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use wharf_core::Metadata;

use crate::error::Error;

/// Metadata key naming the payload encoding of a call (absent: postcard).
pub const CONTENT_TYPE: &str = "content-type";

/// How typed values become payload bytes. The callee answers in the codec
/// the call used (announced in the `content-type` metadata entry), so a
/// JSON client can talk to any server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Codec {
    /// [postcard](https://docs.rs/postcard): compact, stable wire format.
    #[default]
    Postcard,
    /// JSON (serde_json), for debugging and other languages.
    #[cfg(feature = "json")]
    Json,
}

impl Codec {
    /// Encodes a value.
    pub fn encode<T: Serialize + ?Sized>(self, value: &T) -> Result<Bytes, Error> {
        let what = std::any::type_name::<T>();
        match self {
            Codec::Postcard => postcard::to_allocvec(value)
                .map(Bytes::from)
                .map_err(|e| Error::Encode { what, message: e.to_string() }),
            #[cfg(feature = "json")]
            Codec::Json => {
                serde_json::to_vec(value).map(Bytes::from).map_err(|e| Error::Encode { what, message: e.to_string() })
            }
        }
    }

    /// Decodes a value.
    pub fn decode<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<T, Error> {
        let what = std::any::type_name::<T>();
        match self {
            Codec::Postcard => postcard::from_bytes(bytes).map_err(|e| Error::Decode { what, message: e.to_string() }),
            #[cfg(feature = "json")]
            Codec::Json => serde_json::from_slice(bytes).map_err(|e| Error::Decode { what, message: e.to_string() }),
        }
    }

    /// The `content-type` value announcing this codec (none for the default).
    pub fn content_type(self) -> Option<&'static str> {
        match self {
            Codec::Postcard => None,
            #[cfg(feature = "json")]
            Codec::Json => Some("json"),
        }
    }

    /// The codec a call announced in its metadata.
    pub fn from_metadata(metadata: &Metadata) -> Result<Codec, Error> {
        match metadata.get(CONTENT_TYPE).map(|v| &v[..]) {
            None | Some(b"postcard") => Ok(Codec::Postcard),
            #[cfg(feature = "json")]
            Some(b"json") => Ok(Codec::Json),
            Some(other) => {
                Err(Error::invalid_request(format!("unsupported content-type {:?}", String::from_utf8_lossy(other))))
            }
        }
    }

    pub(crate) fn tag(self, metadata: &mut Metadata) {
        if let Some(ct) = self.content_type()
            && metadata.get(CONTENT_TYPE).is_none()
        {
            metadata.insert(CONTENT_TYPE, Bytes::from_static(ct.as_bytes()));
        }
    }
}
