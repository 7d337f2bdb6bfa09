//! The telnet side of a shell connection (RFC 854, 857 ECHO, 858 SUPPRESS-GO-AHEAD).
//!
//! libtelnet-rs parses the byte stream and answers negotiations from a compatibility table in
//! which only ECHO and SGA are supported locally: every other option a client offers or asks
//! for is refused (DONT/WONT). This module adds what a line-oriented shell needs on top: lines
//! ending in CR LF, CR NUL or a bare LF (nc sends those), backspace and Ctrl-C while the client
//! is in character mode, and hiding input (WILL ECHO + WILL SGA: the client stops echoing and
//! the server echoes nothing) while a password is typed.

use std::collections::VecDeque;
use std::io;

use libtelnet_rs::events::TelnetEvents;
use libtelnet_rs::telnet::op_option;
use libtelnet_rs::Parser;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// RFC 854 commands the crate has no names for.
const IP: u8 = 244;
const AYT: u8 = 246;

/// Longer input lines are refused whole rather than grown without bound.
pub const MAX_LINE: usize = 4096;

/// One line of input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    Text(String),
    /// The line passed [`MAX_LINE`] bytes and was discarded.
    TooLong,
}

/// A telnet connection read as lines.
pub struct Telnet<S> {
    io: S,
    parser: Parser,
    line: Vec<u8>,
    too_long: bool,
    /// The previous byte was CR: a following LF or NUL belongs to it.
    after_cr: bool,
    lines: VecDeque<Line>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Telnet<S> {
    pub fn new(io: S) -> Self {
        let mut table = libtelnet_rs::compatibility::CompatibilityTable::new();
        table.support_local(op_option::ECHO);
        table.support_local(op_option::SGA);
        Telnet {
            io,
            parser: Parser::with_support(table),
            line: Vec::new(),
            too_long: false,
            after_cr: false,
            lines: VecDeque::new(),
        }
    }

    /// Writes text, turning each `\n` into the network's CR LF.
    pub async fn write(&mut self, text: &str) -> io::Result<()> {
        let mut out = Vec::with_capacity(text.len() + 8);
        for byte in text.bytes() {
            if byte == b'\n' {
                out.push(b'\r');
            }
            out.push(byte);
        }
        // Valid UTF-8 never holds 0xFF, so no IAC byte needs doubling.
        self.io.write_all(&out).await?;
        self.io.flush().await
    }

    /// While hidden, the client does not echo what is typed (and this side echoes nothing).
    pub async fn hide_input(&mut self, hidden: bool) -> io::Result<()> {
        let events = if hidden {
            [
                self.parser._will(op_option::ECHO),
                self.parser._will(op_option::SGA),
            ]
        } else {
            [
                self.parser._wont(op_option::ECHO),
                self.parser._wont(op_option::SGA),
            ]
        };
        for event in events.into_iter().flatten() {
            self.send(event).await?;
        }
        Ok(())
    }

    async fn send(&mut self, event: TelnetEvents) -> io::Result<()> {
        if let TelnetEvents::DataSend(bytes) = event {
            self.io.write_all(&bytes).await?;
            self.io.flush().await?;
        }
        Ok(())
    }

    /// The next line, or `None` when the client has gone.
    pub async fn read_line(&mut self) -> io::Result<Option<Line>> {
        let mut buf = [0u8; 1024];
        loop {
            if let Some(line) = self.lines.pop_front() {
                return Ok(Some(line));
            }
            let n = self.io.read(&mut buf).await?;
            if n == 0 {
                return Ok(None);
            }
            for event in self.parser.receive(&buf[..n]) {
                match event {
                    TelnetEvents::DataReceive(data) => self.take(&data),
                    TelnetEvents::DataSend(_) => self.send(event).await?,
                    TelnetEvents::IAC(iac) => match iac.command {
                        // Interrupt Process: drop the line being typed, as a shell does.
                        IP => self.line.clear(),
                        AYT => self.write("[yes]\n").await?,
                        _ => {}
                    },
                    _ => {}
                }
            }
        }
    }

    fn take(&mut self, data: &[u8]) {
        for &byte in data {
            if std::mem::take(&mut self.after_cr) && matches!(byte, b'\n' | 0) {
                continue;
            }
            match byte {
                b'\r' => {
                    self.after_cr = true;
                    self.end_line();
                }
                b'\n' => self.end_line(),
                // Backspace and DEL, in character mode.
                0x08 | 0x7f => {
                    self.line.pop();
                }
                // Ctrl-C in character mode.
                0x03 => self.line.clear(),
                b'\t' => self.push(b' '),
                byte if byte < 0x20 => {}
                byte => self.push(byte),
            }
        }
    }

    fn push(&mut self, byte: u8) {
        if self.line.len() < MAX_LINE {
            self.line.push(byte);
        } else {
            self.too_long = true;
        }
    }

    fn end_line(&mut self) {
        let line = std::mem::take(&mut self.line);
        if std::mem::take(&mut self.too_long) {
            self.lines.push_back(Line::TooLong);
        } else {
            self.lines
                .push_back(Line::Text(String::from_utf8_lossy(&line).into_owned()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines_of(input: &[u8]) -> (Vec<Line>, Vec<u8>) {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut telnet = Telnet::new(server);
        client.write_all(input).await.expect("write");
        // EOF for the server side; the client can still read what the server sends.
        client.shutdown().await.expect("shutdown");
        let mut lines = Vec::new();
        while let Some(line) = telnet.read_line().await.expect("read") {
            lines.push(line);
        }
        drop(telnet);
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.expect("answer");
        (lines, answer)
    }

    fn text(s: &str) -> Line {
        Line::Text(s.into())
    }

    #[tokio::test]
    async fn line_endings_and_editing() {
        let (lines, _) = lines_of(b"one\r\ntwo\r\0three\nfou\x7fur\r\n\x03zap\r\n").await;
        assert_eq!(
            lines,
            [
                text("one"),
                text("two"),
                text("three"),
                text("four"),
                text("zap")
            ]
        );
    }

    #[tokio::test]
    async fn iac_sequences_are_stripped_and_unknown_options_refused() {
        // IAC DO TERMINAL-TYPE(24), IAC WILL NAWS(31), then data with a doubled IAC byte.
        let (lines, answer) = lines_of(b"\xff\xfd\x18\xff\xfb\x1fhel\xff\xf1lo\r\n").await;
        assert_eq!(lines, [text("hello")]);
        assert_eq!(answer, b"\xff\xfc\x18\xff\xfe\x1f", "WONT TTYPE, DONT NAWS");
    }

    #[tokio::test]
    async fn long_lines_are_refused_whole() {
        let mut input = vec![b'a'; MAX_LINE + 10];
        input.extend_from_slice(b"\r\nok\r\n");
        let (lines, _) = lines_of(&input).await;
        assert_eq!(lines, [Line::TooLong, text("ok")]);
    }
}
