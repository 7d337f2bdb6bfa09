//! Content codings: what the client accepts, precompressed siblings (`x.css.br`, `x.css.gz`),
//! and gzip on the fly for compressible types. Level 1 on the fly, as nginx's default
//! gzip_comp_level: most of the saving for a fraction of the CPU.

use std::io::Write as _;

use hyper::header::{HeaderMap, HeaderValue, ACCEPT_ENCODING};

/// Responses smaller than this are not worth compressing on the fly.
pub const MIN_SIZE: u64 = 1024;

/// Whether Accept-Encoding admits `coding` (a q-value of 0 refuses it; `*` stands for any).
pub fn accepts(headers: &HeaderMap, coding: &str) -> bool {
    let mut star = false;
    for value in headers.get_all(ACCEPT_ENCODING) {
        let Ok(value) = value.to_str() else { continue };
        for item in value.split(',') {
            let mut params = item.split(';');
            let name = params.next().unwrap_or("").trim();
            let refused = params.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            if name.eq_ignore_ascii_case(coding) {
                return !refused;
            }
            if name == "*" {
                star = !refused;
            }
        }
    }
    star
}

/// Whether a media type compresses well (text, scripts, data, SVG).
pub fn compressible(content_type: &HeaderValue) -> bool {
    let Ok(t) = content_type.to_str() else {
        return false;
    };
    let t = t.split(';').next().unwrap_or("").trim();
    t.starts_with("text/")
        || t.ends_with("+xml")
        || t.ends_with("+json")
        || matches!(
            t,
            "application/javascript"
                | "application/json"
                | "application/xml"
                | "application/wasm"
                | "application/x-javascript"
        )
}

/// `data` gzipped, or `None` when that does not make it smaller.
pub fn gzip(data: &[u8]) -> Option<Vec<u8>> {
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(data.len() / 2),
        flate2::Compression::fast(),
    );
    encoder.write_all(data).ok()?;
    let out = encoder.finish().ok()?;
    (out.len() < data.len()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ae(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(ACCEPT_ENCODING, HeaderValue::from_str(v).expect("value"));
        h
    }

    #[test]
    fn accept_encoding() {
        assert!(accepts(&ae("gzip, deflate, br"), "br"));
        assert!(accepts(&ae("GZIP;q=0.5"), "gzip"));
        assert!(!accepts(&ae("gzip;q=0, br"), "gzip"));
        assert!(accepts(&ae("*"), "gzip"));
        assert!(!accepts(&ae("*, gzip;q=0"), "gzip"));
        assert!(!accepts(&HeaderMap::new(), "gzip"));
        assert!(compressible(&HeaderValue::from_static("text/css")));
        assert!(compressible(&HeaderValue::from_static("image/svg+xml")));
        assert!(!compressible(&HeaderValue::from_static("image/png")));
        let text = "hello ".repeat(500);
        let gz = gzip(text.as_bytes()).expect("compresses");
        let mut out = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&gz[..]), &mut out)
            .expect("gunzip");
        assert_eq!(out, text);
    }
}
