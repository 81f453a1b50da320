//! TLS termination at the client listener (rustls; TLS 1.2 and 1.3; ALPN `h2` and `http/1.1`):
//! the certificate pairs, the one a handshake gets by SNI, and their reload.
//!
//! The pairs live behind one `ArcSwap`, read once per handshake (never per request). A reload
//! re-reads the files when their contents change (an editor's rename, a Kubernetes Secret's
//! `..data` symlink swap): a set that loads serves every new handshake, and established
//! connections keep theirs; a set that does not load keeps the old one in service.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

use crate::shutdown::Shutdown;

/// Certificate and key files are small; anything larger is a wrong file.
const MAX_PEM: u64 = 1024 * 1024;

/// One certificate chain (PEM) and its private key (PEM: PKCS#8, RSA or EC).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// Why a certificate pair cannot serve.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{}: no PEM certificate in it", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: {reason}", path.display())]
    Pem { path: PathBuf, reason: String },
    #[error("{}: no PEM private key (PKCS#8, RSA or EC) in it", path.display())]
    NoKey { path: PathBuf },
    #[error("{} does not fit {}: {reason}", key.display(), cert.display())]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("no certificate configured")]
    Empty,
}

/// The loaded pairs, in configured order (the first is for clients without SNI), with the file
/// contents they came from (a reload compares them).
struct Pairs {
    keys: Vec<Arc<CertifiedKey>>,
    contents: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Pairs {
    fn load(files: &[CertFiles]) -> Result<Self, TlsError> {
        let contents = files
            .iter()
            .map(|f| Ok((read(&f.cert_file)?, read(&f.key_file)?)))
            .collect::<Result<Vec<_>, TlsError>>()?;
        Self::from_contents(files, contents)
    }

    fn from_contents(
        files: &[CertFiles],
        contents: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<Self, TlsError> {
        if files.is_empty() {
            return Err(TlsError::Empty);
        }
        let keys = files
            .iter()
            .zip(&contents)
            .map(|(pair, (cert, key))| certified(pair, cert, key).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { keys, contents })
    }

    /// The pair for `name`: the first whose certificate is valid for it (wildcards included),
    /// else the first.
    fn pick(&self, name: Option<&str>) -> Arc<CertifiedKey> {
        let matching = name
            .filter(|_| self.keys.len() > 1)
            .and_then(|name| ServerName::try_from(name).ok())
            .and_then(|name| self.keys.iter().find(|key| valid_for(key, &name)));
        matching.unwrap_or(&self.keys[0]).clone()
    }
}

fn valid_for(key: &CertifiedKey, name: &ServerName<'_>) -> bool {
    key.cert.first().is_some_and(|der| {
        webpki::EndEntityCert::try_from(der)
            .is_ok_and(|cert| cert.verify_is_valid_for_subject_name(name).is_ok())
    })
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    let error = |source| TlsError::Read {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(error)?;
    let mut bytes = Vec::new();
    io::Read::read_to_end(&mut io::Read::take(file, MAX_PEM + 1), &mut bytes).map_err(error)?;
    if bytes.len() as u64 > MAX_PEM {
        let big = io::Error::new(io::ErrorKind::InvalidData, "larger than 1 MiB");
        return Err(error(big));
    }
    Ok(bytes)
}

fn certified(files: &CertFiles, cert: &[u8], key: &[u8]) -> Result<CertifiedKey, TlsError> {
    let pem = |path: &Path, e: rustls::pki_types::pem::Error| TlsError::Pem {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let chain = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem(&files.cert_file, e))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: files.cert_file.clone(),
        });
    }
    let key = match PrivateKeyDer::from_pem_slice(key) {
        Ok(key) => key,
        Err(rustls::pki_types::pem::Error::NoItemsFound) => {
            return Err(TlsError::NoKey {
                path: files.key_file.clone(),
            })
        }
        Err(e) => return Err(pem(&files.key_file, e)),
    };
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(chain, key, &provider).map_err(|e| TlsError::Mismatch {
        cert: files.cert_file.clone(),
        key: files.key_file.clone(),
        reason: e.to_string(),
    })
}

/// Picks a handshake's certificate from the current pairs.
struct Resolver(ArcSwap<Pairs>);

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolver")
            .field("pairs", &self.0.load().keys.len())
            .finish()
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load().pick(hello.server_name()))
    }
}

/// The listener's TLS: its rustls configuration and the files it reloads from.
pub struct Tls {
    files: Vec<CertFiles>,
    resolver: Arc<Resolver>,
    acceptor: TlsAcceptor,
    /// What the last failed reload saw, so that a broken set is reported once.
    failed: ArcSwapOption<Seen>,
}

impl Tls {
    /// Loads every pair; fails naming the file at fault.
    pub fn new(files: Vec<CertFiles>) -> Result<Self, TlsError> {
        let pairs = Pairs::load(&files)?;
        let resolver = Arc::new(Resolver(ArcSwap::from_pointee(pairs)));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::Pem {
                path: PathBuf::new(),
                reason: e.to_string(),
            })?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            files,
            resolver,
            acceptor: TlsAcceptor::from(Arc::new(config)),
            failed: ArcSwapOption::empty(),
        })
    }

    /// Checks that `files` load, without serving them (`tidegate validate`).
    pub fn check(files: &[CertFiles]) -> Result<(), TlsError> {
        Pairs::load(files).map(drop)
    }

    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// Re-reads the files: `Ok(true)` when they changed and the new pairs now serve, `Ok(false)`
    /// when nothing changed (or they are the set that already failed); an error leaves the old
    /// pairs in service.
    pub fn reload(&self) -> Result<bool, TlsError> {
        // A file that cannot be read is a broken set too: remembered (by its error) so that it is
        // reported once, not at every tick.
        let contents = self
            .files
            .iter()
            .map(|f| Ok((read(&f.cert_file)?, read(&f.key_file)?)))
            .collect::<Result<Vec<_>, TlsError>>();
        let seen = match &contents {
            Ok(contents) => Seen::Contents(contents.clone()),
            Err(error) => Seen::Unreadable(error.to_string()),
        };
        if matches!(&contents, Ok(c) if self.resolver.0.load().contents == *c) {
            // Back to the set in service: a later return of a broken set is news again.
            self.failed.store(None);
            return Ok(false);
        }
        if self.failed.load().as_deref() == Some(&seen) {
            return Ok(false);
        }
        let loaded = contents.and_then(|contents| Pairs::from_contents(&self.files, contents));
        match loaded {
            Ok(pairs) => {
                self.resolver.0.store(Arc::new(pairs));
                self.failed.store(None);
                Ok(true)
            }
            Err(error) => {
                self.failed.store(Some(Arc::new(seen)));
                Err(error)
            }
        }
    }
}

