//! Secrets: [`Secret`] and [`SecretUrl`] are redacted in `Debug`, `Display` and serialization;
//! URLs that may carry credentials are shown only through [`redact_url`]: the password of the
//! userinfo and every query value not on [`URL_QUERY_ALLOW_LIST`] become `***`.

use std::fmt;

use serde::{Deserialize, Serialize, Serializer};

/// A secret string: redacted in `Debug`, `Display` and serialization (check-config output).
/// Exposed only where a request or connection is built, through [`Secret::expose`].
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// What logs may show: empty stays empty, a database or HTTP URL is shown through
    /// [`redact_url`] (user and host kept, password and unlisted query values hidden), anything
    /// else becomes `***`.
    pub fn redacted(&self) -> String {
        if self.0.is_empty() {
            return String::new();
        }
        let lower = self.0.to_ascii_lowercase();
        if ["mongodb://", "mongodb+srv://", "http://", "https://"]
            .iter()
            .any(|p| lower.starts_with(p))
        {
            redact_url(&self.0)
        } else {
            "***".to_string()
        }
    }
}

/// A URL that may carry credentials (userinfo, a key in the query string): shown everywhere
/// (logs, `check-config`, errors, `/ready` reasons) only through [`redact_url`].
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The URL itself, only where a request or connection is built.
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn redacted(&self) -> String {
        redact_url(&self.0)
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretUrl({:?})", self.redacted())
    }
}
impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}
impl Serialize for SecretUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}

/// Query parameters whose values are shown: connection options that are never secret. Every
/// other parameter keeps its name and shows `***` (`tlsCertificateKeyFilePassword`, `key`, …).
pub const URL_QUERY_ALLOW_LIST: &[&str] = &[
    "authSource",
    "authMechanism",
    "replicaSet",
    "tls",
    "ssl",
    "tlsAllowInvalidCertificates",
    "tlsAllowInvalidHostnames",
    "tlsInsecure",
    "retryWrites",
    "retryReads",
    "w",
    "wtimeoutMS",
    "journal",
    "appName",
    "directConnection",
    "loadBalanced",
    "readPreference",
    "readConcernLevel",
    "maxPoolSize",
    "minPoolSize",
    "maxIdleTimeMS",
    "connectTimeoutMS",
    "socketTimeoutMS",
    "serverSelectionTimeoutMS",
    "heartbeatFrequencyMS",
    "localThresholdMS",
    "compressors",
    "srvServiceName",
    "srvMaxHosts",
];

/// Any URL string made safe to show: the password of the userinfo becomes `***` (the user is
/// kept — except over http(s), where a user without a password is usually a token and is hidden
/// too), every query value whose name is not in [`URL_QUERY_ALLOW_LIST`] becomes `***` (a bare
/// query token too), and a fragment becomes `#***`. Scheme, hosts and path are kept. A password
/// holding `/`, `?` or `@` unencoded is hidden whole.
pub fn redact_url(s: &str) -> String {
    let (scheme, rest) = match s.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, s),
    };
    let mut out = String::with_capacity(s.len());
    if let Some(scheme) = scheme {
        out.push_str(scheme);
        out.push_str("://");
    }
    let mut rest = rest;
    if scheme.is_some() {
        // The userinfo ends at the last `@` before the query; when no `@` precedes the first `?`,
        // the password itself may hold a `?`: take the last `@` of all.
        let first_q = rest.find('?').unwrap_or(rest.len());
        let at = rest[..first_q].rfind('@').or_else(|| rest.rfind('@'));
        if let Some(at) = at {
            let userinfo = &rest[..at];
            let (user, password) = match userinfo.split_once(':') {
                Some((u, _)) => (u, true),
                None => (userinfo, false),
            };
            if !user.contains(['/', '?', '#']) {
                let http = scheme.is_some_and(|sc| {
                    sc.eq_ignore_ascii_case("http") || sc.eq_ignore_ascii_case("https")
                });
                if password {
                    out.push_str(user);
                    out.push_str(":***@");
                } else if http {
                    out.push_str("***@");
                } else {
                    out.push_str(user);
                    out.push('@');
                }
                rest = &rest[at + 1..];
            }
        }
    }
    let (before_fragment, fragment) = match rest.split_once('#') {
        Some((b, _)) => (b, true),
        None => (rest, false),
    };
    match before_fragment.split_once('?') {
        Some((path, query)) => {
            out.push_str(path);
            out.push('?');
            let parts: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _))
                        if URL_QUERY_ALLOW_LIST
                            .iter()
                            .any(|a| a.eq_ignore_ascii_case(k)) =>
                    {
                        kv.to_string()
                    }
                    Some((k, _)) => format!("{k}=***"),
                    None if kv.is_empty()
                        || URL_QUERY_ALLOW_LIST
                            .iter()
                            .any(|a| a.eq_ignore_ascii_case(kv)) =>
                    {
                        kv.to_string()
                    }
                    None => "***".to_string(),
                })
                .collect();
            out.push_str(&parts.join("&"));
        }
        None => out.push_str(before_fragment),
    }
    if fragment {
        out.push_str("#***");
    }
    out
}

/// [`redact_url`] of `s` when it is a URL (`scheme://…`), else `None` (the driver's helper).
pub fn redact_uri(s: &str) -> Option<String> {
    s.contains("://").then(|| redact_url(s))
}

/// Serializes a URL-valued string setting through [`redact_url`].
pub fn serialize_url<S: Serializer>(value: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&redact_url(value))
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({:?})", self.redacted())
    }
}
impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}
impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}
