//! The telnet side of a shell connection (RFC 854, 857 ECHO, 858 SUPPRESS-GO-AHEAD, 860
//! TIMING-MARK).
//!
//! This module frames the byte stream itself: data, `IAC IAC` (a data byte 255), the two-byte
//! commands (`IAC IP`, `IAC AYT`, ...), the three-byte negotiations and subnegotiations, also
//! when a read ends in the middle of one. libtelnet-rs 2 cannot be given that part: its parser
//! knows only GA, EOR and NOP as two-byte commands (it reads `IAC IP x` as a negotiation, eating
//! the next byte) and drops a sequence split across reads. Negotiations are handed to it whole;
//! it answers them from a compatibility table in which only ECHO and SGA are supported locally,
//! so every other option a client offers or asks for is refused (DONT/WONT).
//!
//! On top of that, what a line-oriented shell needs: lines ending in CR LF, CR NUL or a bare LF
//! (nc sends those); backspace and Ctrl-C while the client is in character mode; `IAC EC` and
//! `IAC EL`; `IAC IP` and `IAC BRK` (what telnet(1) sends for Ctrl-C) drop the line being typed
//! and are reported as [`Line::Interrupted`], so the shell shows a fresh prompt; `IAC AYT` is
//! answered `[yes]`; `IAC DO TIMING-MARK` (telnet(1) sends it after `IAC IP` and shows nothing
//! more until it is answered) is answered `IAC WILL TIMING-MARK` once the input before it has
//! been read. Input is hidden (WILL ECHO + WILL SGA: the client stops echoing and the server
//! echoes nothing) while a password is typed.

use std::collections::VecDeque;
use std::io;

use libtelnet_rs::events::TelnetEvents;
use libtelnet_rs::telnet::op_command::{DO, DONT, IAC, SB, SE, WILL, WONT};
use libtelnet_rs::telnet::op_option;
use libtelnet_rs::Parser;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// RFC 854 commands the crate has no names for.
const BRK: u8 = 243;
const IP: u8 = 244;
const AYT: u8 = 246;
const EC: u8 = 247;
const EL: u8 = 248;

/// Where the framing of the input stands between two bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Data,
    /// After IAC.
    Iac,
    /// After IAC WILL/WONT/DO/DONT: the option comes next.
    Option(u8),
    /// Inside IAC SB ... IAC SE (no subnegotiation is supported: the bytes are dropped).
    Sub,
    /// After an IAC inside a subnegotiation.
    SubIac,
}

/// Longer input lines are refused whole rather than grown without bound.
pub const MAX_LINE: usize = 4096;

