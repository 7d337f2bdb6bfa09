//! Reading protocol lines with a length limit, and writing replies with a deadline, shared by
//! SMTP and POP3.
//!
//! A line is returned with its terminator so that the SMTP DATA reader can tell CRLF from a bare
//! LF. A line over the limit is read to its end and thrown away, so the session stays in step
//! with the client and can answer it, instead of buffering whatever a client sends.

use std::pin::Pin;
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

/// What one read produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A line, in the caller's buffer, ending with LF (and usually CR before it).
    Complete,
    /// A line longer than the limit, consumed up to and including its LF; the caller's buffer
    /// holds only its line ending (CRLF or LF), so a reader of SMTP DATA can tell whether the
    /// end of the message may follow it.
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
    // The last octet of the line so far, once it overflowed (for its line ending).
    let mut last = 0u8;
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
            if !overflow {
                last = out.last().copied().unwrap_or(0);
                overflow = true;
                out.clear();
            }
            if done && take >= 2 {
                last = available[take - 2];
            } else if !done {
                last = available[take - 1];
            }
        }
        reader.consume(take);
        if done {
            if !overflow {
                return Ok(Line::Complete);
            }
            if last == b'\r' {
                out.push(b'\r');
            }
            out.push(b'\n');
            return Ok(Line::TooLong);
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

/// Writes all of `bytes` and flushes, failing with `TimedOut` once `stream` has taken nothing
/// for `stall`: a client that stops reading its replies would otherwise hold its session (and
/// a POP3 mailbox lock) for as long as the kernel keeps the connection. The deadline restarts
/// with every write that goes through, so a slow reader of a big message is not cut off (as
/// Postfix's `smtpd_timeout` and Dovecot's output timeout). A stall is logged with `peer`.
pub async fn write_all_within<W: AsyncWrite + Unpin>(
    stream: &mut W,
    mut bytes: &[u8],
    stall: Duration,
    peer: &impl std::fmt::Display,
) -> std::io::Result<()> {
    let stalled = || {
        let e = std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("the client read nothing for {} s", stall.as_secs()),
        );
        tracing::info!(peer = %peer, "{e}: closing the connection");
        e
    };
    while !bytes.is_empty() {
        // A write that completes at once never starts the timer.
        match tokio::time::timeout(stall, stream.write(bytes)).await {
            Ok(Ok(0)) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(Ok(n)) => bytes = &bytes[n..],
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(stalled()),
        }
    }
    tokio::time::timeout(stall, stream.flush())
        .await
        .map_err(|_| stalled())?
}

/// A command line without its line ending (CRLF, or a lone LF, which commands tolerate).
pub fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    #[tokio::test(start_paused = true)]
    async fn a_reader_that_stops_times_the_writer_out() {
        let (mut server, mut client) = tokio::io::duplex(1024);
        let stall = std::time::Duration::from_secs(600);
        // Taken as it comes: a slow reader is never cut off.
        let reader = tokio::spawn(async move {
            let mut buf = vec![0; 100];
            let mut got = 0;
            while got < 10_000 {
                tokio::time::sleep(std::time::Duration::from_secs(60)).await;
                got += tokio::io::AsyncReadExt::read(&mut client, &mut buf)
                    .await
                    .expect("read");
            }
            client
        });
        super::write_all_within(&mut server, &[b'x'; 10_000], stall, &"test")
            .await
            .expect("a slow reader gets everything");
        let _client = reader.await.expect("reader");
        // Not taken at all: the write fails once the stall has lasted.
        let started = tokio::time::Instant::now();
        let e = super::write_all_within(&mut server, &[b'y'; 10_000], stall, &"test")
            .await
            .expect_err("a reader that stopped");
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= stall);
    }

    use super::*;

    #[tokio::test]
    async fn limits_and_terminators() {
        let data: &[u8] =
            b"short\r\nbare\nthis line is too long\r\nso is this bare one\nCR at a seam\r\nafter\r\nfragment";
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
        // A line too long leaves its line ending, whichever it was, wherever the reads split it.
        for ending in [&b"\r\n"[..], b"\n", b"\r\n"] {
            assert_eq!(
                read_line(&mut reader, 10, &mut buf).await.expect("io"),
                Line::TooLong
            );
            assert_eq!(buf, ending);
        }
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
