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

/// Values that encode to at most this many bytes are cut from a per-thread
/// block instead of getting an allocation of their own.
const SMALL_VALUE: usize = 1024;
/// Size of those blocks: one allocation per block, a few hundred small
/// messages each. A payload kept alive keeps its whole block alive, so
/// blocks stay small.
const VALUE_BLOCK: usize = 16 * 1024;

thread_local! {
    /// The rest of the current block (initialised memory, so that postcard
    /// can write into it without `unsafe`).
    static BLOCK: std::cell::RefCell<bytes::BytesMut> = std::cell::RefCell::new(bytes::BytesMut::new());
}

/// postcard-encodes `value`: a small value is written into the thread's
/// current block and split off it (no allocation per value, and cloning the
/// result allocates nothing either); a larger one (or one encoded while
/// another is, from inside a `Serialize` impl) gets its own buffer.
fn encode_small<T: Serialize + ?Sized>(value: &T) -> postcard::Result<Bytes> {
    let small = BLOCK.with(|b| {
        let Ok(mut block) = b.try_borrow_mut() else { return None };
        if block.len() < SMALL_VALUE {
            *block = bytes::BytesMut::zeroed(VALUE_BLOCK);
        }
        match postcard::to_slice(value, &mut block[..SMALL_VALUE]) {
            Ok(used) => {
                let n = used.len();
                Some(Ok(block.split_to(n).freeze()))
            }
            Err(postcard::Error::SerializeBufferFull) => None,
            Err(e) => Some(Err(e)),
        }
    });
    small.unwrap_or_else(|| postcard::to_allocvec(value).map(Bytes::from))
}

impl Codec {
    /// Encodes a value.
    pub fn encode<T: Serialize + ?Sized>(self, value: &T) -> Result<Bytes, Error> {
        let what = std::any::type_name::<T>();
        match self {
            Codec::Postcard => encode_small(value).map_err(|e| Error::Encode { what, message: e.to_string() }),
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
