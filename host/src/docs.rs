//! Man pages (clap_mangen) and shell completions (clap_complete) for a binary, written from the
//! very `clap::Command` it parses with, so they list the same options and plugin subcommands.
//!
//! They are made by the built binaries (`BIN --generate-docs DIR`, see [`crate::exit::parse_args`])
//! rather than by a build script: a binary's command includes every plugin's options, which come
//! from the plugin crates at run time, and a build script cannot run the package's own binaries.
//! `packaging/deb` runs this between `cargo build --release` and `cargo deb --no-build`.

use std::io::Write;
use std::path::Path;

use clap::Command;
use clap_complete::Shell;

/// Writes `DIR/man/BIN.1.gz` (and `BIN-SUB.1.gz` for each subcommand) and the completions under the
/// names each shell looks for: `DIR/bash/BIN`, `DIR/zsh/_BIN`, `DIR/fish/BIN.fish`.
pub fn write(cmd: Command, dir: &Path) -> std::io::Result<()> {
    let man = dir.join("man");
    std::fs::create_dir_all(&man)?;
    // Without clap's implicit `help` subcommand, which would get pages of its own.
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    clap_mangen::generate_to(cmd.clone(), &man)?;
    compress_pages(&man)?;
    let name = cmd.get_name().to_string();
    for (shell, sub, file) in [
        (Shell::Bash, "bash", name.clone()),
        (Shell::Zsh, "zsh", format!("_{name}")),
        (Shell::Fish, "fish", format!("{name}.fish")),
    ] {
        // clap_complete's generate_to names bash files BIN.bash; bash-completion loads BIN.
        let mut text = Vec::new();
        clap_complete::generate(shell, &mut cmd, &name, &mut text);
        std::fs::create_dir_all(dir.join(sub))?;
        std::fs::write(dir.join(sub).join(file), text)?;
    }
    Ok(())
}

/// Debian installs man pages gzipped (`gzip -9n`: best compression, no name or time stamp);
/// neither clap_mangen nor cargo-deb compresses them.
fn compress_pages(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "1") {
            let page = std::fs::read(&path)?;
            let mut gz = flate2::GzBuilder::new()
                .mtime(0)
                .write(Vec::new(), flate2::Compression::best());
            gz.write_all(&page)?;
            let mut name = path.clone().into_os_string();
            name.push(".gz");
            std::fs::write(&name, gz.finish()?)?;
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}
