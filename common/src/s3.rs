//! The one S3 client stack of the project (`aws-sdk-s3`), set up here only.

use std::path::PathBuf;
use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::StalledStreamProtectionConfig;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_http_client::tls;

use crate::Error;
use crate::env::{CommonEnv, ResticEnv};
use crate::location::S3Location;

/// Everything needed to talk to one S3 repository.
#[derive(Clone)]
pub struct S3Settings {
    pub location: S3Location,
    pub region: String,
    pub path_style: bool,
    pub ca_bundle: Option<PathBuf>,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
    pub concurrency: usize,
    pub multipart_threshold: u64,
    pub part_size: u64,
    pub max_attempts: u32,
    /// First retry delay; doubles per attempt (with jitter), capped at 20 s.
    pub initial_backoff: Duration,
    pub connect_timeout: Duration,
    /// How long one attempt of a request may stay stuck (no connection, no answer, a
    /// body that stops moving) before it is cut off and retried
    /// (`STOWAGE_S3_STUCK_REQUEST_TIMEOUT_SECS`, restic's `--stuck-request-timeout`).
    pub stuck_timeout: Duration,
    /// How long a transfer may stop moving (at most the stuck-request timeout; 20 s is
    /// the SDK's own default for its stalled-stream protection).
    pub stall_timeout: Duration,
    /// How often upload progress is logged.
    pub progress_interval: Duration,
}

// Secrets must never reach a log line, not even through `{:?}`.
impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Settings")
            .field("location", &self.location)
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .field("ca_bundle", &self.ca_bundle)
            .field("access_key_id", &"<redacted>")
            .field("concurrency", &self.concurrency)
            .finish_non_exhaustive()
    }
}

impl S3Settings {
    /// Combines the parsed location with the environment. Refuses plain http unless
    /// allowed, and missing keys.
    pub fn from_env(
        location: S3Location,
        restic: &ResticEnv,
        common: &CommonEnv,
    ) -> Result<Self, Error> {
        if location.is_plain_http() && !common.allow_http {
            return Err(Error::Config(format!(
                "S3 endpoint {} is plain http: refused, because keys and repository metadata \
                 would cross the network unprotected. Use https, or set STOWAGE_ALLOW_HTTP=true \
                 to allow it",
                location.endpoint.as_deref().unwrap_or_default()
            )));
        }
        let access_key_id = restic.aws_access_key_id.clone().ok_or_else(|| {
            Error::Config(
                "AWS_ACCESS_KEY_ID is not set: the S3 repository needs keys. Set it (for a \
                 Job: add the key AWS_ACCESS_KEY_ID to the Secret it reads)"
                    .into(),
            )
        })?;
        let secret_access_key = restic.aws_secret_access_key.clone().ok_or_else(|| {
            Error::Config(
                "AWS_SECRET_ACCESS_KEY is not set: the S3 repository needs keys. Set it (for a \
                 Job: add the key AWS_SECRET_ACCESS_KEY to the Secret it reads)"
                    .into(),
            )
        })?;
        if common.s3_concurrency == 0 {
            return Err(Error::Config(
                "STOWAGE_S3_CONCURRENCY must be at least 1".into(),
            ));
        }
        if common.s3_part_size_mib < 5 {
            return Err(Error::Config(
                "STOWAGE_S3_PART_SIZE_MIB must be at least 5 (the S3 minimum part size)".into(),
            ));
        }
        if common.s3_stuck_request_timeout_secs == 0 {
            return Err(Error::Config(
                "STOWAGE_S3_STUCK_REQUEST_TIMEOUT_SECS must be at least 1".into(),
            ));
        }
        if common.s3_max_attempts == 0 {
            return Err(Error::Config(
                "STOWAGE_S3_MAX_ATTEMPTS must be at least 1".into(),
            ));
        }
        let stuck_timeout = Duration::from_secs(common.s3_stuck_request_timeout_secs);
        let path_style = common
            .s3_path_style
            .unwrap_or_else(|| location.default_path_style());
        Ok(Self {
            region: restic
                .aws_default_region
                .clone()
                .or_else(|| restic.aws_region.clone())
                .unwrap_or_else(|| "us-east-1".into()),
            path_style,
            ca_bundle: common
                .ca_bundle
                .clone()
                .or_else(|| restic.restic_cacert.clone()),
            access_key_id,
            secret_access_key,
            session_token: restic.aws_session_token.clone(),
            concurrency: common.s3_concurrency,
            multipart_threshold: common.s3_multipart_threshold_mib.max(5) * 1024 * 1024,
            part_size: common.s3_part_size_mib * 1024 * 1024,
            max_attempts: common.s3_max_attempts,
            initial_backoff: Duration::from_millis(200),
            connect_timeout: Duration::from_secs(10).min(stuck_timeout),
            stall_timeout: Duration::from_secs(20).min(stuck_timeout),
            stuck_timeout,
            progress_interval: common.progress_interval(),
            location,
        })
    }

