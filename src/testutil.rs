//! Test-only helpers: a scripted fake source for the layers above the sources. (Hostile inputs
//! for the parsers come from proptest alone, in `properties`.)

/// A source whose answers are scripted by id: `ok/…` serves the id itself as the value,
/// `json/…` serves `{"user":"app"}`, `down/…` is unavailable, anything else is not found; ids
/// starting with `bad` are invalid. Counts its fetches.
#[derive(Debug, Default)]
pub struct FakeSource {
    /// Fetches so far.
    pub fetches: std::sync::atomic::AtomicUsize,
}

impl FakeSource {
    /// The fake's id rule.
    pub fn check_id(id: &str) -> Result<(), &'static str> {
        if id.starts_with("bad") {
            Err("fake ids do not start with \"bad\"")
        } else {
            Ok(())
        }
    }

    /// The scripted answer for `id`.
    pub fn fetch(
        &self,
        id: &str,
    ) -> Result<crate::source::secret::Secret, crate::source::error::SourceError> {
        use crate::source::error::SourceError;
        self.fetches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let value = if id.starts_with("ok/") {
            id.as_bytes()
        } else if id.starts_with("json/") {
            br#"{"user":"app"}"#.as_slice()
        } else if id.starts_with("down/") {
            return Err(SourceError::Unavailable {
                detail: "scripted outage".to_owned(),
            });
        } else {
            return Err(SourceError::NotFound);
        };
        Ok(crate::source::secret::Secret::new(
            crate::secure_mem::SecretBytes::from_slice(value)?,
            None,
        ))
    }
}
