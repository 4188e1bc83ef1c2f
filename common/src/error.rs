use thiserror::Error;

/// Errors of the shared library. Each message says what failed, on which object, and
/// what to do; none carries a secret.
#[derive(Debug, Error)]
pub enum Error {
    /// Bad or missing configuration.
    #[error("{0}")]
    Config(String),
    /// The storage (S3 or local directory) failed or refused.
    #[error("{0}")]
    Storage(String),
    /// Requests to the storage hung (no connection, no answer, or a body that stopped
    /// moving) and were cut off, also after the retries.
    #[error("{0}")]
    StorageTimeout(String),
    /// The password opens no key of the repository.
    #[error("{0}")]
    WrongPassword(String),
    /// Another process holds a lock that forbids this operation.
    #[error("{0}")]
    Locked(String),
    /// The location holds repository objects but not a whole repository (a missing
    /// `config`, say): refused, never written over.
    #[error("{0}")]
    Damaged(String),
    /// An error reported by rustic_core (repository format level).
    #[error("{0}")]
    Repository(String),
}

impl Error {
    /// rustic_core's own `Display` is a multi-paragraph report; logs want one line.
    // Takes the box as rustic_core hands it over (`RusticResult`'s error type).
    #[allow(clippy::boxed_local)]
    pub fn from_rustic(e: Box<rustic_core::RusticError>) -> Self {
        if e.is_incorrect_password() {
            return Error::WrongPassword(
                "the password opens no key of this repository: check RESTIC_PASSWORD / the \
                 password file (for stowage-managed repositories, the per-repository password \
                 derived from the master secret)"
                    .into(),
            );
        }
        if is_stuck(&e) {
            return Error::StorageTimeout(one_line(&e.display_log()));
        }
        match Self::storage_failure(&e) {
            Some(line) => Error::Storage(line),
            None => Error::Repository(one_line(&e.display_log())),
        }
    }

    /// The storage's failure (a request failed or was refused, after the retries) that
    /// a rustic_core error reports, in one line; `None` for errors of the repository.
    pub fn storage_failure(e: &rustic_core::RusticError) -> Option<String> {
        (e.kind() == rustic_core::ErrorKind::Backend).then(|| one_line(&e.display_log()))
    }
}

/// Error code the S3 backend attaches to a rustic_core error when requests hung
/// ([`Error::StorageTimeout`]).
pub const STUCK_REQUEST_CODE: &str = "STOWAGE-S3-STUCK";

/// Whether `e`, or an error it was caused by, is a stuck request.
fn is_stuck(e: &rustic_core::RusticError) -> bool {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = next {
        // A wrapped rustic error may sit in its box (`Box<RusticError>` is an error too).
        let rustic = err.downcast_ref::<rustic_core::RusticError>().or_else(|| {
            err.downcast_ref::<Box<rustic_core::RusticError>>()
                .map(|b| &**b)
        });
        if rustic.is_some_and(|r| r.is_code(STUCK_REQUEST_CODE)) {
            return true;
        }
        next = err.source();
    }
    false
}

/// Drops rustic's "Error: " prefix and its "(kind: related to X)" tag, which say
/// nothing to an operator.
fn one_line(log: &str) -> String {
    let s = log.strip_prefix("Error: ").unwrap_or(log);
    let s = match (s.find(" (kind: related to "), s.rfind(')')) {
        (Some(start), Some(_)) => {
            let rest = &s[start + 1..];
            let close = rest.find(')').map_or(s.len(), |i| start + 1 + i + 1);
            format!("{}{}", &s[..start], &s[close..])
        }
        _ => s.to_string(),
    };
    s.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustic_core::{ErrorKind, RusticError};

    #[test]
    fn backend_errors_become_storage_errors_in_one_line() {
        let e = Error::from_rustic(RusticError::new(
            ErrorKind::Backend,
            "bucket b does not exist",
        ));
        assert!(matches!(e, Error::Storage(_)), "{e:?}");
        assert_eq!(e.to_string(), "bucket b does not exist");
    }

    #[test]
    fn stuck_requests_become_storage_timeouts_also_when_wrapped() {
        let stuck = RusticError::new(ErrorKind::Backend, "S3 read config: no answer")
            .attach_error_code(STUCK_REQUEST_CODE);
        assert!(matches!(
            Error::from_rustic(stuck),
            Error::StorageTimeout(_)
        ));
        let inner =
            RusticError::new(ErrorKind::Backend, "no answer").attach_error_code(STUCK_REQUEST_CODE);
        let wrapped = RusticError::with_source(ErrorKind::Backend, "writing failed", inner);
        assert!(matches!(
            Error::from_rustic(wrapped),
            Error::StorageTimeout(_)
        ));
    }

    #[test]
    fn other_errors_keep_their_cause() {
        let e = Error::from_rustic(RusticError::with_source(
            ErrorKind::InputOutput,
            "Failed to open file",
            std::io::Error::other("boom"),
        ));
        assert!(matches!(e, Error::Repository(_)), "{e:?}");
        assert!(e.to_string().contains("Failed to open file"), "{e}");
        assert!(e.to_string().contains("boom"), "{e}");
        assert!(!e.to_string().contains("kind:"), "{e}");
    }
}
