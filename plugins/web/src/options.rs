//! Parsing the `NAME=VALUE` option values (`--mount`, `--cgi`, `--resource`, `--vhost`, `--mime`,
//! `--processor`, `--add-header`, `--sni`). The tap stores them as the user typed them, so
//! `validate` and `build` both parse them here and a hand-edited tap gets the same messages.

use std::path::{Path, PathBuf};

use hyper::header::{HeaderName, HeaderValue};

/// `/prefix=/dir` for `--mount` and `--cgi`: the URL prefix as path segments and the directory.
pub fn prefix_dir(option: &str, value: &str) -> Result<(Vec<Vec<u8>>, PathBuf), String> {
    let (prefix, dir) = value
        .split_once('=')
        .ok_or_else(|| format!("{option} '{value}': expected /PREFIX=DIRECTORY"))?;
    if !prefix.starts_with('/') || dir.is_empty() {
        return Err(format!("{option} '{value}': expected /PREFIX=DIRECTORY"));
    }
    let segments: Vec<Vec<u8>> = prefix
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| s.as_bytes().to_vec())
        .collect();
    if segments.is_empty() || segments.iter().any(|s| s == b"." || s == b"..") {
        return Err(format!(
            "{option} '{value}': the prefix must name a path below /, like /doc"
        ));
    }
    Ok((segments, PathBuf::from(dir)))
}

/// `/prefix=NAME` for `--resource`: the URL prefix as path segments and the resource's name.
pub fn resource(value: &str) -> Result<(Vec<Vec<u8>>, String), String> {
    let (segments, name) = prefix_dir("--resource", value)
        .map_err(|_| format!("--resource '{value}': expected /PREFIX=NAME, the prefix below /"))?;
    let name = name.to_string_lossy().into_owned();
    if name.contains('/') {
        return Err(format!(
            "--resource '{value}': NAME is a plugin's name, not a path"
        ));
    }
    Ok((segments, name))
}

/// `.ext=VALUE` for `--mime` and `--processor`: the extension without its dot, lowercased.
fn extension_pair<'a>(option: &str, value: &'a str) -> Result<(String, &'a str), String> {
    let (ext, rest) = value
        .split_once('=')
        .ok_or_else(|| format!("{option} '{value}': expected .EXT=VALUE"))?;
    let ext = ext.strip_prefix('.').unwrap_or(ext);
    if ext.is_empty() || ext.contains('/') || rest.is_empty() {
        return Err(format!("{option} '{value}': expected .EXT=VALUE"));
    }
    Ok((ext.to_ascii_lowercase(), rest))
}

/// `--mime .ext=type/sub`.
pub fn mime(value: &str) -> Result<(String, HeaderValue), String> {
    let (ext, media) = extension_pair("--mime", value)?;
    match HeaderValue::from_str(media) {
        Ok(v) if media.contains('/') => Ok((ext, v)),
        _ => Err(format!(
            "--mime '{value}': '{media}' is not a media type like text/plain"
        )),
    }
}

/// `--processor .pl=/usr/bin/perl`.
pub fn processor(value: &str) -> Result<(String, PathBuf), String> {
    let (ext, program) = extension_pair("--processor", value)?;
    Ok((ext, PathBuf::from(program)))
}

/// That `program` can be run: a path to an executable file, or a name found on `$PATH` (as
/// the CGI runner looks for it), so a typo is told at start, not as a 500 per request.
pub fn find_program(program: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let runnable = |path: &Path| {
        std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.components().count() > 1 {
        return match std::fs::metadata(program) {
            Err(e) => Err(format!("{}: {e}", program.display())),
            Ok(_) if !runnable(program) => {
                Err(format!("{} is not an executable file", program.display()))
            }
            Ok(_) => Ok(()),
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    if std::env::split_paths(&path).any(|dir| runnable(&dir.join(program))) {
        Ok(())
    } else {
        Err(format!("{} is not on $PATH", program.display()))
    }
}

/// `--add-header "Name: value"`.
pub fn header(value: &str) -> Result<(HeaderName, HeaderValue), String> {
    let bad = || format!("--add-header '{value}': expected \"Name: value\"");
    let (name, v) = value.split_once(':').ok_or_else(bad)?;
    let name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| bad())?;
    let v = HeaderValue::from_str(v.trim()).map_err(|_| bad())?;
    // How a message is framed and what a connection does are the server's to say: a fixed
    // Content-Length on every response would contradict each body (hyper refuses to send it).
    if matches!(
        name.as_str(),
        "content-length"
            | "transfer-encoding"
            | "connection"
            | "keep-alive"
            | "upgrade"
            | "te"
            | "trailer"
            | "proxy-connection"
    ) {
        return Err(format!(
            "--add-header '{value}': {name} is set by the server for each response"
        ));
    }
    Ok((name, v))
}

/// A host name as compared with the Host header: lowercase, no trailing dot.
pub fn host_name(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// `--vhost example.org=/srv/example`.
pub fn vhost(value: &str) -> Result<(String, PathBuf), String> {
    match value.split_once('=') {
        Some((name, dir))
            if !name.is_empty()
                && !dir.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.') =>
        {
            Ok((host_name(name), PathBuf::from(dir)))
        }
        _ => Err(format!("--vhost '{value}': expected HOST=DIRECTORY")),
    }
}

/// `--sni example.org=cert.pem:key.pem`: the certificate a TLS client naming that host gets.
pub fn sni(value: &str) -> Result<(String, PathBuf, PathBuf), String> {
    let bad = || format!("--sni '{value}': expected HOST=CERT.pem:KEY.pem");
    let (name, files) = value.split_once('=').ok_or_else(bad)?;
    let (cert, key) = files.split_once(':').ok_or_else(bad)?;
    if name.is_empty() || cert.is_empty() || key.is_empty() {
        return Err(bad());
    }
    Ok((host_name(name), PathBuf::from(cert), PathBuf::from(key)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse_and_errors_name_the_option() {
        assert_eq!(
            prefix_dir("--mount", "/doc/api=/srv").expect("ok").0,
            vec![b"doc".to_vec(), b"api".to_vec()]
        );
        assert!(prefix_dir("--mount", "doc=/srv")
            .expect_err("no slash")
            .contains("--mount"));
        assert!(prefix_dir("--cgi", "/=/srv").is_err());
        assert!(prefix_dir("--cgi", "/../x=/srv").is_err());
        assert_eq!(mime(".MD=text/markdown").expect("ok").0, "md");
        assert!(mime(".md=markdown").is_err());
        assert_eq!(processor("py=/usr/bin/python3").expect("ok").0, "py");
        assert_eq!(
            header("X-Frame-Options: DENY").expect("ok").0.as_str(),
            "x-frame-options"
        );
        assert!(header("nocolon").is_err());
        assert_eq!(vhost("Example.ORG.=/srv").expect("ok").0, "example.org");
        assert!(vhost("a b=/srv").is_err());
        assert_eq!(sni("a.org=c.pem:k.pem").expect("ok").0, "a.org");
        assert!(sni("a.org=c.pem").is_err());
    }
}
