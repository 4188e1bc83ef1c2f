//! "Secrets never appear in logs, Events or errors", as a check: a test registers the
//! secret values in use and everything the programs produced (their stdout and stderr,
//! pod logs, and every object of the fake API but the Secrets that are meant to hold
//! them: Events, annotations, termination messages, Job and pod statuses), then
//! [`SecretScan::assert_clean`] fails naming the secret (never printing it) and where it
//! showed up.

use std::process::Output;

use crate::fakeapi::Store;

/// Secret values and the texts to search for them.
#[derive(Default)]
pub struct SecretScan {
    secrets: Vec<(String, String)>,
    texts: Vec<(String, String)>,
}

impl SecretScan {
    /// An empty scan.
    pub fn new() -> Self {
        Self::default()
    }

    /// A secret value, named by `what` in failures. Its base64 form is searched too (a
    /// value copied out of a Secret's `data` would be in that form).
    pub fn secret(&mut self, what: &str, value: &str) -> &mut Self {
        // Short values would match by chance; the tests' secrets are long.
        assert!(
            value.len() >= 8,
            "secret {what} is too short to scan for reliably"
        );
        self.secrets.push((what.to_string(), value.to_string()));
        self.secrets.push((
            format!("{what} (base64)"),
            crate::fakeapi::store::base64(value.as_bytes()),
        ));
        self
    }

    /// A text a program produced; `source` says where it came from.
    pub fn text(&mut self, source: &str, text: impl Into<String>) -> &mut Self {
        self.texts.push((source.to_string(), text.into()));
        self
    }

    /// A program's stdout and stderr.
    pub fn output(&mut self, source: &str, out: &Output) -> &mut Self {
        self.text(
            &format!("{source} stdout"),
            String::from_utf8_lossy(&out.stdout),
        );
        self.text(
            &format!("{source} stderr"),
            String::from_utf8_lossy(&out.stderr),
        )
    }

    /// Every object of the fake API except Secrets, each as its JSON (Events' notes,
    /// annotations, pod termination messages, Job conditions...).
    pub fn store(&mut self, store: &Store) -> &mut Self {
        let all = store.snapshot_json();
        for (key, obj) in all.as_object().into_iter().flatten() {
            if key.starts_with("/secrets/") {
                continue;
            }
            self.texts.push((format!("object {key}"), obj.to_string()));
        }
        self
    }

    /// Bytes of text collected (a scan that saw nothing proves nothing).
    pub fn scanned(&self) -> usize {
        self.texts.iter().map(|(_, t)| t.len()).sum()
    }

    /// Fails if any secret occurs in any text, or if there was nothing to scan.
    pub fn assert_clean(&self) {
        assert!(!self.secrets.is_empty(), "no secret registered");
        assert!(self.scanned() > 0, "nothing to scan");
        let leaks: Vec<String> = self
            .texts
            .iter()
            .flat_map(|(source, text)| {
                self.secrets
                    .iter()
                    .filter(|(_, value)| text.contains(value.as_str()))
                    .map(move |(what, _)| format!("{what} in {source}"))
            })
            .collect();
        assert!(leaks.is_empty(), "secrets leaked: {}", leaks.join("; "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_plain_and_base64_values_and_names_them_without_printing_them() {
        let mut s = SecretScan::new();
        s.secret("password", "hunter2hunter2");
        s.text("log", "all fine");
        s.assert_clean();
        s.text("event", "note: aHVudGVyMmh1bnRlcjI=");
        let e = std::panic::catch_unwind(|| s.assert_clean()).unwrap_err();
        let msg = e.downcast_ref::<String>().unwrap();
        assert!(msg.contains("password (base64) in event"), "{msg}");
        assert!(!msg.contains("hunter2"), "{msg}");
    }
}
