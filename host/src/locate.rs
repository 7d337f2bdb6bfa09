//! Where a field of a service's `config` is written in a tap's text.
//!
//! A tap is decoded in two steps: the envelope first, with each service's `config` kept as a
//! JSON value, then each config by its plugin's own type. The first step names the line and
//! column of what it refuses; the second cannot, because a JSON value has no positions. This
//! module puts them back: given the field path a plugin's error names (`config.users.alice`), it
//! walks the original text, borrowing each map or list member as raw text (serde_json's and
//! RON's `RawValue`), down to the value the path names.
//!
//! Walking the text rather than decoding the plugin's type from it again keeps the plugin
//! contract as it is (a [`crate::Maker`] sees JSON values only, external plugins included), and
//! never disagrees with the decoding that found the error.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::tapfile::Format;

/// One level of a tap's text: a map's (key, member text) pairs, a list's member texts, or a
/// value with no members.
enum Node<'a> {
    Map(Vec<(String, &'a str)>),
    Seq(Vec<&'a str>),
    Leaf,
}

/// A member borrowed as the text it was written as.
trait Raw<'a>: Deserialize<'a> {
    fn text(&self) -> &'a str;
}

impl<'a> Raw<'a> for &'a serde_json::value::RawValue {
    fn text(&self) -> &'a str {
        self.get()
    }
}

impl<'a> Raw<'a> for &'a ron::value::RawValue {
    fn text(&self) -> &'a str {
        self.get_ron()
    }
}

struct NodeVisitor<R>(PhantomData<R>);

impl<'de, R: Raw<'de>> Visitor<'de> for NodeVisitor<R> {
    type Value = Node<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node<'de>, A::Error> {
        let mut members = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            let value: R = map.next_value()?;
            members.push((key, value.text()));
        }
        Ok(Node::Map(members))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node<'de>, A::Error> {
        let mut members = Vec::new();
        while let Some(value) = seq.next_element::<R>()? {
            members.push(value.text());
        }
        Ok(Node::Seq(members))
    }

    // RON's `Some(x)` and newtype structs: the member is the inner value.
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node<'de>, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Node<'de>, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Node<'de>, E> {
        Ok(Node::Leaf)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Node<'de>, E> {
        Ok(Node::Leaf)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Node<'de>, E> {
        Ok(Node::Leaf)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Node<'de>, E> {
        Ok(Node::Leaf)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Node<'de>, E> {
        Ok(Node::Leaf)
    }
    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Node<'de>, E> {
        Ok(Node::Leaf)
    }
    fn visit_none<E: de::Error>(self) -> Result<Node<'de>, E> {
        Ok(Node::Leaf)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Node<'de>, E> {
        Ok(Node::Leaf)
    }
    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<Node<'de>, A::Error> {
        let _: (IgnoredAny, _) = data.variant()?;
        Ok(Node::Leaf)
    }
}

fn node(text: &str, format: Format) -> Node<'_> {
    let parsed = match format {
        Format::Json => {
            let mut de = serde_json::Deserializer::from_str(text);
            de.deserialize_any(NodeVisitor::<&serde_json::value::RawValue>(PhantomData))
                .ok()
        }
        Format::Ron => ron::Deserializer::from_str(text).ok().and_then(|mut de| {
            de.deserialize_any(NodeVisitor::<&ron::value::RawValue>(PhantomData))
                .ok()
        }),
    };
    parsed.unwrap_or(Node::Leaf)
}

/// The member of `node` that the start of `path` names, and the rest of the path. Map keys may
/// hold dots (`example.com`), so of the keys the path could start with, the longest wins.
fn step<'a, 'p>(node: &Node<'a>, path: &'p str) -> Option<(&'a str, &'p str)> {
    match node {
        Node::Map(members) => members
            .iter()
            .filter_map(|(key, text)| {
                let rest = path
                    .strip_prefix('.')
                    .unwrap_or(path)
                    .strip_prefix(key.as_str())?;
                (rest.is_empty() || rest.starts_with(['.', '['])).then_some((
                    key.len(),
                    *text,
                    rest,
                ))
            })
            .max_by_key(|(len, _, _)| *len)
            .map(|(_, text, rest)| (text, rest)),
        Node::Seq(members) => {
            let (index, rest) = path.strip_prefix('[')?.split_once(']')?;
            Some((members.get(index.parse::<usize>().ok()?)?, rest))
        }
        Node::Leaf => None,
    }
}

