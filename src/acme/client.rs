//! The RFC 8555 conversation for one certificate: directory, nonce, account, order,
//! HTTP-01 authorizations, finalize with a CSR, download. Reading the server's JSON is
//! done by small pure functions (tested below); `Session` only sends and waits.

use std::thread;
use std::time::{Duration, Instant};

use openssl::hash::MessageDigest;
use openssl::stack::Stack;
use openssl::x509::extension::SubjectAlternativeName;
use openssl::x509::{X509NameBuilder, X509ReqBuilder};
use serde_json::{json, Value};

use super::http::{Agent, Response};
use super::jws::{b64url, AccountKey, Signer};
use super::Challenges;

/// How long an order may take from the first POST to the certificate.
const ORDER_DEADLINE: Duration = Duration::from_secs(120);
/// Between two polls of a pending authorization or order, unless Retry-After says.
const POLL_EVERY: Duration = Duration::from_secs(1);
/// badNonce answers retried with the fresh nonce they carry (RFC 8555 §6.5).
const NONCE_RETRIES: usize = 3;

/// The directory's URLs that the flow uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directory {
    pub new_nonce: String,
    pub new_account: String,
    pub new_order: String,
}

pub fn parse_directory(doc: &Value) -> Result<Directory, String> {
    let url = |name: &str| {
        doc[name]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("the directory has no {name}"))
    };
    Ok(Directory {
        new_nonce: url("newNonce")?,
        new_account: url("newAccount")?,
        new_order: url("newOrder")?,
    })
}

/// The http-01 challenge of an authorization: (challenge URL, token).
pub fn http01_challenge(authz: &Value) -> Result<(String, String), String> {
    let challenges = authz["challenges"]
        .as_array()
        .map_or(&[][..], Vec::as_slice);
    let c = challenges
        .iter()
        .find(|c| c["type"] == "http-01")
        .ok_or("the authorization offers no http-01 challenge")?;
    let (Some(url), Some(token)) = (c["url"].as_str(), c["token"].as_str()) else {
        return Err("the http-01 challenge has no url or token".into());
    };
    // The token goes into a URL path: RFC 8555 §8.3 allows base64url characters only.
    if token.is_empty()
        || !token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(format!("bad challenge token {token:?}"));
    }
    Ok((url.to_string(), token.to_string()))
}

/// What a status field says: go on waiting, done, or failed (with the server's reason).
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    Waiting,
    Done,
    Failed(String),
}

/// An authorization's or order's status; `done` is the status that ends the wait.
pub fn progress(doc: &Value, done: &str) -> Progress {
    match doc["status"].as_str() {
        Some(s) if s == done => Progress::Done,
        Some("pending" | "processing" | "ready") => Progress::Waiting,
        Some(other) => Progress::Failed(format!("status {other}: {}", problem_of(doc))),
        None => Progress::Failed("no status".into()),
    }
}

/// The most useful text of an RFC 7807 problem, or of an object holding one in `error`
/// (or in a challenge's `error`).
pub fn problem_of(doc: &Value) -> String {
    let direct = |d: &Value| {
        d["detail"]
            .as_str()
            .map(|detail| format!("{} ({detail})", d["type"].as_str().unwrap_or("error")))
    };
    direct(doc)
        .or_else(|| direct(&doc["error"]))
        .or_else(|| {
            doc["challenges"]
                .as_array()
                .and_then(|cs| cs.iter().find_map(|c| direct(&c["error"])))
        })
        .unwrap_or_else(|| "no detail".into())
}

/// A DER CSR for `domains` (the first is the subject's CN) signed by `key`.
pub fn csr_der(domains: &[String], key: &AccountKey) -> Result<Vec<u8>, String> {
    let e = |e: openssl::error::ErrorStack| e.to_string();
    let pkey = key.pkey()?;
    let mut req = X509ReqBuilder::new().map_err(e)?;
    req.set_pubkey(&pkey).map_err(e)?;
    let mut name = X509NameBuilder::new().map_err(e)?;
    let first = domains.first().ok_or("no domain")?;
    name.append_entry_by_text("CN", first).map_err(e)?;
    req.set_subject_name(&name.build()).map_err(e)?;
    let mut san = SubjectAlternativeName::new();
    for d in domains {
        san.dns(d);
    }
    let ext = san.build(&req.x509v3_context(None)).map_err(e)?;
    let mut exts = Stack::new().map_err(e)?;
    exts.push(ext).map_err(e)?;
    req.add_extensions(&exts).map_err(e)?;
    req.sign(&pkey, MessageDigest::sha256()).map_err(e)?;
    req.build().to_der().map_err(e)
}

