//! TLS for outgoing connections (the Connect channel, its REST calls, the log shipper): one
//! trust store.

use std::sync::{Arc, Once};

/// System trust roots, plus SSL_CERT_FILE / SSL_CERT_DIR when set.
pub fn client_config() -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    static PROVIDER: Once = Once::new();
    PROVIDER.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    let mut roots = rustls::RootCertStore::empty();
    // With SSL_CERT_FILE/DIR set, rustls-native-certs loads only those; add the system bundle too.
    let mut certs = rustls_native_certs::load_native_certs().certs;
    if std::env::var_os("SSL_CERT_FILE").is_some() || std::env::var_os("SSL_CERT_DIR").is_some() {
        for path in [
            "/etc/ssl/certs/ca-certificates.crt",
            "/etc/pki/tls/certs/ca-bundle.crt",
            "/etc/ssl/ca-bundle.pem",
            "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
            "/etc/ssl/cert.pem",
        ] {
            let p = std::path::Path::new(path);
            if p.exists() {
                certs.extend(rustls_native_certs::load_certs_from_paths(Some(p), None).certs);
                break;
            }
        }
    }
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        tracing::warn!("no trusted root certificates found: wss:// and https:// connections will fail (set SSL_CERT_FILE)");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}