/// Where the value at `path` (as `serde_path_to_error` writes paths: `services[0].listen[1]`)
/// starts in `text`, and whether the walk reached all of it: a path the text does not hold as
/// written (a struct given in a form the walk cannot enter) stops at the deepest value found.
pub fn path_position(text: &str, format: Format, path: &str) -> ((usize, usize), bool) {
    let (at, rest) = walk(text, format, path);
    (position(text, at, format), rest.is_empty())
}

/// The list at `path` in `text`: its members, as the slices of `text` they were written as.
/// `None` if the path leads to no list.
pub fn list_members<'a>(text: &'a str, format: Format, path: &str) -> Option<Vec<&'a str>> {
    let (at, rest) = walk(text, format, path);
    match (rest.is_empty(), node(at, format)) {
        (true, Node::Seq(members)) => Some(members),
        _ => None,
    }
}

/// The value at `path` in `text`, as the slice of `text` it was written as (with whatever
/// whitespace and comments the decoder gave it: see [`code_span`]). `None` if there is none.
pub fn value_at<'a>(text: &'a str, format: Format, path: &str) -> Option<&'a str> {
    match walk(text, format, path) {
        (at, "") => Some(at),
        _ => None,
    }
}

/// The part of `raw` (a value as the decoders lend it) without the whitespace and comments
/// around it: from its first character of code to just after its last. Strings (RON's raw
/// strings and characters too) are skipped whole, so a `//` or `*/` inside one is no comment.
pub fn code_span(raw: &str) -> std::ops::Range<usize> {
    let b = raw.as_bytes();
    // Steps whole characters, so the range always falls on character boundaries.
    let width = |i: usize| raw[i..].chars().next().map_or(1, char::len_utf8);
    let (mut i, mut first, mut end) = (0, None, 0);
    while i < b.len() {
        let from = i;
        match b[i] {
            c if c.is_ascii_whitespace() => {
                i += 1;
                continue;
            }
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                // RON's block comments nest.
                let mut depth = 0usize;
                while i < b.len() {
                    if b[i..].starts_with(b"/*") {
                        depth += 1;
                        i += 2;
                    } else if b[i..].starts_with(b"*/") {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                continue;
            }
            quote @ (b'"' | b'\'') => {
                i += 1;
                while i < b.len() && b[i] != quote {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    if i < b.len() {
                        i += width(i);
                    }
                }
                i = (i + 1).min(b.len());
            }
            b'r' if (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_'))
                && b[i + 1..]
                    .iter()
                    .find(|&&c| c != b'#')
                    .is_some_and(|&c| c == b'"') =>
            {
                let hashes = b[i + 1..].iter().take_while(|&&c| c == b'#').count();
                let mut close = vec![b'"'];
                close.extend(std::iter::repeat_n(b'#', hashes));
                i += 2 + hashes;
                while i < b.len() && !b[i..].starts_with(&close) {
                    i += width(i);
                }
                i = (i + close.len()).min(b.len());
            }
            _ => i += width(i),
        }
        first.get_or_insert(from);
        end = i;
    }
    first.unwrap_or(0)..end.max(first.unwrap_or(0))
}

/// The deepest value of `text` along `path`, and what is left of the path there.
fn walk<'a, 'p>(text: &'a str, format: Format, mut path: &'p str) -> (&'a str, &'p str) {
    let mut at = text;
    while !path.is_empty() {
        match step(&node(at, format), path) {
            Some((member, rest)) => (at, path) = (member, rest),
            None => break,
        }
    }
    (at, path)
}

/// The line and column (both from 1) of the value that a plugin's problem about service
/// `service` names: a config field (`config.FIELD...: message`, as
/// [`crate::plugin::PluginMaker`] writes decoding errors), or an option whose config field has
/// its name (`--max-head-size 100: ...` is `max_head_size`), as plugins' checks name them.
pub fn config_field(
    text: &str,
    format: Format,
    service: usize,
    problem: &str,
) -> Option<(usize, usize)> {
    let path = format!("services[{service}].config");
    let (config, rest) = walk(text, format, &path);
    if !rest.is_empty() {
        return None;
    }
    let (field, _) = problem.split_once(": ")?;
    let unknown = problem
        .split_once("unknown field `")
        .and_then(|(_, rest)| rest.split_once('`'))
        .map(|(name, _)| name);
    let mut at = match field.strip_prefix("config") {
        // The path of an unknown field may end in its name: its map is where to look.
        Some(path) => {
            let path = unknown
                .and_then(|name| path.strip_suffix(name))
                .map_or(path, |parent| parent.strip_suffix('.').unwrap_or(parent));
            walk(config, format, path).0
        }
        None => {
            // `--name`, `--name VALUE`, `--name/-x`: the field `name`, when the config has it.
            let option = field.strip_prefix("--")?;
            let option = option.split([' ', '/']).next().unwrap_or(option);
            match step(&node(config, format), &option.replace('-', "_")) {
                Some((member, "")) => member,
                _ => return None,
            }
        }
    };
    // A field the config does not know: point at its name, written last before its value
    // (quoted in a map, bare in a RON struct).
    if let Some(name) = unknown {
        if let Some((member, "")) = step(&node(at, format), name) {
            let offset = (member.as_ptr() as usize).saturating_sub(at.as_ptr() as usize);
            let before = at.get(..offset).unwrap_or_default();
            let key = before
                .rfind(&format!("\"{name}\""))
                .or_else(|| before.rfind(name));
            at = match key {
                Some(start) => &at[start..],
                None => member,
            };
        }
    }
    Some(position(text, at, format))
}

/// What decoding a tap would lose without a word, in the parts kept as free-form values (each
/// service's `config` and `state`): a key given twice (the last would win), and in RON a bare
/// word (`logfile: accesslog`), which RON reads as a unit value, null. Returns the first, with
/// its line, column and path.
pub fn silent_loss(text: &str, format: Format) -> Option<(usize, usize, String)> {
    let Node::Seq(services) = node(walk(text, format, "services").0, format) else {
        return None;
    };
    for (i, service) in services.iter().enumerate() {
        for part in ["config", "state"] {
            if let (value, "") = walk(service, format, part) {
                if let Some((at, message)) =
                    lost_in(value, format, &format!("services[{i}].{part}"), text)
                {
                    let (line, column) = position(text, at, format);
                    return Some((line, column, message));
                }
            }
        }
    }
    None
}

fn lost_in<'a>(
    value: &'a str,
    format: Format,
    path: &str,
    text: &str,
) -> Option<(&'a str, String)> {
    match node(value, format) {
        Node::Map(members) => {
            for (k, (key, member)) in members.iter().enumerate() {
                if let Some((_, first)) = members[..k].iter().find(|(other, _)| other == key) {
                    let (line, _) = position(text, first, format);
                    return Some((
                        member,
                        format!("{path}: key \"{key}\" given twice (first on line {line})"),
                    ));
                }
            }
            members
                .iter()
                .find_map(|(key, member)| lost_in(member, format, &format!("{path}.{key}"), text))
        }
        Node::Seq(members) => members
            .iter()
            .enumerate()
            .find_map(|(i, member)| lost_in(member, format, &format!("{path}[{i}]"), text)),
        Node::Leaf => {
            let word = bare_word(value).filter(|_| format == Format::Ron)?;
            Some((
                value,
                format!(
                    "{path}: {word} is a bare word, which RON reads as nothing; write a string \
                     in quotes (\"{word}\"), or () for none"
                ),
            ))
        }
    }
}

/// The identifier a RON value is, inside any `Some(...)`, unless it is one RON reads as a value.
fn bare_word(value: &str) -> Option<&str> {
    let mut value = skip_trivia(value, Format::Ron).trim_end();
    while let Some(inner) = value
        .strip_prefix("Some")
        .map(|rest| skip_trivia(rest, Format::Ron))
        .and_then(|rest| rest.strip_prefix('('))
        .and_then(|rest| rest.strip_suffix(')'))
    {
        value = skip_trivia(inner, Format::Ron).trim_end();
    }
    let starts_like_a_word = value.starts_with(|c: char| c.is_alphabetic() || c == '_');
    let is_word = value.chars().all(|c| c.is_alphanumeric() || c == '_');
    (starts_like_a_word && is_word && !matches!(value, "true" | "false" | "None")).then_some(value)
}

/// `text` after blank space and, in RON, comments: where the value itself starts.
fn skip_trivia(mut text: &str, format: Format) -> &str {
    loop {
        text = text.trim_start();
        if format != Format::Ron {
            return text;
        }
        if let Some(rest) = text.strip_prefix("//") {
            text = rest.split_once('\n').map_or("", |(_, after)| after);
        } else if let Some(rest) = text.strip_prefix("/*") {
            text = rest.split_once("*/").map_or("", |(_, after)| after);
        } else {
            return text;
        }
    }
}

/// The line and column of `part`, a slice of `text`, where its value starts.
fn position(text: &str, part: &str, format: Format) -> (usize, usize) {
    let part = skip_trivia(part, format);
    let offset = (part.as_ptr() as usize).saturating_sub(text.as_ptr() as usize);
    let before = text.get(..offset).unwrap_or(text);
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (
        before.matches('\n').count() + 1,
        before[line_start..].chars().count() + 1,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const JSON: &str = r#"{
  "version": 1,
  "name": "mail",
  "services": [
    {"name": "web", "plugin": "web", "config": {"path": "/srv"}},
    {
      "name": "mail",
      "plugin": "mail",
      "config": {
        "domains": {"example.com": "/var/mail", "example.org": 7},
        "fsync": "filesystm"
      }
    }
  ]
}"#;

    const RON: &str = r#"// a hand-edited tap
(
    version: 1,
    name: "mail",
    services: [(
        name: "mail",
        plugin: "mail",
        config: {
            "domains": {
                "example.com": "/var/mail",
                "example.org": 7,
            },
            // typo below
            "fsync": "filesystm",
            "users": ["alice", 3],
        },
    ), (
        name: "web",
        plugin: "web",
        config: (path: Some(5)),
    )],
)"#;

    #[test]
    fn code_spans_leave_out_whitespace_and_comments() {
        for (raw, code) in [
            ("  (a: 1) // last\n  ", "(a: 1)"),
            ("\n /* a /* nested */ one */ [1, 2] /* ] */\n", "[1, 2]"),
            ("\"// not a comment\"  ", "\"// not a comment\""),
            ("r#\"a \"b\" // c\"# // d", "r#\"a \"b\" // c\"#"),
            ("(s: \"*/\", c: '\\'') /**/", "(s: \"*/\", c: '\\'')"),
            ("   ", ""),
            ("(é: \"\\é\") // ü", "(é: \"\\é\")"),
        ] {
            assert_eq!(&raw[code_span(raw)], code, "{raw:?}");
        }
    }

    #[test]
    fn json_fields_are_found_by_their_path() {
        let at = |service, problem| config_field(JSON, Format::Json, service, problem);
        assert_eq!(at(1, "config.fsync: unknown variant"), Some((11, 18)));
        // A key with dots in it, then the members it holds.
        assert_eq!(
            at(1, "config.domains.example.org: invalid type"),
            Some((10, 64))
        );
        assert_eq!(at(0, "config.path: invalid type"), Some((5, 57)));
        // The config itself, and a path that goes nowhere: the config's opening brace.
        assert_eq!(at(1, "config: missing field `domains`"), Some((9, 17)));
        assert_eq!(at(1, "config.nothing.here: x"), Some((9, 17)));
        assert_eq!(
            at(1, "config: unknown field `fsync`, expected one of"),
            Some((11, 9)),
            "the name, not its value"
        );
        assert_eq!(at(1, "config.fsync: unknown field `fsync`"), Some((11, 9)));
        // Problems that are not about a config field, or a service the text does not hold.
        assert_eq!(at(1, "--user: no password"), None);
        assert_eq!(at(5, "config.fsync: x"), None);
    }

    #[test]
    fn options_name_their_field_and_paths_reach_the_envelope() {
        let at = |service, problem| config_field(RON, Format::Ron, service, problem);
        assert_eq!(at(0, "--fsync filesystm: unknown"), Some((14, 22)));
        assert_eq!(at(0, "--users/-u: x"), Some((15, 22)));
        assert_eq!(at(0, "--no-such-option: x"), None);
        assert_eq!(
            path_position(JSON, Format::Json, "services[1].plugin"),
            ((8, 17), true)
        );
        assert_eq!(
            path_position(RON, Format::Ron, "services[1].listen"),
            ((17, 8), false)
        );
    }

    #[test]
    fn what_decoding_would_lose_is_found() {
        let ron = |config: &str| {
            let text =
                format!("(\n  version: 1,\n  services: [(name: \"a\", config: {config})],\n)");
            silent_loss(&text, Format::Ron).map(|(line, column, message)| {
                (
                    line,
                    column,
                    message.split(':').nth(1).unwrap_or("").trim().to_string(),
                )
            })
        };
        // RON's own values are kept; a bare word would become null.
        assert_eq!(
            ron(
                r#"{"a": true, "b": None, "c": (), "d": Some("x"), "e": [1, -2.5], "f": (g: false)}"#
            ),
            None
        );
        let word = |w: &str| {
            format!("{w} is a bare word, which RON reads as nothing; write a string in quotes (\"{w}\"), or () for none")
        };
        assert_eq!(
            ron(r#"{"logfile": accesslog}"#),
            Some((3, 46, word("accesslog")))
        );
        assert_eq!(
            ron(r#"{"a": Some( /* c */ x_1)}"#),
            Some((3, 40, word("x_1")))
        );
        assert_eq!(ron(r#"{"a": [1, inf]}"#), Some((3, 44, word("inf"))));
        assert_eq!(ron(r#"{"a": {"b": NaN}}"#), Some((3, 46, word("NaN"))));
        // A key given twice, in either format: the second is named.
        assert_eq!(
            ron("{\"a\": 1,\n \"a\": 2}"),
            Some((4, 7, "key \"a\" given twice (first on line 3)".to_string()))
        );
        let json =
            r#"{"version": 1, "services": [{"name": "a", "state": {"n": {"k": 1, "k": 2}}}]}"#;
        assert_eq!(
            silent_loss(json, Format::Json),
            Some((
                1,
                72,
                "services[0].state.n: key \"k\" given twice (first on line 1)".into()
            ))
        );
        // Bare words are RON's: JSON has none to lose.
        assert_eq!(silent_loss(JSON, Format::Json), None);
    }

    #[test]
    fn ron_fields_are_found_through_comments_lists_and_structs() {
        let at = |service, problem| config_field(RON, Format::Ron, service, problem);
        assert_eq!(at(0, "config.fsync: unknown variant"), Some((14, 22)));
        assert_eq!(
            at(0, "config.domains.example.org: invalid type"),
            Some((11, 32))
        );
        assert_eq!(at(0, "config.users[1]: invalid type"), Some((15, 32)));
        // A struct written in RON's own form, and an option around the value.
        assert_eq!(at(1, "config.path: invalid type"), Some((20, 24)));
        assert_eq!(at(1, "config: unknown field `path`"), Some((20, 18)));
    }
}
