//! RFC 7515/8555 message signing with an ES256 (ECDSA P-256, SHA-256) account key: the
//! JWK and its RFC 7638 thumbprint, the flattened JWS that every ACME POST carries, and
//! base64url. Pure apart from the signature's randomness.

use openssl::bn::{BigNum, BigNumContext};
use openssl::ec::{EcGroup, EcKey};
use openssl::ecdsa::EcdsaSig;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::sha::sha256;
use serde_json::{json, Value};

/// An ACME account key (or a certificate key: the same curve serves both).
pub struct AccountKey {
    key: EcKey<Private>,
}

/// How the server knows the signer: the key itself (new account) or the account URL.
pub enum Signer<'a> {
    Jwk,
    Kid(&'a str),
}

impl AccountKey {
    pub fn generate() -> Result<AccountKey, String> {
        let group = p256()?;
        let key = EcKey::generate(&group).map_err(|e| e.to_string())?;
        Ok(AccountKey { key })
    }

    /// A PEM key as written by `to_pem`; it must be a P-256 EC key.
    pub fn from_pem(pem: &[u8]) -> Result<AccountKey, String> {
        let key = PKey::private_key_from_pem(pem)
            .and_then(|k| k.ec_key())
            .map_err(|e| format!("not an EC private key: {e}"))?;
        if key.group().curve_name() != Some(Nid::X9_62_PRIME256V1) {
            return Err("not a P-256 key".into());
        }
        Ok(AccountKey { key })
    }

    /// PKCS#8 PEM.
    pub fn to_pem(&self) -> Result<Vec<u8>, String> {
        PKey::from_ec_key(self.key.clone())
            .and_then(|k| k.private_key_to_pem_pkcs8())
            .map_err(|e| e.to_string())
    }

    pub fn pkey(&self) -> Result<PKey<Private>, String> {
        PKey::from_ec_key(self.key.clone()).map_err(|e| e.to_string())
    }

    /// The public key as a JWK, members in the lexicographic order RFC 7638 needs.
    pub fn jwk(&self) -> Result<Value, String> {
        let (x, y) = self.coordinates()?;
        Ok(jwk_of(&x, &y))
    }

    /// base64url(SHA-256(canonical JWK)): the account's part of a key authorization.
    pub fn thumbprint(&self) -> Result<String, String> {
        let (x, y) = self.coordinates()?;
        Ok(thumbprint_of(&x, &y))
    }

    fn coordinates(&self) -> Result<([u8; 32], [u8; 32]), String> {
        let mut ctx = BigNumContext::new().map_err(|e| e.to_string())?;
        let (mut x, mut y) = (new_bn()?, new_bn()?);
        self.key
            .public_key()
            .affine_coordinates(self.key.group(), &mut x, &mut y, &mut ctx)
            .map_err(|e| e.to_string())?;
        Ok((fixed32(&x)?, fixed32(&y)?))
    }

    /// The flattened JWS JSON for a POST to `url`; `payload` None is a POST-as-GET.
    pub fn sign(
        &self,
        url: &str,
        nonce: &str,
        signer: Signer<'_>,
        payload: Option<&Value>,
    ) -> Result<Vec<u8>, String> {
        let mut protected = json!({ "alg": "ES256", "nonce": nonce, "url": url });
        match signer {
            Signer::Jwk => protected["jwk"] = self.jwk()?,
            Signer::Kid(kid) => protected["kid"] = Value::from(kid),
        }
        let protected = b64url(protected.to_string().as_bytes());
        let payload = payload.map_or(String::new(), |p| b64url(p.to_string().as_bytes()));
        let input = format!("{protected}.{payload}");
        let digest = sha256(input.as_bytes());
        let sig = EcdsaSig::sign(&digest, &self.key).map_err(|e| e.to_string())?;
        let mut raw = fixed32(sig.r())?.to_vec();
        raw.extend_from_slice(&fixed32(sig.s())?);
        let body = json!({
            "protected": protected,
            "payload": payload,
            "signature": b64url(&raw),
        });
        Ok(body.to_string().into_bytes())
    }
}

fn p256() -> Result<EcGroup, String> {
    EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).map_err(|e| e.to_string())
}

fn new_bn() -> Result<BigNum, String> {
    BigNum::new().map_err(|e| e.to_string())
}

