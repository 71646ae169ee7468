//! `POSTGRES_URL`: a libpq connection URI. `tokio_postgres::Config` knows only
//! `sslmode=disable|prefer|require` and refuses keys it does not know (`sslrootcert`…), so the
//! TLS keys are taken out here and mapped onto rustls ([`tls_config`]); everything else is handed
//! to `tokio_postgres` as it is.
//!
//! | `sslmode` | connection | certificate |
//! |---|---|---|
//! | `disable` | plain | — |
//! | `allow`, `prefer` (the default) | TLS when the server offers it, else plain | not checked (as libpq) |
//! | `require` | TLS or nothing | not checked (as libpq: `require` only encrypts) |
//! | `verify-ca` | TLS or nothing | chain checked against the roots, host name not |
//! | `verify-full` | TLS or nothing | chain and host name checked |
//!
//! The roots are the PEM file `sslrootcert` names, else the system's (`sslrootcert=system` too).

use std::str::FromStr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::SslMode;

use crate::config::secret::redact_url;

/// How the certificate of the server is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// No TLS at all (`disable`).
    Off,
    /// Encrypted, certificate not checked (`allow`, `prefer`, `require`).
    None,
    /// The chain, not the host name (`verify-ca`).
    Ca,
    /// The chain and the host name (`verify-full`).
    Full,
}

/// A parsed `POSTGRES_URL`.
#[derive(Clone)]
pub struct Target {
    pub config: tokio_postgres::Config,
    pub verify: Verify,
    /// The `sslrootcert` file, if given (`system` → `None`).
    pub root_cert: Option<String>,
    /// The URL with its password and unknown query values replaced by `***` (for messages).
    pub shown: String,
    /// The password as written and decoded (to scrub from messages).
    pub secrets: Vec<String>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("url", &self.shown)
            .field("verify", &self.verify)
            .finish_non_exhaustive()
    }
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// The URI without `sslmode` and `sslrootcert`, and their (decoded) values; `sslmode` defaults to
/// `prefer`, as in libpq.
fn take_tls_keys(scheme: &str, base: &str, query: Option<&str>) -> (String, String, Option<String>) {
    let mut kept = Vec::new();
    let mut mode = "prefer".to_string();
    let mut root_cert = None;
    for pair in query.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "sslmode" => mode = decode(v),
            "sslrootcert" => root_cert = Some(decode(v)),
            _ => kept.push(pair),
        }
    }
    let mut stripped = format!("{scheme}://{base}");
    if !kept.is_empty() {
        stripped.push('?');
        stripped.push_str(&kept.join("&"));
    }
    (stripped, mode, root_cert)
}

/// Parses a libpq URI (`postgres://` or `postgresql://`). The error is secret-free.
pub fn parse(url: &str) -> Result<Target, String> {
    let shown = redact_url(url);
    let Some((scheme, rest)) = url.split_once("://") else {
        // Not shown: a key=value string may hold `password=…`.
        return Err(
            "not a libpq URI (postgres://USER:PASSWORD@HOST:PORT/DATABASE?sslmode=…)".to_string(),
        );
    };
    if !matches!(scheme, "postgres" | "postgresql") {
        return Err(format!(
            "`{shown}`: the scheme must be postgres:// or postgresql://"
        ));
    }
    // The userinfo ends at the last `@` before the query.
    let at = rest.rfind('@');
    let after_userinfo = at.map_or(0, |a| a + 1);
    let mut secrets = Vec::new();
    if let Some(at) = at {
        if let Some((_, password)) = rest[..at].split_once(':') {
            if !password.is_empty() {
                secrets.push(password.to_string());
                let decoded = decode(password);
                if decoded != password {
                    secrets.push(decoded);
                }
            }
        }
    }
    let (base, query) = match rest[after_userinfo..].find('?') {
        Some(q) => (
            &rest[..after_userinfo + q],
            Some(&rest[after_userinfo + q + 1..]),
        ),
        None => (rest, None),
    };
    let (stripped, mode, root_cert) = take_tls_keys(scheme, base, query);
    let (ssl_mode, verify) = match mode.as_str() {
        "disable" => (SslMode::Disable, Verify::Off),
        "allow" | "prefer" => (SslMode::Prefer, Verify::None),
        "require" => (SslMode::Require, Verify::None),
        "verify-ca" => (SslMode::Require, Verify::Ca),
        "verify-full" => (SslMode::Require, Verify::Full),
        other => {
            return Err(format!(
                "`{shown}`: sslmode `{other}` is not accepted; accepted: disable, allow, prefer, require, verify-ca, verify-full"
            ))
        }
    };
    let mut config = tokio_postgres::Config::from_str(&stripped).map_err(|e| {
        let mut m = format!("`{shown}` is not a valid libpq URI: {e}");
        for s in &secrets {
            m = m.replace(s.as_str(), "***");
        }
        m
    })?;
    config.ssl_mode(ssl_mode);
    if config.get_dbname().is_none() && config.get_user().is_none() {
        return Err(format!(
            "`{shown}` names neither a user nor a database (postgres://USER:PASSWORD@HOST/DATABASE)"
        ));
    }
    Ok(Target {
        config,
        verify,
        root_cert: root_cert.filter(|r| r != "system" && !r.is_empty()),
        shown,
        secrets,
    })
}

/// The rustls client configuration for `target` (the roots are read now).
pub fn tls_config(target: &Target) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up: {e}"))?;
    if matches!(target.verify, Verify::Off | Verify::None) {
        return Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
            .with_no_client_auth());
    }
    let mut roots = RootCertStore::empty();
    match &target.root_cert {
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| format!("cannot read sslrootcert `{path}`: {e}"))?;
            let mut found = 0;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert = cert.map_err(|e| format!("sslrootcert `{path}`: {e}"))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("sslrootcert `{path}`: {e}"))?;
                found += 1;
            }
            if found == 0 {
                return Err(format!("sslrootcert `{path}` holds no PEM certificate"));
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for cert in native.certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(
                    "no system root certificates found; set sslrootcert in POSTGRES_URL".into(),
                );
            }
        }
    }
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| format!("TLS set-up: {e}"))?;
    let builder = if target.verify == Verify::Ca {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ChainOnly(webpki)))
    } else {
        builder.with_webpki_verifier(webpki)
    };
    Ok(builder.with_no_client_auth())
}

/// `sslmode=verify-ca`: the chain is checked, the host name is not.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `sslmode=prefer|require` (libpq's meaning): encrypted, the certificate is not checked. Only
/// the handshake signatures are (so the session keys are the server's).
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
