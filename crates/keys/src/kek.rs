use std::fmt;
use std::fmt::Write as _;
use std::path::Path;

use aws_lc_rs::aead::{AES_256_GCM, Aad, NONCE_LEN, Nonce, RandomizedNonceKey};
use base64::Engine as _;
use base64::alphabet;
use base64::engine::general_purpose::STANDARD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use crate::{Error, Result};

/// Length of a KEK: AES-256.
pub const KEK_LEN: usize = 32;
/// First byte of every blob, so the format can change later without guessing.
const BLOB_VERSION: u8 = 1;
/// AES-GCM tag length.
const TAG_LEN: usize = 16;

/// Standard-alphabet base64 that accepts input with or without `=` padding (operators paste
/// keys from different tools).
const LENIENT_STANDARD: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The key-encryption key for data at rest (stored private signing keys, Secret data).
///
/// AES-256-GCM with a fresh random 96-bit nonce per blob. Random nonces are safe here because
/// one KEK seals far fewer than 2^32 blobs; a counter would need state shared by every writer.
/// Blob format: `0x01 || nonce (12 bytes) || ciphertext || tag (16 bytes)`. The caller's `aad`
/// is authenticated but not stored: it should name what the blob is (e.g. the record key), so a
/// blob copied into another record fails to decrypt.
///
/// `Debug` shows only the non-secret [`id`](Kek::id).
pub struct Kek {
    key: RandomizedNonceKey,
    id: String,
}

impl Kek {
    /// A KEK from exactly 32 raw bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.len() != KEK_LEN {
            return Err(Error::InvalidKek(format!(
                "must be {KEK_LEN} bytes (AES-256), got {}",
                bytes.len()
            )));
        }
        let key = RandomizedNonceKey::new(&AES_256_GCM, bytes)
            .map_err(|_| Error::Crypto("creating an AES-256-GCM key"))?;
        Ok(Kek {
            key,
            id: fingerprint(bytes),
        })
    }

    /// A KEK from base64 (standard alphabet, padding optional) of exactly 32 bytes; surrounding
    /// whitespace is ignored. Errors never echo the input.
    pub fn from_base64(text: &str) -> Result<Self> {
        let bytes = Zeroizing::new(
            LENIENT_STANDARD
                .decode(text.trim())
                .map_err(|_| Error::InvalidKek("not valid base64".to_owned()))?,
        );
        Self::from_bytes(&bytes)
    }

    /// Reads a KEK file holding the base64 of 32 bytes. Errors name the path, never the content.
    pub fn from_file(path: &Path) -> Result<Self> {
        let file_error = |reason: String| Error::KekFile {
            path: path.to_path_buf(),
            reason,
        };
        let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| file_error(e.to_string()))?);
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| file_error("does not hold base64 text".to_owned()))?;
        Self::from_base64(text).map_err(|e| match e {
            Error::InvalidKek(reason) => file_error(reason),
            other => other,
        })
    }

    /// A new random KEK and its base64 (standard, padded) to write to a KEK file. The base64 is
    /// wiped when dropped.
    pub fn generate() -> Result<(Kek, Zeroizing<String>)> {
        let mut bytes = Zeroizing::new([0u8; KEK_LEN]);
        aws_lc_rs::rand::fill(&mut bytes[..])
            .map_err(|_| Error::Crypto("generating random bytes"))?;
        let kek = Self::from_bytes(&bytes[..])?;
        let mut text = Zeroizing::new(String::with_capacity(
            base64::encoded_len(KEK_LEN, true).unwrap_or(64),
        ));
        STANDARD.encode_string(&bytes[..], &mut text);
        Ok((kek, text))
    }

    /// A short, non-secret fingerprint (16 hex digits: the first 8 bytes of
    /// SHA-256("badge-kek" || key)), recorded next to each blob so the store can tell which KEK
    /// sealed it. The domain prefix keeps it unrelated to any other hash of the key.
    pub fn id(&self) -> String {
        self.id.clone()
    }

    /// Encrypts `plaintext`, authenticating `aad` too. Returns `0x01 || nonce || ct || tag`.
    ///
    /// Fails only if the random number generator or the cipher fails (or the plaintext exceeds
    /// AES-GCM's 64 GiB limit); it never returns unencrypted data.
    pub fn encrypt(&self, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>> {
        let mut in_out = Vec::with_capacity(plaintext.len() + TAG_LEN);
        in_out.extend_from_slice(plaintext);
        let nonce = self
            .key
            .seal_in_place_append_tag(Aad::from(aad), &mut in_out)
            .map_err(|_| Error::Crypto("AES-256-GCM encryption"))?;
        let mut blob = Vec::with_capacity(1 + NONCE_LEN + in_out.len());
        blob.push(BLOB_VERSION);
        blob.extend_from_slice(nonce.as_ref());
        blob.extend_from_slice(&in_out);
        Ok(blob)
    }

    /// Decrypts a blob from [`encrypt`](Self::encrypt) with the same `aad`. A wrong KEK, a
    /// changed byte, a wrong `aad`, a truncated blob or an unknown version all give
    /// [`Error::Decrypt`]; the caller never sees unauthenticated plaintext.
    pub fn decrypt(&self, blob: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        let Some((&version, rest)) = blob.split_first() else {
            return Err(Error::Decrypt);
        };
        if version != BLOB_VERSION || rest.len() < NONCE_LEN + TAG_LEN {
            return Err(Error::Decrypt);
        }
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| Error::Decrypt)?;
        let mut buf = Zeroizing::new(sealed.to_vec());
        let len = self
            .key
            .open_in_place(nonce, Aad::from(aad), &mut buf[..])
            .map_err(|_| Error::Decrypt)?
            .len();
        buf.truncate(len);
        Ok(buf)
    }
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kek")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

fn fingerprint(key: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"badge-kek");
    hasher.update(key);
    let digest = hasher.finalize();
    let mut id = String::with_capacity(16);
    for b in &digest[..8] {
        // Writing to a String cannot fail.
        let _ = write!(id, "{b:02x}");
    }
    id
}

/// The KEK seals Secret data at rest for the store.
impl badge_core::seal::DataSealer for Kek {
    fn seal(&self, plaintext: &[u8], aad: &[u8]) -> std::result::Result<Vec<u8>, String> {
        self.encrypt(plaintext, aad).map_err(|e| e.to_string())
    }

    fn open(&self, sealed: &[u8], aad: &[u8]) -> std::result::Result<Vec<u8>, String> {
        self.decrypt(sealed, aad)
            .map(|z| z.to_vec())
            .map_err(|e| e.to_string())
    }
}

impl Kek {
    /// From a file or an inline base64 value (the file wins); `None` when neither
    /// is configured.
    pub fn load(file: Option<&Path>, inline: Option<&str>) -> Result<Option<Kek>> {
        match (file, inline) {
            (Some(p), _) => Kek::from_file(p).map(Some),
            (None, Some(b64)) => Kek::from_base64(b64).map(Some),
            (None, None) => Ok(None),
        }
    }
}