fn json_of(resp: &Response) -> Result<Value, String> {
    serde_json::from_slice(&resp.body).map_err(|e| format!("not JSON ({e})"))
}

/// Retry-After in seconds, capped, else the default poll interval.
fn retry_after(resp: &Response) -> Duration {
    resp.header("retry-after")
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(POLL_EVERY, |s| Duration::from_secs(s.clamp(1, 10)))
}

/// One account's conversation with one ACME server.
pub struct Session<'a> {
    pub agent: &'a Agent,
    pub key: &'a AccountKey,
    dir: Directory,
    nonce: Option<String>,
    kid: Option<String>,
}

impl<'a> Session<'a> {
    /// Reads the directory and registers (or finds) the account.
    pub fn open(
        agent: &'a Agent,
        key: &'a AccountKey,
        directory_url: &str,
    ) -> Result<Self, String> {
        let resp = agent.request("GET", directory_url, None)?;
        if resp.status != 200 {
            return Err(format!("{directory_url}: status {}", resp.status));
        }
        let dir = parse_directory(&json_of(&resp)?)?;
        let mut s = Session {
            agent,
            key,
            dir,
            nonce: None,
            kid: None,
        };
        let url = s.dir.new_account.clone();
        let resp = s.post(&url, Some(&json!({ "termsOfServiceAgreed": true })))?;
        if resp.status != 200 && resp.status != 201 {
            return Err(format!(
                "account: status {}: {}",
                resp.status,
                problem_of(&json_of(&resp)?)
            ));
        }
        s.kid = Some(
            resp.header("location")
                .ok_or("account: no Location")?
                .to_string(),
        );
        Ok(s)
    }

