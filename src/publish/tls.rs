//! TLS for the MQTT connection: a rustls client configuration (ring provider) from
//! PEM files, with errors that name the file and what is wrong with it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

/// Where the TLS material comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM file of the CA(s) trusted for the broker's certificate; `None`: the
    /// system's trusted roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain (PEM) and its private key (PEM), for brokers that
    /// authenticate clients by certificate.
    pub client_auth: Option<(PathBuf, PathBuf)>,
}

fn read_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read the {what} {}", path.display()))?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow!("{what} {}: not valid PEM: {e}", path.display()))?;
    if certs.is_empty() {
        bail!(
            "{what} {}: no certificate in it (expected PEM blocks \"-----BEGIN CERTIFICATE-----\")",
            path.display()
        );
    }
    Ok(certs)
}

/// Builds the client configuration. Errors name the file and the problem (missing,
/// not PEM, no certificate, key not matching).
pub fn client_config(files: &TlsFiles) -> Result<ClientConfig> {
    let mut roots = RootCertStore::empty();
    match &files.ca_file {
        Some(ca) => {
            for cert in read_certs(ca, "CA file")? {
                roots
                    .add(cert)
                    .map_err(|e| anyhow!("CA file {}: unusable certificate: {e}", ca.display()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                // A malformed system certificate is skipped, as the platform's own
                // tools do.
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                bail!(
                    "no trusted CA certificates found on this system (install ca-certificates) \
                     and no [mqtt] ca_file set"
                );
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots);
    let config = match &files.client_auth {
        Some((cert, key)) => {
            let chain = read_certs(cert, "client certificate file")?;
            let key_bytes = std::fs::read(key)
                .with_context(|| format!("cannot read the client key file {}", key.display()))?;
            let key_der = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| {
                anyhow!(
                    "client key file {}: no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}",
                    key.display()
                )
            })?;
            builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                anyhow!(
                    "client certificate {} and key {} do not go together: {e}",
                    cert.display(),
                    key.display()
                )
            })?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str, content: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("hearken-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, content).unwrap();
        p
    }

    fn err(files: &TlsFiles) -> String {
        format!("{:#}", client_config(files).unwrap_err())
    }

    #[test]
    fn missing_ca_file_is_named() {
        let f = TlsFiles {
            ca_file: Some("/nonexistent/ca.pem".into()),
            client_auth: None,
        };
        let e = err(&f);
        assert!(
            e.contains("/nonexistent/ca.pem") && e.contains("CA file"),
            "{e}"
        );
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let p = tmp("empty.pem", b"just some text\n");
        let e = err(&TlsFiles {
            ca_file: Some(p.clone()),
            client_auth: None,
        });
        assert!(
            e.contains("no certificate") && e.contains(&*p.to_string_lossy()),
            "{e}"
        );
    }

    #[test]
    fn broken_pem_is_refused() {
        let p = tmp(
            "broken.pem",
            b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        );
        let e = err(&TlsFiles {
            ca_file: Some(p),
            client_auth: None,
        });
        assert!(e.contains("CA file"), "{e}");
    }
}