    /// Builds the client. No network traffic happens here.
    pub fn client(&self) -> Result<Client, Error> {
        let mut trust = tls::TrustStore::default();
        if let Some(path) = &self.ca_bundle {
            let pem = std::fs::read(path).map_err(|e| {
                Error::Config(format!("cannot read CA bundle {}: {e}", path.display()))
            })?;
            trust = trust.with_pem_certificate(pem);
        }
        let tls_context = tls::TlsContext::builder()
            .with_trust_store(trust)
            .build()
            .map_err(|e| Error::Config(format!("TLS set-up failed: {e}")))?;
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::Ring,
            ))
            .tls_context(tls_context)
            .build_https();
        let creds = Credentials::new(
            &self.access_key_id,
            &self.secret_access_key,
            self.session_token.clone(),
            None,
            "stowage",
        );
        let mut b = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(self.region.clone()))
            .credentials_provider(creds)
            .force_path_style(self.path_style)
            .http_client(http)
            // The restic format checks itself (every pack is named by its SHA-256 and
            // every blob is authenticated); extra CRC32 passes over every pack only
            // cost CPU, and not every S3 server speaks them.
            .request_checksum_calculation(
                aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
            )
            .response_checksum_validation(
                aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired,
            )
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(self.max_attempts)
                    .with_initial_backoff(self.initial_backoff)
                    .with_max_backoff(Duration::from_secs(20)),
            )
            // A stuck request is cut off per attempt and retried: connecting, the
            // answer (an attempt of a request without a large body, uploads see
            // `backend::s3`), and a body that stops moving in either direction.
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(self.connect_timeout)
                    .operation_attempt_timeout(self.stuck_timeout)
                    .build(),
            )
            // Downloads are watched in `backend::s3::get_object`, which knows the
            // failure for what it is.
            .stalled_stream_protection(
                StalledStreamProtectionConfig::enabled()
                    .grace_period(self.stall_timeout)
                    .download_enabled(false)
                    .build(),
            );
        if let Some(ep) = &self.location.endpoint {
            b = b.endpoint_url(ep);
        }
        Ok(Client::from_conf(b.build()))
    }

    /// Over TLS the payload needs no SigV4 hash of its own (TLS protects it, and the
    /// repository format authenticates it), which saves a SHA-256 pass per upload.
    /// Over plain http the payload stays signed.
    pub fn sign_payload(&self) -> bool {
        self.location.is_plain_http()
    }

    pub fn endpoint_display(&self) -> &str {
        self.location
            .endpoint
            .as_deref()
            .unwrap_or("AWS S3 (regional endpoint)")
    }
}

/// What went wrong with an S3 request, in words that say what to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Credentials,
    NoSuchBucket,
    NotFound,
    Unreachable,
    /// The TLS handshake failed on the server's certificate (untrusted CA, wrong name).
    Certificate,
    /// The request hung (no connection, no answer, a body that stopped moving) and was
    /// cut off after the stuck-request timeout.
    Timeout,
    Other,
}

/// Classifies an SDK error from its code, HTTP status and kind.
pub fn classify<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> Failure {
    match err {
        // The connector reports TLS failures only as text in its error chain.
        SdkError::DispatchFailure(df)
            if df
                .as_connector_error()
                .is_some_and(|e| error_chain(e).contains("certificate")) =>
        {
            Failure::Certificate
        }
        SdkError::TimeoutError(_) => Failure::Timeout,
        SdkError::DispatchFailure(df) if df.is_timeout() => Failure::Timeout,
        SdkError::DispatchFailure(_) => Failure::Unreachable,
        SdkError::ServiceError(se) => classify_code(se.err().code(), status_of(err)),
        SdkError::ResponseError(_) => Failure::Other,
        _ => classify_code(err.code(), status_of(err)),
    }
}

/// An error and all its sources, as one line.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

fn status_of<E>(err: &SdkError<E, HttpResponse>) -> Option<u16> {
    err.raw_response().map(|r| r.status().as_u16())
}