/// A P-256 coordinate or signature half as exactly 32 big-endian bytes.
fn fixed32(n: &openssl::bn::BigNumRef) -> Result<[u8; 32], String> {
    let v = n.to_vec_padded(32).map_err(|e| e.to_string())?;
    v.try_into()
        .map_err(|_| "value longer than 32 bytes".to_string())
}

fn jwk_of(x: &[u8], y: &[u8]) -> Value {
    json!({ "crv": "P-256", "kty": "EC", "x": b64url(x), "y": b64url(y) })
}

fn thumbprint_of(x: &[u8], y: &[u8]) -> String {
    // RFC 7638 §3: required members only, sorted, no whitespace. serde_json keeps a
    // `json!` object's keys sorted (BTreeMap), which this relies on; the test checks it.
    b64url(&sha256(jwk_of(x, y).to_string().as_bytes()))
}

/// base64url without padding (RFC 7515 §2).
pub fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::bn::BigNum;

    #[test]
    fn base64url_matches_rfc_4648_vectors_without_padding() {
        let cases: [(&[u8], &str); 7] = [
            (b"", ""),
            (b"f", "Zg"),
            (b"fo", "Zm8"),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg"),
            (b"fooba", "Zm9vYmE"),
            (&[0xfb, 0xff, 0xfe], "-__-"),
        ];
        for (input, want) in cases {
            assert_eq!(b64url(input), want);
        }
    }

    #[test]
    fn thumbprint_is_over_the_sorted_compact_jwk() {
        let (x, y) = ([1u8; 32], [2u8; 32]);
        let canonical = format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            b64url(&x),
            b64url(&y)
        );
        assert_eq!(jwk_of(&x, &y).to_string(), canonical);
        assert_eq!(thumbprint_of(&x, &y), b64url(&sha256(canonical.as_bytes())));
    }

    fn b64url_decode(s: &str) -> Vec<u8> {
        let std: String = s.replace('-', "+").replace('_', "/");
        let padded = format!("{std}{}", "=".repeat((4 - std.len() % 4) % 4));
        openssl::base64::decode_block(&padded).unwrap()
    }

    /// The JWS verifies with the public key, names the key or the account, and a
    /// POST-as-GET has an empty payload.
    #[test]
    fn signed_messages_verify_and_carry_their_header() {
        let key = AccountKey::generate().unwrap();
        let payload = json!({ "termsOfServiceAgreed": true });
        for (signer, payload) in [
            (Signer::Jwk, Some(&payload)),
            (Signer::Kid("https://a/1"), None),
        ] {
            let has_kid = matches!(signer, Signer::Kid(_));
            let body = key.sign("https://a/new", "n0nce", signer, payload).unwrap();
            let jws: Value = serde_json::from_slice(&body).unwrap();
            let (p, pl, s) = (
                jws["protected"].as_str().unwrap(),
                jws["payload"].as_str().unwrap(),
                jws["signature"].as_str().unwrap(),
            );
            let header: Value = serde_json::from_slice(&b64url_decode(p)).unwrap();
            assert_eq!(header["alg"], "ES256");
            assert_eq!(header["nonce"], "n0nce");
            assert_eq!(header["url"], "https://a/new");
            assert_eq!(header.get("kid").is_some(), has_kid);
            assert_eq!(header.get("jwk").is_some(), !has_kid);
            assert_eq!(pl.is_empty(), payload.is_none());
            let raw = b64url_decode(s);
            assert_eq!(raw.len(), 64);
            let sig = EcdsaSig::from_private_components(
                BigNum::from_slice(&raw[..32]).unwrap(),
                BigNum::from_slice(&raw[32..]).unwrap(),
            )
            .unwrap();
            let digest = sha256(format!("{p}.{pl}").as_bytes());
            assert!(sig.verify(&digest, &key.key).unwrap());
        }
    }

    #[test]
    fn keys_round_trip_through_pem() {
        let key = AccountKey::generate().unwrap();
        let again = AccountKey::from_pem(&key.to_pem().unwrap()).unwrap();
        assert_eq!(key.thumbprint().unwrap(), again.thumbprint().unwrap());
        assert!(AccountKey::from_pem(b"nonsense").is_err());
    }
}
