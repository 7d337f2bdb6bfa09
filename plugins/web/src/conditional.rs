//! Conditional requests (RFC 9110 §13): validators and the order in which preconditions are
//! evaluated. Dates compare at one-second resolution, the resolution of Last-Modified.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper::header::{
    HeaderMap, IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, IF_UNMODIFIED_SINCE,
};

/// What the preconditions say about a request for a representation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Proceed,
    NotModified,
    PreconditionFailed,
}

/// The file's modification time as HTTP can state it (`Last-Modified`, If-Modified-Since):
/// `None` for a time before 1970 or after 9999, which an HTTP-date cannot hold (`httpdate`
/// would panic formatting it); such a file is served without date validators.
/// A time in the future (a clock set wrong when the file was written) is stated as now: an
/// origin server must never send a Last-Modified later than its Date (RFC 9110 §8.8.2.1).
pub fn modified(meta: &std::fs::Metadata) -> Option<SystemTime> {
    // 253402300799 is 9999-12-31T23:59:59Z, the last instant an HTTP-date can name.
    const LAST: Duration = Duration::from_secs(253_402_300_799);
    let t = meta.modified().ok()?;
    let t = t.min(SystemTime::now());
    (t >= UNIX_EPOCH && t.duration_since(UNIX_EPOCH).ok()? <= LAST).then_some(t)
}

/// A strong entity tag for a file: changes with its inode, size and modification time
/// (nanoseconds included, so two writes within a second differ). `suffix` distinguishes the
/// encodings of one file (`.gz`, `.br` siblings).
pub fn etag(meta: &std::fs::Metadata, suffix: &str) -> String {
    use std::fmt::Write as _;
    use std::os::unix::fs::MetadataExt;
    let mut tag = String::with_capacity(48);
    let _ = write!(
        tag,
        "\"{:x}-{:x}-{:x}",
        meta.ino(),
        meta.len(),
        meta.mtime()
    );
    if meta.mtime_nsec() != 0 {
        let _ = write!(tag, ".{:x}", meta.mtime_nsec());
    }
    tag.push_str(suffix);
    tag.push('"');
    tag
}

fn seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

fn date(headers: &HeaderMap, name: hyper::header::HeaderName) -> Option<u64> {
    let value = headers.get(name)?.to_str().ok()?;
    httpdate::parse_http_date(value).ok().map(seconds)
}

/// The entity tags of an If-Match / If-None-Match list, each with whether it is weak; `None`
/// for `*`.
fn tags(value: &str) -> Option<Vec<(bool, &str)>> {
    if value.trim() == "*" {
        return None;
    }
    let mut out = Vec::new();
    let mut rest = value;
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            break;
        }
        let weak = rest.starts_with("W/");
        if weak {
            rest = &rest[2..];
        }
        if !rest.starts_with('"') {
            // Not an entity tag: skip to the next comma.
            rest = rest.find(',').map_or("", |i| &rest[i..]);
            continue;
        }
        match rest[1..].find('"') {
            Some(end) => {
                out.push((weak, &rest[..end + 2]));
                rest = &rest[end + 2..];
            }
            None => break,
        }
    }
    Some(out)
}

/// `etag` is ours, possibly `W/`-prefixed.
fn split_weak(etag: &str) -> (bool, &str) {
    match etag.strip_prefix("W/") {
        Some(tag) => (true, tag),
        None => (false, etag),
    }
}

fn matches_strong(list: &str, etag: &str) -> bool {
    let (our_weak, ours) = split_weak(etag);
    match tags(list) {
        None => true,
        Some(tags) => !our_weak && tags.iter().any(|(weak, tag)| !weak && *tag == ours),
    }
}

fn matches_weak(list: &str, etag: &str) -> bool {
    let (_, ours) = split_weak(etag);
    match tags(list) {
        None => true,
        Some(tags) => tags.iter().any(|(_, tag)| *tag == ours),
    }
}