/// Pure decision on an S3 error code and status.
pub fn classify_code(code: Option<&str>, status: Option<u16>) -> Failure {
    match code {
        Some(
            "InvalidAccessKeyId"
            | "SignatureDoesNotMatch"
            | "AccessDenied"
            | "InvalidToken"
            | "ExpiredToken"
            | "AuthorizationHeaderMalformed",
        ) => Failure::Credentials,
        Some("NoSuchBucket") => Failure::NoSuchBucket,
        Some("NoSuchKey" | "NotFound") => Failure::NotFound,
        _ => match status {
            Some(401 | 403) => Failure::Credentials,
            Some(404) => Failure::NotFound,
            _ => Failure::Other,
        },
    }
}

/// A failed S3 request: its kind and a message that says what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Error {
    pub failure: Failure,
    pub message: String,
}

impl std::fmt::Display for S3Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for S3Error {}

impl S3Error {
    pub fn new(failure: Failure, message: impl Into<String>) -> Self {
        Self {
            failure,
            message: message.into(),
        }
    }

    /// The SDK error `err` of `op` on `what`, classified and described.
    pub fn from_sdk<E>(
        err: &SdkError<E, HttpResponse>,
        op: &str,
        what: &str,
        settings: &S3Settings,
    ) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        Self::new(classify(err), describe(err, op, what, settings))
    }
}

impl From<S3Error> for Error {
    fn from(e: S3Error) -> Self {
        match e.failure {
            Failure::Timeout => Error::StorageTimeout(e.message),
            _ => Error::Storage(e.message),
        }
    }
}

/// Turns an SDK error into a message naming the operation, the object and the fix.
/// Never includes credentials (the SDK's error context does not carry them).
pub fn describe<E>(
    err: &SdkError<E, HttpResponse>,
    op: &str,
    what: &str,
    settings: &S3Settings,
) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let endpoint = settings.endpoint_display();
    let bucket = &settings.location.bucket;
    match classify(err) {
        Failure::Credentials => format!(
            "S3 {op} {what}: the endpoint {endpoint} rejected the credentials for bucket \
             {bucket} ({}). Check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in the Secret and \
             the key's permissions on the bucket",
            err.code().unwrap_or("access denied")
        ),
        Failure::NoSuchBucket => format!(
            "S3 {op} {what}: bucket {bucket} does not exist at {endpoint}. Create it first \
             (stowage never creates buckets), or fix the bucket name in the repository URL"
        ),
        Failure::Unreachable => format!(
            "S3 {op} {what}: cannot reach {endpoint} ({}). Check the endpoint URL, DNS and \
             network policy; the request was retried {} times",
            aws_sdk_s3::error::DisplayErrorContext(err),
            settings.max_attempts
        ),
        Failure::Certificate => format!(
            "S3 {op} {what}: the TLS certificate of {endpoint} is not accepted ({}). If the \
             server's certificate comes from your own CA, give that CA's certificate (PEM) in \
             STOWAGE_CA_BUNDLE or RESTIC_CACERT; check that the endpoint's host name is in \
             the certificate",
            aws_sdk_s3::error::DisplayErrorContext(err)
        ),
        Failure::Timeout => stuck_message(op, what, settings),
        Failure::NotFound => format!("S3 {op} {what}: not found in bucket {bucket}"),
        Failure::Other => format!(
            "S3 {op} {what} at {endpoint} failed: {}",
            aws_sdk_s3::error::DisplayErrorContext(err)
        ),
    }
}

