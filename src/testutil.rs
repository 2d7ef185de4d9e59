//! Test-only helpers: a deterministic generator of hostile inputs for the parsers' "never panics"
//! tests (a cheap stand-in for coverage-guided fuzzing, which needs a nightly toolchain), and a
//! scripted fake source for the layers above the sources.

/// Deterministic xorshift64* generator.
#[derive(Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a non-zero seed.
    pub fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }

    /// Next raw value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value below `n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// `count` inputs: mutations of `seeds` (byte flips, splices of interesting tokens, truncation,
/// duplication) and plain random bytes.
pub fn hostile_inputs(seeds: &[&str], tokens: &[&str], count: usize) -> Vec<Vec<u8>> {
    let mut rng = Rng::new(0x5eed_c0de);
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let mut input: Vec<u8> = seeds[rng.below(seeds.len())].as_bytes().to_vec();
        for _ in 0..=rng.below(4) {
            let at = rng.below(input.len() + 1);
            match rng.below(6) {
                0 if !input.is_empty() => {
                    let i = rng.below(input.len());
                    input[i] = rng.next_u64() as u8;
                }
                1 => {
                    let token = tokens[rng.below(tokens.len())].as_bytes();
                    input.splice(at..at, token.iter().copied());
                }
                2 => input.truncate(at),
                3 => {
                    let tail = input[at..].to_vec();
                    input.extend_from_slice(&tail);
                }
                4 => input = (0..rng.below(64)).map(|_| rng.next_u64() as u8).collect(),
                _ => input.insert(at, b"\0\xff%\\\"'\n[]{}=*/.."[rng.below(16)]),
            }
        }
        out.push(input);
    }
    out
}

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