/// What a failed reload saw: the files' contents, or why they could not be read.
#[derive(PartialEq, Eq)]
enum Seen {
    Contents(Vec<(Vec<u8>, Vec<u8>)>),
    Unreadable(String),
}

impl Tls {
    /// Each configured certificate file with its end-entity certificate's expiry (Unix seconds).
    pub fn expiries(&self) -> Vec<(String, i64)> {
        let pairs = self.resolver.0.load();
        self.files
            .iter()
            .zip(&pairs.keys)
            .filter_map(|(files, key)| {
                let expiry = not_after(key.cert.first()?)?;
                Some((files.cert_file.display().to_string(), expiry))
            })
            .collect()
    }
}

/// A certificate's `notAfter` in Unix seconds, read from its DER (RFC 5280 §4.1: Certificate →
/// tbsCertificate → [version] serialNumber signature issuer validity), so that an alert can fire
/// before it expires.
fn not_after(cert: &[u8]) -> Option<i64> {
    let (_, certificate, _) = der(cert)?;
    let (_, tbs, _) = der(certificate)?;
    let (tag, _, mut rest) = der(tbs)?;
    if tag == 0xA0 {
        // The explicit version came first: the serial number is next.
        rest = der(rest)?.2;
    }
    let (_, _, rest) = der(rest)?; // signature
    let (_, _, rest) = der(rest)?; // issuer
    let (_, validity, _) = der(rest)?;
    let (_, _, rest) = der(validity)?; // notBefore
    let (tag, time, _) = der(rest)?;
    der_time(tag, std::str::from_utf8(time).ok()?)
}

/// One DER element: its tag, its contents and what follows it.
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |len, byte| len << 8 | usize::from(*byte));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// A UTCTime (`YYMMDDHHMMSSZ`, tag 0x17) or GeneralizedTime (`YYYYMMDDHHMMSSZ`, tag 0x18).
fn der_time(tag: u8, time: &str) -> Option<i64> {
    let (year, rest) = match tag {
        0x17 => {
            let yy: i64 = time.get(0..2)?.parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, time.get(2..)?)
        }
        0x18 => (time.get(0..4)?.parse().ok()?, time.get(4..)?),
        _ => return None,
    };
    let field = |at: usize| rest.get(at..at + 2)?.parse::<i64>().ok();
    let (month, day) = (field(0)?, field(2)?);
    let seconds = field(4)? * 3600 + field(6)? * 60 + field(8)?;
    Some(days_from_civil(year, month, day) * 86_400 + seconds)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// Reloads `tls` every `interval` until shutdown, counting each change's result.
pub async fn watch(
    tls: Arc<Tls>,
    interval: Duration,
    metrics: Arc<crate::metrics::Metrics>,
    mut shutdown: Shutdown,
) {
    for (name, expiry) in tls.expiries() {
        metrics.set_tls_expiry(&name, expiry);
    }
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = ticks.tick() => {}
        }
        match tls.reload() {
            Ok(false) => {}
            Ok(true) => {
                tracing::info!("TLS certificates reloaded; new handshakes use them");
                metrics.tls_reload(true);
                for (name, expiry) in tls.expiries() {
                    metrics.set_tls_expiry(&name, expiry);
                }
            }
            Err(error) => {
                // Logged once per change attempt: the files are compared again next tick, and a
                // half-written pair usually completes by then.
                tracing::warn!(%error, "TLS certificates not reloaded; the previous ones keep serving");
                metrics.tls_reload(false);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_dates_become_unix_seconds() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(2026, 12, 4), 20_791);
        assert_eq!(
            der_time(0x17, "261204120000Z"),
            Some(20_791 * 86_400 + 43_200)
        );
        assert_eq!(
            der_time(0x18, "20500101000000Z"),
            Some(days_from_civil(2050, 1, 1) * 86_400)
        );
        assert_eq!(der_time(0x17, "991231235959Z"), Some(946_684_799));
        assert_eq!(der_time(0x17, "26120412"), None);
        assert_eq!(der_time(0x04, "261204120000Z"), None);
    }

    #[test]
    fn der_lengths_are_bounded_by_the_input() {
        assert_eq!(
            der(&[0x30, 0x03, 1, 2, 3, 9]),
            Some((0x30, &[1, 2, 3][..], &[9][..]))
        );
        assert_eq!(
            der(&[0x30, 0x82, 0x01, 0x00, 1]),
            None,
            "claims 256 bytes, has 1"
        );
        assert_eq!(
            der(&[0x30, 0x85, 1, 1, 1, 1, 1]),
            None,
            "a length over 4 bytes"
        );
        assert_eq!(der(&[0x30]), None);
        assert_eq!(not_after(b"not a certificate"), None);
    }
}
