//! `credagent-gen OUT_DIR [CONFIG_REFERENCE.md]`: writes what the packages install beside the
//! binary, generated from the sources of truth so they cannot drift from them:
//! - `OUT_DIR/man/credagent.1` and `credagent-SUBCOMMAND.1` for each subcommand, from the clap
//!   definition (`credagent::cli::Cli`);
//! - `OUT_DIR/man/credagent.toml.5`, from the config reference (`docs/config.md` by default);
//! - `OUT_DIR/completions/{credagent.bash,_credagent,credagent.fish}` for bash, zsh and fish.
//!
//! It does not compress or install anything: `scripts/build-deb.sh`, `scripts/build-rpm.sh` and
//! `scripts/test-packaging.sh` do (gzip -9n, as lintian and rpmlint expect).

mod roff;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::CommandFactory;
use clap_complete::Shell;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let Some(out) = args.next().map(PathBuf::from) else {
        eprintln!("usage: credagent-gen OUT_DIR [CONFIG_REFERENCE.md]");
        return ExitCode::from(64);
    };
    let reference = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/config.md"));
    match generate(&out, &reference) {
        Ok(written) => {
            for path in written {
                println!("{}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("credagent-gen: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Writes every page and completion under `out`; returns the paths written.
fn generate(out: &Path, reference: &Path) -> std::io::Result<Vec<PathBuf>> {
    let man = out.join("man");
    let completions = out.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&completions)?;
    let mut written = Vec::new();

    let cli = credagent::cli::Cli::command().name("credagent");
    let date = release_date()?;
    let source = format!("credagent {}", cli.get_version().unwrap_or_default());
    let page = man.join("credagent.1");
    write_page(&page, &cli, &source, &date)?;
    written.push(page);
    for sub in cli.get_subcommands() {
        // clap names are `&'static str` (without its `string` feature); this process is short.
        let name: &'static str =
            Box::leak(format!("credagent-{}", sub.get_name()).into_boxed_str());
        let sub = sub.clone().name(name);
        let page = man.join(format!("{name}.1"));
        write_page(&page, &sub, &source, &date)?;
        written.push(page);
    }

    let text = std::fs::read_to_string(reference)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", reference.display())))?;
    let page = man.join("credagent.toml.5");
    std::fs::write(&page, roff::config_page(&text, &source, &date))?;
    written.push(page);

    for (shell, file) in [
        (Shell::Bash, "credagent.bash"),
        (Shell::Zsh, "_credagent"),
        (Shell::Fish, "credagent.fish"),
    ] {
        let path = completions.join(file);
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut cli.clone(), "credagent", &mut buf);
        std::fs::write(&path, buf)?;
        written.push(path);
    }
    Ok(written)
}

/// The release's date, `22 Nov 2026`, from the newest entry of packaging/debian/changelog (so
/// the pages are the same however often they are built).
fn release_date() -> std::io::Result<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/debian/changelog");
    let text = std::fs::read_to_string(&path)?;
    text.lines()
        .find_map(|line| line.strip_prefix(" -- ")?.split_once(">  "))
        .and_then(|(_, date)| {
            let words: Vec<&str> = date.split_whitespace().collect();
            words.get(1..4).map(|w| w.join(" "))
        })
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: no dated entry", path.display()),
            )
        })
}

fn write_page(
    path: &Path,
    command: &clap::Command,
    source: &str,
    date: &str,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    clap_mangen::Man::new(command.clone())
        .section("1")
        .date(date)
        .source(source)
        .manual("credagent manual")
        .render(&mut buf)?;
    let mut file = std::fs::File::create(path)?;
    file.write_all(&buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generated() -> (tempfile::TempDir, Vec<PathBuf>) {
        let dir = tempfile::tempdir().unwrap();
        let reference = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/config.md");
        let written = generate(dir.path(), &reference).unwrap();
        (dir, written)
    }

    fn read(dir: &tempfile::TempDir, rel: &str) -> String {
        std::fs::read_to_string(dir.path().join(rel)).unwrap()
    }

    /// Every subcommand and every long flag of the CLI is in its man page and in each shell's
    /// completions: a flag added to cli.rs is in the packages' pages without anyone editing them.
    #[test]
    fn pages_and_completions_cover_every_subcommand_and_flag() {
        let (dir, _) = generated();
        let cli = credagent::cli::Cli::command();
        // roff writes a hyphen as `\-`; compare the text a reader sees.
        let main_page = read(&dir, "man/credagent.1").replace("\\-", "-");
        let completions: Vec<(&str, String)> = ["credagent.bash", "_credagent", "credagent.fish"]
            .into_iter()
            .map(|f| (f, read(&dir, &format!("completions/{f}"))))
            .collect();
        let mut subcommands = 0;
        for sub in cli.get_subcommands() {
            subcommands += 1;
            let name = sub.get_name();
            assert!(main_page.contains(name), "credagent.1 lacks {name}");
            let page = read(&dir, &format!("man/credagent-{name}.1")).replace("\\-", "-");
            assert!(
                page.contains(&format!(".TH credagent-{name} 1")),
                "credagent-{name}.1 has no title"
            );
            for (file, text) in &completions {
                assert!(text.contains(name), "{file} lacks subcommand {name}");
            }
            for arg in sub.get_arguments() {
                let Some(long) = arg.get_long() else { continue };
                assert!(
                    page.contains(&format!("--{long}")),
                    "credagent-{name}.1 lacks --{long}"
                );
                for (file, text) in &completions {
                    assert!(text.contains(long), "{file} lacks {name} --{long}");
                }
            }
        }
        assert!(subcommands >= 8, "only {subcommands} subcommands found");
    }

    /// The config page has every key the config reference's tables list.
    #[test]
    fn the_config_page_has_every_key_of_the_reference() {
        let (dir, _) = generated();
        let page = read(&dir, "man/credagent.toml.5").replace("\\-", "-");
        assert!(
            page.starts_with(".TH CREDAGENT.TOML 5"),
            "{}",
            &page[..80.min(page.len())]
        );
        let reference = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/config.md"),
        )
        .unwrap();
        let keys: Vec<&str> = reference
            .lines()
            .filter_map(|line| line.strip_prefix("| `"))
            .filter_map(|rest| rest.split('`').next())
            .collect();
        assert!(keys.len() >= 20, "only {} keys found", keys.len());
        for key in [
            "server.socket",
            "cache.ttl_secs",
            "audit.file",
            "log.format",
        ] {
            assert!(keys.contains(&key), "docs/config.md lists no {key}");
        }
        for key in keys {
            assert!(page.contains(key), "credagent.toml.5 lacks {key}");
        }
    }
}