    /// Orders, proves and downloads a certificate for `domains` with `cert_key`: the PEM
    /// chain.
    pub fn certificate(
        &mut self,
        domains: &[String],
        cert_key: &AccountKey,
        challenges: &Challenges,
    ) -> Result<Vec<u8>, String> {
        let deadline = Instant::now() + ORDER_DEADLINE;
        let ids: Vec<Value> = domains
            .iter()
            .map(|d| json!({ "type": "dns", "value": d }))
            .collect();
        let url = self.dir.new_order.clone();
        let resp = self.post(&url, Some(&json!({ "identifiers": ids })))?;
        let order = json_of(&resp)?;
        if resp.status != 201 {
            return Err(format!(
                "new order: status {}: {}",
                resp.status,
                problem_of(&order)
            ));
        }
        let order_url = resp
            .header("location")
            .ok_or("order: no Location")?
            .to_string();
        let authzs: Vec<String> = order["authorizations"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|u| u.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        for authz in &authzs {
            self.authorize(authz, challenges, deadline)?;
        }
        let finalize = order["finalize"]
            .as_str()
            .ok_or("order: no finalize URL")?
            .to_string();
        let csr = b64url(&csr_der(domains, cert_key)?);
        let resp = self.post(&finalize, Some(&json!({ "csr": csr })))?;
        if resp.status != 200 {
            return Err(format!(
                "finalize: status {}: {}",
                resp.status,
                problem_of(&json_of(&resp)?)
            ));
        }
        let order = self.wait(&order_url, "valid", deadline)?;
        let cert_url = order["certificate"]
            .as_str()
            .ok_or("order: no certificate URL")?;
        let resp = self.post(cert_url, None)?;
        if resp.status != 200 {
            return Err(format!("certificate download: status {}", resp.status));
        }
        Ok(resp.body)
    }

    /// Answers one authorization's http-01 challenge and waits until it is valid.
    fn authorize(
        &mut self,
        url: &str,
        challenges: &Challenges,
        deadline: Instant,
    ) -> Result<(), String> {
        let authz = json_of(&self.post(url, None)?)?;
        if progress(&authz, "valid") == Progress::Done {
            return Ok(()); // reused from an earlier order
        }
        let (challenge_url, token) = http01_challenge(&authz)?;
        let key_authorization = format!("{token}.{}", self.key.thumbprint()?);
        challenges.publish(&token, &key_authorization);
        let result = self
            .post(&challenge_url, Some(&json!({})))
            .and_then(|_| self.wait(url, "valid", deadline).map(drop));
        challenges.withdraw(&token);
        let name = authz["identifier"]["value"].as_str().unwrap_or("?");
        result.map_err(|e| format!("authorization of {name}: {e}"))
    }

    /// Polls `url` (POST-as-GET) until its status is `done`.
    fn wait(&mut self, url: &str, done: &str, deadline: Instant) -> Result<Value, String> {
        loop {
            let resp = self.post(url, None)?;
            let doc = json_of(&resp)?;
            match progress(&doc, done) {
                Progress::Done => return Ok(doc),
                Progress::Failed(why) => return Err(why),
                Progress::Waiting if Instant::now() >= deadline => {
                    return Err(format!("still {} after {ORDER_DEADLINE:?}", doc["status"]))
                }
                Progress::Waiting => thread::sleep(retry_after(&resp)),
            }
        }
    }

    /// A signed POST (None: POST-as-GET), retried on badNonce.
    fn post(&mut self, url: &str, payload: Option<&Value>) -> Result<Response, String> {
        for _ in 0..NONCE_RETRIES {
            let nonce = match self.nonce.take() {
                Some(n) => n,
                None => self.fresh_nonce()?,
            };
            let signer = self.kid.as_deref().map_or(Signer::Jwk, Signer::Kid);
            let body = self.key.sign(url, &nonce, signer, payload)?;
            let resp = self.agent.request("POST", url, Some(&body))?;
            self.nonce = resp.header("replay-nonce").map(str::to_string);
            let bad_nonce = resp.status == 400
                && json_of(&resp).is_ok_and(|p| p["type"] == "urn:ietf:params:acme:error:badNonce");
            if !bad_nonce {
                return Ok(resp);
            }
        }
        Err(format!("{url}: the server kept refusing our nonces"))
    }

    fn fresh_nonce(&self) -> Result<String, String> {
        let resp = self.agent.request("HEAD", &self.dir.new_nonce, None)?;
        resp.header("replay-nonce")
            .map(str::to_string)
            .ok_or_else(|| "newNonce: no Replay-Nonce".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_needs_the_three_urls() {
        let doc = json!({"newNonce": "https://a/n", "newAccount": "https://a/a", "newOrder": "https://a/o", "meta": {}});
        assert_eq!(parse_directory(&doc).unwrap().new_order, "https://a/o");
        let e = parse_directory(&json!({"newNonce": "x", "newAccount": "y"})).unwrap_err();
        assert!(e.contains("newOrder"), "{e}");
    }

    #[test]
    fn the_http01_challenge_is_picked_and_its_token_checked() {
        let authz = json!({"challenges": [
            {"type": "dns-01", "url": "https://a/c/1", "token": "t1"},
            {"type": "http-01", "url": "https://a/c/2", "token": "Ab-_9"},
        ]});
        assert_eq!(
            http01_challenge(&authz).unwrap(),
            ("https://a/c/2".into(), "Ab-_9".into())
        );
        let only_dns = json!({"challenges": [{"type": "dns-01", "url": "u", "token": "t"}]});
        assert!(http01_challenge(&only_dns).is_err());
        let bad = json!({"challenges": [{"type": "http-01", "url": "u", "token": "../etc"}]});
        assert!(http01_challenge(&bad).is_err());
    }

    #[test]
    fn status_and_problems_are_read() {
        assert_eq!(
            progress(&json!({"status": "valid"}), "valid"),
            Progress::Done
        );
        assert_eq!(
            progress(&json!({"status": "pending"}), "valid"),
            Progress::Waiting
        );
        assert_eq!(
            progress(&json!({"status": "ready"}), "valid"),
            Progress::Waiting
        );
        let invalid = json!({"status": "invalid", "challenges": [{"error": {
            "type": "urn:ietf:params:acme:error:connection", "detail": "refused"}}]});
        assert_eq!(
            progress(&invalid, "valid"),
            Progress::Failed(
                "status invalid: urn:ietf:params:acme:error:connection (refused)".into()
            )
        );
        assert_eq!(problem_of(&json!({"detail": "d", "type": "t"})), "t (d)");
        assert_eq!(problem_of(&json!({})), "no detail");
    }

    #[test]
    fn csr_names_every_domain() {
        let key = AccountKey::generate().unwrap();
        let domains = vec!["a.test".to_string(), "b.test".to_string()];
        let der = csr_der(&domains, &key).unwrap();
        let req = openssl::x509::X509Req::from_der(&der).unwrap();
        assert!(req.verify(&key.pkey().unwrap()).unwrap());
        let text = String::from_utf8_lossy(&req.to_text().unwrap()).into_owned();
        assert!(
            text.contains("DNS:a.test") && text.contains("DNS:b.test"),
            "{text}"
        );
    }
}
