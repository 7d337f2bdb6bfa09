//! Reading protocol lines with a length limit, shared by SMTP and POP3.
//!
//! A line is returned with its terminator so that the SMTP DATA reader can tell CRLF from a bare
//! LF. A line over the limit is read to its end and thrown away, so the session stays in step
//! with the client and can answer it, instead of buffering whatever a client sends.

use std::pin::Pin;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, BufReader};

/// What one read produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A line, in the caller's buffer, ending with LF (and usually CR before it).
    Complete,
    /// A line longer than the limit, consumed up to and including its LF.
    TooLong,
    /// The client closed the connection (a final unterminated fragment is dropped).
    Eof,
}

/// Reads one LF-terminated line of at most `max` octets (terminator included) into `out`, which
/// is cleared first.
pub async fn read_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    max: usize,
    out: &mut Vec<u8>,
) -> std::io::Result<Line> {
    out.clear();
    let mut overflow = false;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(Line::Eof);
        }
        let (take, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (available.len(), false),
        };
        if !overflow && out.len() + take <= max {
            out.extend_from_slice(&available[..take]);
        } else {
            overflow = true;
            out.clear();
        }
        reader.consume(take);
        if done {
            return Ok(if overflow {
                Line::TooLong
            } else {
                Line::Complete
            });
        }
    }
}

/// The next line if the whole of it is already in `reader`'s buffer: what [`read_line`] would
/// return at once, without the timer a wait for the client needs. A line that cannot be
/// complete yet, or is too long, is left to [`read_line`].
pub fn buffered_line<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
    max: usize,
    out: &mut Vec<u8>,
) -> Option<Line> {
    let available = reader.buffer();
    let end = memchr::memchr(b'\n', &available[..available.len().min(max)])? + 1;
    out.clear();
    out.extend_from_slice(&available[..end]);
    Pin::new(reader).consume(end);
    Some(Line::Complete)
}

/// A command line without its line ending (CRLF, or a lone LF, which commands tolerate).
pub fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn limits_and_terminators() {
        let data: &[u8] = b"short\r\nbare\nthis line is too long\r\nafter\r\nfragment";
        let mut reader = tokio::io::BufReader::with_capacity(4, data);
        let mut buf = Vec::new();
        assert_eq!(
            read_line(&mut reader, 10, &mut buf).await.expect("io"),
            Line::Complete
        );
        assert_eq!(buf, b"short\r\n");
        assert_eq!(
            read_line(&mut reader, 10, &mut buf).await.expect("io"),
            Line::Complete
        );
        assert_eq!(buf, b"bare\n");
        assert_eq!(
            read_line(&mut reader, 10, &mut buf).await.expect("io"),
            Line::TooLong
        );
        assert_eq!(
            read_line(&mut reader, 10, &mut buf).await.expect("io"),
            Line::Complete
        );
        assert_eq!(trim_eol(&buf), b"after");
        assert_eq!(
            read_line(&mut reader, 10, &mut buf).await.expect("io"),
            Line::Eof
        );
    }

    #[tokio::test]
    async fn buffered_lines_are_whole_and_within_the_limit() {
        let data: &[u8] = b"one\r\ntwo\nthis line is too long\r\npart";
        let mut reader = tokio::io::BufReader::with_capacity(64, data);
        let mut buf = Vec::new();
        // Nothing is buffered before the first read.
        assert_eq!(buffered_line(&mut reader, 10, &mut buf), None);
        read_line(&mut reader, 10, &mut buf).await.expect("io");
        assert_eq!(buf, b"one\r\n");
        assert_eq!(
            buffered_line(&mut reader, 10, &mut buf),
            Some(Line::Complete)
        );
        assert_eq!(buf, b"two\n");
        // Too long for the limit: read_line's to deal with, and it is left in place.
        assert_eq!(buffered_line(&mut reader, 10, &mut buf), None);
        assert_eq!(
            read_line(&mut reader, 10, &mut buf).await.expect("io"),
            Line::TooLong
        );
        // A fragment is not a line.
        assert_eq!(buffered_line(&mut reader, 10, &mut buf), None);
        assert_eq!(reader.buffer(), b"part");
    }
}
