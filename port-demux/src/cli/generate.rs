//! `port-demux generate --out DIR` (hidden): shell completions and man pages from the clap
//! definitions, so that they never drift from the command line they describe.

use std::{io::Write, path::PathBuf};

use clap::{Args, CommandFactory as _};
use clap_complete::Shell;

use super::{Cli, Failure};

/// Arguments of `generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Folder to write into (created when missing): `completions/port-demux.bash`,
    /// `completions/_port-demux` (zsh), `completions/port-demux.fish`, `man/man1/port-demux.1`
    /// and one `man/man1/port-demux-VERB.1` per verb (`MANPATH=DIR/man` finds them).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

pub fn generate(args: &GenerateArgs, out: &mut dyn Write) -> Result<(), Failure> {
    let written = write_all(&args.out).map_err(|(path, e)| Failure {
        message: format!(
            "cannot write {}: {e}; give --out a folder you can write to",
            path.display()
        ),
        code: 1,
    })?;
    for path in written {
        writeln!(out, "{}", path.display())?;
    }
    Ok(())
}

/// Writes the completions and man pages under `dir`; the paths written, or the one that failed.
fn write_all(dir: &std::path::Path) -> Result<Vec<PathBuf>, (PathBuf, std::io::Error)> {
    let mut written = Vec::new();
    let mut put = |path: PathBuf, bytes: &[u8]| {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| (parent.to_owned(), e))?;
        }
        std::fs::write(&path, bytes).map_err(|e| (path.clone(), e))?;
        written.push(path);
        Ok(())
    };
    let name = "port-demux";
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut cmd = Cli::command();
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut cmd, name, &mut buf);
        let file = match shell {
            Shell::Zsh => format!("_{name}"),
            _ => format!("{name}.{shell}"),
        };
        put(dir.join("completions").join(file), &buf)?;
    }
    let mut cmd = Cli::command();
    cmd.build();
    let mut pages = vec![(name.to_owned(), cmd.clone())];
    pages.extend(
        cmd.get_subcommands()
            .filter(|sub| !sub.is_hide_set() && sub.get_name() != "help")
            // Built, a verb's display name is `port-demux-VERB`: its page's title and NAME.
            .map(|sub| {
                let page = sub.get_display_name().unwrap_or_else(|| sub.get_name());
                (page.to_owned(), sub.clone())
            }),
    );
    for (file, page) in pages {
        let mut buf = Vec::new();
        clap_mangen::Man::new(page)
            .render(&mut buf)
            .map_err(|e| (dir.join("man/man1").join(format!("{file}.1")), e))?;
        put(dir.join("man/man1").join(format!("{file}.1")), &buf)?;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    /// Runs `program args... file` when `program` is installed; `None` when it is not.
    fn check(program: &str, args: &[&str], file: &std::path::Path) -> Option<String> {
        let out = match Command::new(program).args(args).arg(file).output() {
            Ok(out) => out,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                eprintln!("{program} is not installed: {} not checked", file.display());
                return None;
            }
            Err(e) => panic!("cannot run {program}: {e}"),
        };
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "{program} {args:?} {} failed: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Some(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn verbs() -> Vec<String> {
        Cli::command()
            .get_subcommands()
            .filter(|s| !s.is_hide_set())
            .map(|s| s.get_name().to_owned())
            .collect()
    }

    #[test]
    fn completions_parse_in_their_shells_and_man_pages_render() {
        let dir = std::env::temp_dir().join(format!("port-demux-generate-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut listing = Vec::new();
        generate(&GenerateArgs { out: dir.clone() }, &mut listing).unwrap();
        let completions = dir.join("completions");
        let bash = completions.join("port-demux.bash");
        // bash is always there; zsh and fish are installed by `cargo xtask setup`.
        check("bash", &["-n"], &bash).expect("bash is needed");
        check("zsh", &["-n"], &completions.join("_port-demux"));
        check("fish", &["-n"], &completions.join("port-demux.fish"));
        let bash_text = std::fs::read_to_string(&bash).unwrap();
        for verb in verbs() {
            assert!(bash_text.contains(&verb), "bash completion lacks {verb}");
        }
        // `man -l` renders each page; the main page names every verb, each verb's page its flags.
        let main =
            check("man", &["-l"], &dir.join("man/man1/port-demux.1")).expect("man is needed");
        for verb in verbs() {
            assert!(main.contains(&verb), "port-demux(1) lacks {verb}:\n{main}");
            let page = dir.join(format!("man/man1/port-demux-{verb}.1"));
            let text = check("man", &["-l"], &page).expect("man is needed");
            assert!(text.contains(&format!("port-demux-{verb}")), "{text}");
        }
        let stats = check("man", &["-l"], &dir.join("man/man1/port-demux-stats.1")).unwrap();
        assert!(stats.contains("--json"), "{stats}");
        assert_eq!(
            String::from_utf8(listing).unwrap().lines().count(),
            3 + 1 + verbs().len()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