/// One line of input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    Text(String),
    /// The line passed [`MAX_LINE`] bytes and was discarded.
    TooLong,
    /// The client interrupted (IAC IP or IAC BRK): the line being typed was dropped.
    Interrupted,
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
    framing: Framing,
    /// Bytes to send back for what was read (negotiation answers, AYT's answer).
    answer: Vec<u8>,
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
            framing: Framing::Data,
            answer: Vec::new(),
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
            for &byte in &buf[..n] {
                self.receive(byte);
            }
            // Answers go out before the lines they came with are handled: telnet(1) shows
            // nothing after its DO TIMING-MARK until the WILL comes, the next prompt included.
            if !self.answer.is_empty() {
                let answer = std::mem::take(&mut self.answer);
                self.io.write_all(&answer).await?;
                self.io.flush().await?;
            }
        }
    }

    /// One byte of input, through the telnet framing.
    fn receive(&mut self, byte: u8) {
        self.framing = match (self.framing, byte) {
            (Framing::Data, IAC) => Framing::Iac,
            (Framing::Data, byte) => {
                self.take(byte);
                Framing::Data
            }
            (Framing::Iac, IAC) => {
                self.take(IAC);
                Framing::Data
            }
            (Framing::Iac, WILL | WONT | DO | DONT) => Framing::Option(byte),
            (Framing::Iac, SB) => Framing::Sub,
            (Framing::Iac, command) => {
                self.command(command);
                Framing::Data
            }
            (Framing::Option(command), option) => {
                self.negotiate(command, option);
                Framing::Data
            }
            (Framing::Sub, IAC) => Framing::SubIac,
            (Framing::Sub, _) => Framing::Sub,
            (Framing::SubIac, SE) => Framing::Data,
            (Framing::SubIac, _) => Framing::Sub,
        }
    }

    /// A two-byte command (IAC and one byte).
    fn command(&mut self, command: u8) {
        match command {
            // Interrupt Process and Break: drop the line being typed, as a shell's Ctrl-C.
            IP | BRK => self.interrupt(),
            AYT => self.answer.extend_from_slice(b"\r\n[yes]\r\n"),
            EC => {
                self.line.pop();
            }
            EL => {
                self.line.clear();
                self.too_long = false;
            }
            // NOP, DM, AO, GA, EOR, a stray SE: nothing to do for a line shell.
            _ => {}
        }
    }

    /// A negotiation (IAC WILL/WONT/DO/DONT option).
    fn negotiate(&mut self, command: u8, option: u8) {
        // RFC 860: a timing mark is answered WILL once what came before it is processed. It
        // is not an option that stays on, so the compatibility table is left alone.
        if command == DO && option == op_option::TM {
            self.answer.extend_from_slice(&[IAC, WILL, op_option::TM]);
            return;
        }
        for event in self.parser.receive(&[IAC, command, option]) {
            if let TelnetEvents::DataSend(bytes) = event {
                self.answer.extend_from_slice(&bytes);
            }
        }
    }

    fn take(&mut self, byte: u8) {
        if std::mem::take(&mut self.after_cr) && matches!(byte, b'\n' | 0) {
            return;
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
            0x03 => self.interrupt(),
            b'\t' => self.push(b' '),
            byte if byte < 0x20 => {}
            byte => self.push(byte),
        }
    }

    fn interrupt(&mut self) {
        self.line.clear();
        self.too_long = false;
        self.after_cr = false;
        self.lines.push_back(Line::Interrupted);
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
                Line::Interrupted,
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
    async fn two_byte_commands_are_two_bytes() {
        // IAC IP, IAC BRK: the line so far goes; IAC AYT is answered; IAC NOP, IAC EC (erase
        // a character), IAC EL (erase the line) are no data.
        let (lines, answer) = lines_of(
            b"junk\xff\xf4status\r\nx\xff\xf3ok\xff\xf6\xff\xf1?\xff\xf7\r\nab\xff\xf8cd\r\n",
        )
        .await;
        assert_eq!(
            lines,
            [
                Line::Interrupted,
                text("status"),
                Line::Interrupted,
                text("ok"),
                text("cd")
            ]
        );
        assert_eq!(answer, b"\r\n[yes]\r\n");
    }

    #[tokio::test]
    async fn a_timing_mark_is_answered_and_ctrl_c_from_telnet_interrupts() {
        // What telnet(1) sends for Ctrl-C: IAC IP IAC DO TM.
        let (lines, answer) = lines_of(b"sta\xff\xf4\xff\xfd\x06status\r\n").await;
        assert_eq!(lines, [Line::Interrupted, text("status")]);
        assert_eq!(answer, b"\xff\xfb\x06", "WILL TIMING-MARK");
    }

    #[test]
    fn sequences_split_across_reads_are_read_whole() {
        let (_client, server) = tokio::io::duplex(64);
        let mut telnet = Telnet::new(server);
        // A negotiation, a doubled IAC and a subnegotiation, each cut between two reads.
        let pieces: [&[u8]; 6] = [
            b"a\xff",
            b"\xfd\x18b\xff",
            b"\xffc\xff\xfa\x18",
            b"\x01\xff",
            b"\xf0d\r",
            b"\n",
        ];
        for piece in pieces {
            for &byte in piece {
                telnet.receive(byte);
            }
        }
        assert_eq!(telnet.lines, [text("ab\u{fffd}cd")]);
        assert_eq!(telnet.answer, b"\xff\xfc\x18", "WONT TTYPE");
    }

    #[tokio::test]
    async fn long_lines_are_refused_whole() {
        let mut input = vec![b'a'; MAX_LINE + 10];
        input.extend_from_slice(b"\r\nok\r\n");
        let (lines, _) = lines_of(&input).await;
        assert_eq!(lines, [Line::TooLong, text("ok")]);
    }
}
