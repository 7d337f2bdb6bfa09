//! External plugins: shared libraries found in plugin directories and loaded through the C ABI
//! of `plugins/sdk/include/taphost_plugin.h` (its Rust mirror is `taphost_sdk::abi`).
//!
//! # Layout
//!
//! - `mod.rs`: discovery (`$TAPHOST_PLUGIN_PATH`, `~/.local/lib/taphost/plugins`,
//!   `/usr/lib/taphost/plugins`) and loading: version, entry symbol, descriptor, each checked
//!   before the next step, a refusal naming the file. Libraries are never unloaded.
//! - [`library`]: a loaded library's table, and the safe calls into it (all of the host's
//!   unsafe code for plugins).
//! - [`maker`]: [`ExternalMaker`], a service plugin as a [`crate::Maker`]: the clap command
//!   built from the descriptor's options, and [`maker::ExternalService`].
//! - [`resource`]: dynamic web pages served by a resource library (`web --resource`).
//!
//! Scheduling: a plugin runs its work on its own threads. The host calls `start`, `stop`,
//! `abort`, `state` through the ABI (the blocking ones on tokio's blocking pool); it never
//! polls a plugin's futures, because a shared library carries its own copy of tokio whose
//! runtime and thread-locals are not the host's.

pub mod library;
pub mod maker;
pub mod resource;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use taphost_sdk::abi::Kind;

pub use library::Library;
pub use maker::ExternalMaker;
pub use resource::{Request, Resource, ResourceInstance, Response};

/// The environment variable listing plugin directories before the standard ones.
pub const PATH_VARIABLE: &str = "TAPHOST_PLUGIN_PATH";

/// Where to look, for the message about an unknown plugin.
pub const SEARCH_HINT: &str = "external plugins are looked for in $TAPHOST_PLUGIN_PATH, \
     ~/.local/lib/taphost/plugins and /usr/lib/taphost/plugins";

/// A library that was not taken, and why; the message names the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub path: PathBuf,
    pub reason: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "plugin {} refused: {}", self.path.display(), self.reason)
    }
}

/// What the plugin directories hold: services, resources, and the libraries refused.
#[derive(Debug, Default)]
pub struct Discovery {
    pub services: Vec<Arc<ExternalMaker>>,
    pub resources: HashMap<String, Arc<Resource>>,
    pub refused: Vec<Refusal>,
}

/// The plugin directories, in search order.
pub fn directories() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os(PATH_VARIABLE)
        .map(|p| {
            std::env::split_paths(&p)
                .filter(|d| !d.as_os_str().is_empty())
                .collect()
        })
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        dirs.push(PathBuf::from(home).join(".local/lib/taphost/plugins"));
    }
    dirs.push(PathBuf::from("/usr/lib/taphost/plugins"));
    dirs
}

/// The plugin directories' contents, scanned and loaded once per process (libraries stay
/// loaded, so a second scan could only find the same ones).
pub fn discovered() -> &'static Discovery {
    static DISCOVERY: OnceLock<Discovery> = OnceLock::new();
    DISCOVERY.get_or_init(|| discover(&directories()))
}

/// The resource library named `name`, if a plugin directory has one.
pub fn resource(name: &str) -> Option<Arc<Resource>> {
    discovered().resources.get(name).cloned()
}

/// Loads every `*.so` of `dirs`, in order, each directory's files sorted by name. A name seen
/// before (in an earlier directory or file) is refused; the first one stays.
pub fn discover(dirs: &[PathBuf]) -> Discovery {
    let mut found = Discovery::default();
    let mut names: HashMap<String, PathBuf> = HashMap::new();
    for dir in dirs {
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            // Most directories of the search path do not exist; that is no problem.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                found.refused.push(Refusal {
                    path: dir.clone(),
                    reason: format!("cannot read the plugin directory: {e}"),
                });
                continue;
            }
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "so") && p.is_file())
            .collect();
        files.sort();
        for path in files {
            let library: &'static Library = match Library::load(&path) {
                // Never unloaded, so its code can be pointed at for the rest of the process.
                Ok(library) => Box::leak(Box::new(library)),
                Err(reason) => {
                    found.refused.push(Refusal { path, reason });
                    continue;
                }
            };
            let name = library.descriptor().name.clone();
            if let Some(first) = names.get(&name) {
                found.refused.push(Refusal {
                    path,
                    reason: format!(
                        "a plugin named '{name}' was found first in {}",
                        first.display()
                    ),
                });
                continue;
            }
            names.insert(name.clone(), path);
            match library.descriptor().kind {
                Kind::Service => found.services.push(Arc::new(ExternalMaker::new(library))),
                Kind::Resource => {
                    found
                        .resources
                        .insert(name, Arc::new(Resource::new(library)));
                }
            }
        }
    }
    found
}

/// Whether a plugin name is usable as a subcommand and a tap field.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && !name.starts_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_is_no_library_is_refused_by_name_and_missing_dirs_are_fine() {
        let dir = tempfile::tempdir().expect("temp dir");
        let fake = dir.path().join("fake.so");
        std::fs::write(&fake, "text, not ELF").expect("write");
        std::fs::write(dir.path().join("notes.txt"), "ignored: not .so").expect("write");
        let found = discover(&[dir.path().join("missing"), dir.path().to_path_buf()]);
        assert!(found.services.is_empty() && found.resources.is_empty());
        assert_eq!(found.refused.len(), 1, "{:?}", found.refused);
        assert_eq!(found.refused[0].path, fake);
        let message = found.refused[0].to_string();
        assert!(
            message.starts_with(&format!(
                "plugin {} refused: cannot load it",
                fake.display()
            )),
            "{message}"
        );
    }

    #[test]
    fn plugin_names_are_subcommand_safe() {
        assert!(valid_name("portforward") && valid_name("my_plugin-2"));
        for bad in ["", "-x", "a b", "a/b", "ü", &"x".repeat(65)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }
}
