//! The HTML listing of a directory that has no index file: directories first, then files,
//! each sorted by name, with sizes and modification times; dotfiles are not listed. Every name
//! is escaped for HTML and percent-encoded in its link.

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::Path;
use std::time::SystemTime;

use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};

use crate::resolve::UrlPath;

/// Characters escaped in a link to one path segment (RFC 3986 pchar, minus a few that confuse
/// HTML attributes or relative references).
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'&')
    .add(b'\'')
    .add(b'/')
    .add(b':')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'[')
    .add(b'\\')
    .add(b']')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

/// Escapes text for HTML element content and quoted attributes. Five replacements do not
/// warrant a crate.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

struct Entry {
    name: String,
    is_dir: bool,
    size: u64,
    modified: Option<SystemTime>,
}

/// Renders the listing of `dir`, shown as the URL path `url`.
pub fn render(dir: &Path, url: &UrlPath) -> io::Result<String> {
    let mut entries = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        // Follow symlinks for type and size, as a browser user expects; one that dangles is
        // listed as a file of size 0.
        let meta = fs::metadata(entry.path()).ok();
        entries.push(Entry {
            name,
            is_dir: meta.as_ref().is_some_and(|m| m.is_dir()),
            size: meta.as_ref().map_or(0, |m| m.len()),
            modified: meta.and_then(|m| m.modified().ok()),
        });
    }
    entries.sort_by(|a, b| b.is_dir.cmp(&a.is_dir).then_with(|| a.name.cmp(&b.name)));

    let title = escape_html(&format!("Index of {}", url.display()));
    let mut html = String::with_capacity(512 + entries.len() * 160);
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title>\n\
         <style>body{{font-family:sans-serif}}td{{padding:0 1em}}td.size{{text-align:right}}</style>\n\
         </head><body>\n<h1>{title}</h1>\n<table>\n\
         <tr><th>Name</th><th>Size</th><th>Last modified</th></tr>\n"
    );
    if !url.segments.is_empty() {
        html.push_str("<tr><td><a href=\"../\">../</a></td><td></td><td></td></tr>\n");
    }
    for entry in &entries {
        let href = utf8_percent_encode(&entry.name, SEGMENT).to_string();
        let slash = if entry.is_dir { "/" } else { "" };
        let size = if entry.is_dir {
            "-".to_string()
        } else {
            entry.size.to_string()
        };
        let modified = entry
            .modified
            .map(httpdate::fmt_http_date)
            .unwrap_or_default();
        let _ = writeln!(
            html,
            "<tr><td><a href=\"{href}{slash}\">{}{slash}</a></td><td class=\"size\">{size}</td><td>{modified}</td></tr>",
            escape_html(&entry.name)
        );
    }
    html.push_str("</table>\n</body></html>\n");
    Ok(html)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_escaped_sorted_and_dotfiles_hidden() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("b<script>.txt"), "12345").expect("write");
        fs::write(dir.path().join("a & b"), "").expect("write");
        fs::write(dir.path().join(".hidden"), "").expect("write");
        fs::create_dir(dir.path().join("zdir")).expect("mkdir");
        let url = UrlPath::parse("/x/").expect("url");
        let html = render(dir.path(), &url).expect("render");
        assert!(html.contains("<a href=\"b%3Cscript%3E.txt\">b&lt;script&gt;.txt</a></td><td class=\"size\">5</td>"), "{html}");
        assert!(
            html.contains("href=\"a%20%26%20b\">a &amp; b</a>"),
            "{html}"
        );
        assert!(!html.contains("hidden"));
        let zdir = html.find("zdir/").expect("dir listed");
        let a = html.find("a &amp; b").expect("file listed");
        assert!(zdir < a, "directories come first");
        assert!(html.contains("href=\"../\""));
    }
}
