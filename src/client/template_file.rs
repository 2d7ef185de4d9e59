//! A template file as both `render` and `render --watch` use it: read and parsed once, each
//! distinct secret it names listed once (a secret named twice is fetched, and watched, once),
//! and the rendered bytes assembled in locked memory ([`SecretBuf`]) from the values held for
//! those secrets.

use std::path::Path;

use super::ClientError;
use super::watch::{self, Current, Watched};
use crate::secure_mem::{SecretBuf, SecretBytes};
use crate::template::{Piece, Schemes};

/// A template piece with its secret resolved to an index into [`Template::watched`].
#[derive(Debug)]
enum Part {
    Text(String),
    Secret(usize),
}

/// A parsed template file.
#[derive(Debug)]
pub struct Template {
    parts: Vec<Part>,
    /// Each distinct secret the template names, in the order of first mention.
    pub watched: Vec<Watched>,
    /// The template's length: where the rendered buffer starts.
    text_len: usize,
}

impl Template {
    /// Reads and parses the template file at `path` (`--scheme` mappings in `schemes`); when
    /// the client runs privileged (root, or `--owner` another uid), only a file it may trust
    /// (`trust::read_trusted`).
    pub fn read(path: &Path, schemes: &Schemes, owner: Option<u32>) -> Result<Self, ClientError> {
        let (text, _) = super::trust::read_trusted(path, owner)
            .map_err(|e| ClientError::Usage(format!("cannot read {}: {e}", path.display())))?;
        let pieces = crate::template::parse_template_with(&text, schemes)
            .map_err(|e| ClientError::Usage(format!("{}: {e}", path.display())))?;
        let mut watched = Vec::new();
        let parts = pieces
            .into_iter()
            .map(|piece| match piece {
                Piece::Text(text) => Part::Text(text),
                Piece::Secret { name, field } => Part::Secret(watch::index_of(
                    &mut watched,
                    Watched {
                        name: name.to_string(),
                        field,
                    },
                )),
            })
            .collect();
        Ok(Template {
            parts,
            watched,
            text_len: text.len(),
        })
    }

    /// The rendered bytes, `current[i]` holding the value of `watched[i]`.
    pub fn render(&self, current: &[Current]) -> Result<SecretBytes, ClientError> {
        let memory = |e: crate::secure_mem::MemError| ClientError::Usage(e.to_string());
        let mut out = SecretBuf::with_capacity(self.text_len.max(256)).map_err(memory)?;
        for part in &self.parts {
            let bytes = match part {
                Part::Text(text) => text.as_bytes(),
                Part::Secret(index) => current.get(*index).map_or(&[][..], |c| c.value.as_slice()),
            };
            out.extend_from_slice(bytes).map_err(memory)?;
        }
        out.finish().map_err(memory)
    }
}

/// Renders a template file, fetching each distinct `{{ secret … }}` once through the agent
/// (failing at the first error). Each value and the rendered bytes are collected in locked
/// memory that is wiped when dropped (a plain `Vec` would leave a copy behind at each growth).
pub async fn render(
    socket: &Path,
    template: &Path,
    schemes: &crate::template::Schemes,
    owner: Option<u32>,
) -> Result<SecretBytes, ClientError> {
    let template = Template::read(template, schemes, owner)?;
    let current = watch::fetch_once(socket, &template.watched).await?;
    template.render(&current)
}