/// The message of a request that stayed stuck through every attempt.
pub fn stuck_message(op: &str, what: &str, settings: &S3Settings) -> String {
    format!(
        "S3 {op} {what}: {} did not answer: each of {} attempts was stuck (no connection within \
         {} s, no answer within {} s, or a transfer that stopped moving for {} s) and was cut \
         off. The server accepts connections but does not work (stopped, overloaded, a proxy in \
         between?): check it; STOWAGE_S3_STUCK_REQUEST_TIMEOUT_SECS sets how long a request may \
         be stuck",
        settings.endpoint_display(),
        settings.max_attempts,
        settings.connect_timeout.as_secs(),
        settings.stuck_timeout.as_secs(),
        settings.stall_timeout.as_secs()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_are_classified() {
        assert_eq!(
            classify_code(Some("InvalidAccessKeyId"), Some(403)),
            Failure::Credentials
        );
        assert_eq!(
            classify_code(Some("SignatureDoesNotMatch"), Some(403)),
            Failure::Credentials
        );
        assert_eq!(classify_code(None, Some(403)), Failure::Credentials);
        assert_eq!(
            classify_code(Some("NoSuchBucket"), Some(404)),
            Failure::NoSuchBucket
        );
        assert_eq!(
            classify_code(Some("NoSuchKey"), Some(404)),
            Failure::NotFound
        );
        assert_eq!(classify_code(None, Some(404)), Failure::NotFound);
        assert_eq!(
            classify_code(Some("InternalError"), Some(500)),
            Failure::Other
        );
    }

    fn env(allow_http: bool) -> (ResticEnv, CommonEnv) {
        let restic = ResticEnv {
            aws_access_key_id: Some("AKIDSECRETISH".into()),
            aws_secret_access_key: Some("very-secret".into()),
            ..Default::default()
        };
        let common = CommonEnv {
            allow_http,
            ..Default::default()
        };
        (restic, common)
    }

    fn loc(ep: &str) -> S3Location {
        S3Location {
            endpoint: Some(ep.into()),
            bucket: "b".into(),
            prefix: String::new(),
        }
    }

    #[test]
    fn stuck_requests_are_a_storage_timeout_that_names_the_setting() {
        let (r, mut c) = env(false);
        c.s3_stuck_request_timeout_secs = 7;
        let s = S3Settings::from_env(loc("https://s3.lan"), &r, &c).unwrap();
        assert_eq!(s.stuck_timeout, Duration::from_secs(7));
        assert_eq!(s.connect_timeout, Duration::from_secs(7));
        assert_eq!(s.stall_timeout, Duration::from_secs(7));
        c.s3_stuck_request_timeout_secs = 300;
        let s300 = S3Settings::from_env(loc("https://s3.lan"), &r, &c).unwrap();
        assert_eq!(
            (s300.connect_timeout, s300.stall_timeout),
            (Duration::from_secs(10), Duration::from_secs(20))
        );
        c.s3_stuck_request_timeout_secs = 7;
        let e: Error = S3Error::new(Failure::Timeout, stuck_message("read", "config", &s)).into();
        assert!(matches!(e, Error::StorageTimeout(_)), "{e:?}");
        let text = e.to_string();
        assert!(
            text.contains("STOWAGE_S3_STUCK_REQUEST_TIMEOUT_SECS"),
            "{text}"
        );
        assert!(text.contains("no answer within 7 s"), "{text}");
        c.s3_stuck_request_timeout_secs = 0;
        let err = S3Settings::from_env(loc("https://s3.lan"), &r, &c).unwrap_err();
        assert!(
            err.to_string()
                .contains("STOWAGE_S3_STUCK_REQUEST_TIMEOUT_SECS"),
            "{err}"
        );
    }

    #[test]
    fn plain_http_needs_opt_in() {
        let (r, c) = env(false);
        let err = S3Settings::from_env(loc("http://127.0.0.1:9000"), &r, &c).unwrap_err();
        assert!(err.to_string().contains("STOWAGE_ALLOW_HTTP"), "{err}");
        let (r, c) = env(true);
        assert!(S3Settings::from_env(loc("http://127.0.0.1:9000"), &r, &c).is_ok());
        let (r, c) = env(false);
        assert!(S3Settings::from_env(loc("https://s3.lan"), &r, &c).is_ok());
    }

    #[test]
    fn missing_keys_are_named() {
        let (mut r, c) = env(false);
        r.aws_secret_access_key = None;
        let err = S3Settings::from_env(loc("https://s3.lan"), &r, &c).unwrap_err();
        assert!(err.to_string().contains("AWS_SECRET_ACCESS_KEY"), "{err}");
    }

    #[test]
    fn debug_output_hides_secrets() {
        let (r, c) = env(false);
        let s = S3Settings::from_env(loc("https://s3.lan"), &r, &c).unwrap();
        let dbg = format!("{s:?}");
        assert!(
            !dbg.contains("very-secret") && !dbg.contains("AKIDSECRETISH"),
            "{dbg}"
        );
    }

    #[test]
    fn region_and_ca_fallbacks() {
        let (mut r, c) = env(false);
        r.aws_region = Some("eu-west-3".into());
        r.restic_cacert = Some("/etc/ca.pem".into());
        let s = S3Settings::from_env(loc("https://s3.lan"), &r, &c).unwrap();
        assert_eq!(s.region, "eu-west-3");
        assert_eq!(s.ca_bundle, Some(PathBuf::from("/etc/ca.pem")));
        assert!(s.path_style);
    }
}