/// Evaluates the preconditions in RFC 9110 §13.2.2's order.
pub fn evaluate(
    headers: &HeaderMap,
    etag: &str,
    modified: Option<SystemTime>,
    get_or_head: bool,
) -> Outcome {
    let modified = modified.map(seconds);
    if let Some(list) = headers.get(IF_MATCH).and_then(|v| v.to_str().ok()) {
        if !matches_strong(list, etag) {
            return Outcome::PreconditionFailed;
        }
    } else if let (Some(since), Some(modified)) = (date(headers, IF_UNMODIFIED_SINCE), modified) {
        if modified > since {
            return Outcome::PreconditionFailed;
        }
    }
    if let Some(list) = headers.get(IF_NONE_MATCH).and_then(|v| v.to_str().ok()) {
        if matches_weak(list, etag) {
            return if get_or_head {
                Outcome::NotModified
            } else {
                Outcome::PreconditionFailed
            };
        }
    } else if let (true, Some(since), Some(modified)) =
        (get_or_head, date(headers, IF_MODIFIED_SINCE), modified)
    {
        if modified <= since {
            return Outcome::NotModified;
        }
    }
    Outcome::Proceed
}

/// Whether a Range request may be honoured: true without If-Range, or when If-Range names the
/// current representation (a strong ETag, or exactly its Last-Modified date).
pub fn if_range_holds(headers: &HeaderMap, etag: &str, modified: Option<SystemTime>) -> bool {
    let Some(value) = headers.get(IF_RANGE) else {
        return true;
    };
    let Ok(value) = value.to_str() else {
        return false;
    };
    let value = value.trim();
    if value.starts_with('"') || value.starts_with("W/") {
        let (our_weak, ours) = split_weak(etag);
        return !our_weak && value == ours;
    }
    match (httpdate::parse_http_date(value), modified) {
        (Ok(date), Some(modified)) => seconds(date) == seconds(modified),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).expect("value"));
        }
        map
    }

    #[test]
    fn precedence_and_matching() {
        let t = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let earlier = httpdate::fmt_http_date(t - Duration::from_secs(10));
        let same = httpdate::fmt_http_date(t);
        let e = "\"abc\"";
        let eval = |pairs: &[(&'static str, &str)]| evaluate(&headers(pairs), e, Some(t), true);
        assert_eq!(eval(&[]), Outcome::Proceed);
        assert_eq!(
            eval(&[("if-none-match", "\"x\", \"abc\"")]),
            Outcome::NotModified
        );
        assert_eq!(
            eval(&[("if-none-match", "W/\"abc\"")]),
            Outcome::NotModified
        );
        assert_eq!(eval(&[("if-none-match", "*")]), Outcome::NotModified);
        assert_eq!(eval(&[("if-none-match", "\"x\"")]), Outcome::Proceed);
        assert_eq!(eval(&[("if-modified-since", &same)]), Outcome::NotModified);
        assert_eq!(eval(&[("if-modified-since", &earlier)]), Outcome::Proceed);
        // If-None-Match wins over If-Modified-Since.
        assert_eq!(
            eval(&[("if-none-match", "\"x\""), ("if-modified-since", &same)]),
            Outcome::Proceed
        );
        assert_eq!(eval(&[("if-match", "\"x\"")]), Outcome::PreconditionFailed);
        assert_eq!(
            eval(&[("if-match", "W/\"abc\"")]),
            Outcome::PreconditionFailed
        );
        assert_eq!(eval(&[("if-match", "\"abc\"")]), Outcome::Proceed);
        assert_eq!(
            eval(&[("if-unmodified-since", &earlier)]),
            Outcome::PreconditionFailed
        );
        assert_eq!(eval(&[("if-unmodified-since", &same)]), Outcome::Proceed);
        assert_eq!(eval(&[("if-modified-since", "garbage")]), Outcome::Proceed);
        let h = headers(&[("if-range", "\"abc\"")]);
        assert!(if_range_holds(&h, e, Some(t)));
        assert!(!if_range_holds(&h, "W/\"abc\"", Some(t)));
        assert!(if_range_holds(&headers(&[("if-range", &same)]), e, Some(t)));
        assert!(!if_range_holds(
            &headers(&[("if-range", &earlier)]),
            e,
            Some(t)
        ));
    }
}
