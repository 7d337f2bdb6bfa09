//! `Range: bytes=...` (RFC 9110 §14): which parts of a representation to send. A header that
//! does not parse is ignored (the whole body is sent, as the RFC allows); overlapping or
//! absurdly many ranges are also answered with the whole body, so a request cannot make the
//! server send more than the file.

use std::ops::Range;

/// More ranges than this in one request are not honoured.
pub const MAX_RANGES: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ranges {
    /// Send the whole representation (200).
    Whole,
    /// Send these byte ranges (206), in the order asked for.
    Parts(Vec<Range<u64>>),
    /// None of the ranges overlaps the representation (416).
    Unsatisfiable,
}

/// Parses a Range header value against a representation of `len` bytes.
pub fn parse(value: &str, len: u64) -> Ranges {
    let Some((unit, set)) = value.split_once('=') else {
        return Ranges::Whole;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return Ranges::Whole;
    }
    let mut parts = Vec::new();
    let mut any = false;
    for spec in set.split(',') {
        let spec = spec.trim();
        if spec.is_empty() {
            continue;
        }
        any = true;
        if parts.len() >= MAX_RANGES {
            return Ranges::Whole;
        }
        let Some((first, last)) = spec.split_once('-') else {
            return Ranges::Whole;
        };
        let number = |s: &str| -> Option<u64> {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                None
            } else {
                s.parse().ok()
            }
        };
        let (first, last) = (first.trim(), last.trim());
        if first.is_empty() {
            // A suffix: the last N bytes.
            let Some(n) = number(last) else {
                return Ranges::Whole;
            };
            if n > 0 && len > 0 {
                parts.push(len.saturating_sub(n)..len);
            }
            continue;
        }
        let Some(start) = number(first) else {
            return Ranges::Whole;
        };
        let end = if last.is_empty() {
            len
        } else {
            match number(last) {
                Some(end) if end >= start => end.saturating_add(1).min(len),
                _ => return Ranges::Whole,
            }
        };
        if start < len {
            parts.push(start..end);
        }
    }
    if !any {
        return Ranges::Whole;
    }
    if parts.is_empty() {
        return Ranges::Unsatisfiable;
    }
    let mut sorted = parts.clone();
    sorted.sort_by_key(|r| r.start);
    if sorted.windows(2).any(|w| w[1].start < w[0].end) {
        return Ranges::Whole;
    }
    if parts.len() == 1 && parts[0] == (0..len) {
        return Ranges::Whole;
    }
    Ranges::Parts(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::single_range_in_vec_init)] // one range in a list is the point
    fn forms() {
        assert_eq!(parse("bytes=0-4", 10), Ranges::Parts(vec![0..5]));
        assert_eq!(parse("bytes=5-", 10), Ranges::Parts(vec![5..10]));
        assert_eq!(parse("bytes=-3", 10), Ranges::Parts(vec![7..10]));
        assert_eq!(parse("bytes=-30", 10), Ranges::Whole);
        assert_eq!(parse("bytes=8-100", 10), Ranges::Parts(vec![8..10]));
        assert_eq!(parse("bytes=0-1, 4-5", 10), Ranges::Parts(vec![0..2, 4..6]));
        assert_eq!(parse("bytes=10-", 10), Ranges::Unsatisfiable);
        assert_eq!(parse("bytes=10-20, 30-", 10), Ranges::Unsatisfiable);
        assert_eq!(parse("bytes=-0", 10), Ranges::Unsatisfiable);
        assert_eq!(parse("bytes=0-5,3-8", 10), Ranges::Whole, "overlap");
        assert_eq!(parse("bytes=5-1", 10), Ranges::Whole, "invalid");
        assert_eq!(parse("items=0-1", 10), Ranges::Whole);
        assert_eq!(parse("bytes=x-1", 10), Ranges::Whole);
        assert_eq!(parse("bytes=", 10), Ranges::Whole);
        let many: Vec<String> = (0..20).map(|i| format!("{i}-{i}")).collect();
        assert_eq!(
            parse(&format!("bytes={}", many.join(",")), 100),
            Ranges::Whole
        );
        assert_eq!(parse("bytes=0-0", 0), Ranges::Unsatisfiable);
    }
}
