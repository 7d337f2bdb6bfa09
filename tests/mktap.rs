//! `mktap`: both formats, --append, and every bad input leaving the directory untouched.

mod util;

use std::collections::BTreeSet;

use host::{tapfile, Format, Principal};
use util::{stderr, stdout, Sandbox};

fn files(sb: &Sandbox) -> BTreeSet<String> {
    std::fs::read_dir(sb.path())
        .expect("list sandbox")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn writes_json_by_default_and_ron_with_type_source() {
    let sb = Sandbox::new();
    sb.write("www/index.html", "hi");
    let out = sb.mktap_ok(&["web", "--path", "www", "--port", "7777"]);
    assert!(stdout(&out).contains("wrote web.tap"), "{}", stdout(&out));
    let out = sb.mktap_ok(&["--type", "source", "web", "--path", "www", "--port", "7777"]);
    assert!(stdout(&out).contains("wrote web.tas"));

    let json = sb.read("web.tap");
    assert!(json.trim_start().starts_with('{'), "{json}");
    let ron = sb.read("web.tas");
    assert!(ron.trim_start().starts_with('('), "{ron}");

    let (a, fa) = tapfile::load(&sb.join("web.tap")).expect("load tap");
    let (b, fb) = tapfile::load(&sb.join("web.tas")).expect("load tas");
    assert_eq!((fa, fb), (Format::Json, Format::Ron));
    assert_eq!(a, b, "both formats describe one application");
    assert_eq!(a.name, "web");
    let service = &a.services[0];
    assert_eq!(
        (service.name.as_str(), service.plugin.as_str()),
        ("web", "web")
    );
    assert_eq!(service.listen[0].to_string(), "tcp:7777");
    assert_eq!(service.config["path"], "www");
    assert_eq!(
        service.config["index"],
        serde_json::json!(["index.html", "index.htm"])
    );

    // Each format re-encodes to exactly what mktap wrote: the round trip loses nothing.
    assert_eq!(tapfile::to_string(&a, Format::Json).expect("encode"), json);
    assert_eq!(tapfile::to_string(&b, Format::Ron).expect("encode"), ron);
    // Aliases of --type.
    sb.mktap_ok(&["-t", "ron", "-n", "alias", "web", "--path", "www"]);
    assert!(sb.read("alias.tas").starts_with('('));
    sb.mktap_ok(&["-t", "json", "-n", "alias", "web", "--path", "www"]);
    assert!(sb.read("alias.tap").starts_with('{'));
}

#[test]
fn envelope_options_are_stored() {
    let sb = Sandbox::new();
    std::fs::create_dir(sb.join("www")).expect("mkdir");
    sb.mktap_ok(&[
        "-n", "site", "-u", "www-data", "-g", "33", "web", "--path", "www",
    ]);
    let (app, _) = tapfile::load(&sb.join("site.tap")).expect("load");
    assert_eq!(app.name, "site");
    assert_eq!(app.uid, Some(Principal::Name("www-data".into())));
    assert_eq!(app.gid, Some(Principal::Id(33)));
    // No endpoint given: Twisted's default port.
    assert_eq!(app.services[0].listen[0].to_string(), "tcp:8080");

    sb.mktap_ok(&[
        "-o",
        "custom.tas",
        "web",
        "--path",
        "www",
        "--index",
        "home.html",
        "--index",
        "start.htm",
    ]);
    let (app, format) = tapfile::load(&sb.join("custom.tas")).expect("load");
    assert_eq!(format, Format::Ron, "format follows the -o extension");
    assert_eq!(
        app.services[0].config["index"],
        serde_json::json!(["home.html", "start.htm"])
    );
}

#[test]
fn append_adds_uniquely_named_services_in_the_files_format() {
    let sb = Sandbox::new();
    std::fs::create_dir(sb.join("a")).expect("mkdir");
    std::fs::create_dir(sb.join("b")).expect("mkdir");
    for (ty, file) in [("tap", "web.tap"), ("source", "web.tas")] {
        sb.mktap_ok(&["-t", ty, "web", "--path", "a", "--port", "7777"]);
        let out = sb.mktap_ok(&["--append", file, "web", "--path", "b", "--port", "7778"]);
        assert!(stdout(&out).contains("service 'web-2'"), "{}", stdout(&out));
        sb.mktap_ok(&[
            "-a",
            file,
            "web",
            "--path",
            "b",
            "--listen",
            "unix:web.sock",
        ]);
        let (app, format) = tapfile::load(&sb.join(file)).expect("load");
        assert_eq!(
            format,
            Format::from_name(ty).expect("type"),
            "--append keeps the format"
        );
        let names: Vec<_> = app.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["web", "web-2", "web-3"]);
        assert_eq!(app.services[1].config["path"], "b");
        assert_eq!(app.services[2].listen[0].to_string(), "unix:web.sock");
    }
}

/// `--append` to a hand-edited `.tas` adds the service to the text as written: comments and
/// layout stay (as `postconf -e` keeps them). A change to the envelope too (`-n`) writes the
/// application anew, and says that the old text's comments are not kept.
#[test]
fn append_keeps_a_hand_edited_source_tap_as_written() {
    let sb = Sandbox::new();
    std::fs::create_dir(sb.join("www")).expect("mkdir");
    let original = std::fs::read_to_string(util::repo().join("configs/demo.tas")).expect("demo");
    sb.write("demo.tas", &original);
    let out = sb.mktap_ok(&[
        "--append", "demo.tas", "web", "--path", "www", "--port", "7777",
    ]);
    assert_eq!(
        stdout(&out).trim(),
        "mktap: wrote demo.tas with service 'web-2' (plugin web)",
        "{}",
        stderr(&out)
    );
    let text = sb.read("demo.tas");
    // Everything up to the end of the last service is as it was; the new one follows it.
    let end = original.rfind("\n    ],").expect("the end of the services");
    assert!(text.starts_with(&original[..end]), "{text}");
    assert!(text.ends_with(&original[end..]), "{text}");
    assert!(
        text[end..].contains("\n        (\n            name: \"web-2\","),
        "{text}"
    );
    let (app, _) = tapfile::load(&sb.join("demo.tas")).expect("load");
    let names: Vec<_> = app.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["web", "mail", "telnet", "web-2"]);

    // An empty list, CRLF line ends: the new lines end as the others do; a comment stays
    // where it was.
    sb.write(
        "empty.tas",
        "(version: 1, name: \"x\", services: [ /* none yet */ ])\r\n",
    );
    sb.mktap_ok(&[
        "--append",
        "empty.tas",
        "web",
        "--path",
        "www",
        "--port",
        "7780",
    ]);
    let text = sb.read("empty.tas");
    assert!(
        text.starts_with(
            "(version: 1, name: \"x\", services: [\r\n    (\r\n        name: \"web\","
        ),
        "{text}"
    );
    assert!(text.ends_with("    ), /* none yet */ ])\r\n"), "{text}");
    assert!(!text.replace("\r\n", "").contains('\n'), "{text:?}");
    sb.mktap_ok(&[
        "--append",
        "empty.tas",
        "web",
        "--path",
        "www",
        "--port",
        "7781",
    ]);
    let text = sb.read("empty.tas");
    assert!(
        text.contains("    ),\r\n    (\r\n        name: \"web-2\",")
            && text.ends_with("    ) /* none yet */ ])\r\n"),
        "{text}"
    );
    let (app, _) = tapfile::load(&sb.join("empty.tas")).expect("load");
    assert_eq!(app.services.len(), 2);

    let out = sb.mktap_ok(&[
        "--append", "demo.tas", "-n", "renamed", "web", "--path", "www", "--port", "7778",
    ]);
    assert!(
        stdout(&out).contains("(written anew: the old text's comments and layout are not kept)"),
        "{}",
        stdout(&out)
    );
    assert!(!sb.read("demo.tas").contains("//"));
}

#[test]
fn append_refuses_a_second_service_on_the_same_endpoint() {
    let sb = Sandbox::new();
    std::fs::create_dir(sb.join("www")).expect("mkdir");
    sb.mktap_ok(&["web", "--path", "www", "--port", "7777"]);
    let before = sb.read("web.tap");
    let out = sb.mktap(&[
        "--append",
        "web.tap",
        "web",
        "--path",
        "www",
        "--listen",
        "tcp:7777:interface=127.0.0.1",
    ]);
    assert_eq!(out.status.code(), Some(78));
    let err = stderr(&out);
    assert!(
        err.contains("tcp:7777:interface=127.0.0.1") && err.contains("already uses"),
        "{err}"
    );
    assert_eq!(sb.read("web.tap"), before, "the file is untouched");

    let out = sb.mktap(&[
        "--append", "web.tap", "--type", "source", "web", "--path", "www",
    ]);
    assert_eq!(out.status.code(), Some(64));
    assert!(stderr(&out).contains("does not match"), "{}", stderr(&out));
}

#[test]
fn help_lists_plugins_and_their_options() {
    let sb = Sandbox::new();
    let out = sb.mktap_ok(&["--help"]);
    let help = stdout(&out);
    assert!(
        help.contains("web") && help.contains("A static web server"),
        "{help}"
    );
    let out = sb.mktap_ok(&["web", "--help"]);
    let help = stdout(&out);
    for option in ["--path", "--port", "--listen", "--index", "--mime-type"] {
        assert!(help.contains(option), "{option} missing from:\n{help}");
    }
}

/// Each bad input exits non-zero with one clear line and writes nothing.
#[test]
fn bad_input_writes_nothing() {
    let sb = Sandbox::new();
    std::fs::create_dir(sb.join("www")).expect("mkdir");
    sb.write(
        "broken.tap",
        "{\n  \"version\": 1,\n  \"name\": \"web\",\n  \"services\": [,]\n}\n",
    );
    let cases: &[(&[&str], i32, &[&str])] = &[
        (
            &["web", "--path", "missing-dir"],
            78,
            &["--path missing-dir", "No such file"],
        ),
        (
            &["web", "--path", "www", "--port", "tcpp:80"],
            64,
            &["--port", "unknown endpoint type 'tcpp'"],
        ),
        (
            &[
                "web",
                "--path",
                "www",
                "--listen",
                "tcp:80:interface=nowhere",
            ],
            64,
            &["--listen", "interface 'nowhere'"],
        ),
        (&["web", "--path", "www", "--colour"], 64, &["--colour"]),
        // Files the service opens at start are checked now, so a change the shell makes to a
        // stopped service cannot save a tap that will not start.
        (
            &["web", "--path", "www", "--logfile", "no-dir/access.log"],
            78,
            &["--logfile no-dir/access.log: no directory no-dir"],
        ),
        (
            &["web", "--path", "www", "--sni", "a.test=a.pem:a.key"],
            78,
            &["--sni 'a.test=a.pem:a.key': certificate a.pem: No such file"],
        ),
        (
            &["web", "--path", "www", "--logfile", "www"],
            78,
            &["--logfile 'www': names no file"],
        ),
        // A negative number is a bad value of its option, not an unknown flag.
        (
            &["web", "--path", "www", "--max-connections", "-1"],
            64,
            &["invalid value '-1' for '--max-connections <N>'"],
        ),
        // A time centuries away would overflow the deadline of every connection.
        (
            &[
                "web",
                "--path",
                "www",
                "--keepalive-timeout",
                "18446744073709551615",
            ],
            78,
            &["--keepalive-timeout 18446744073709551615: must be from 1 to 86400 seconds"],
        ),
        (
            &[
                "mail",
                "-d",
                "a.test=md",
                "--relay",
                "q",
                "--queue-lifetime",
                "9999999999",
            ],
            78,
            &["--queue-lifetime 9999999999: must be at most 8640000 seconds"],
        ),
        // Framing is the server's: a fixed Content-Length would contradict every body.
        (
            &["web", "--path", "www", "--add-header", "Content-Length: 5"],
            78,
            &["--add-header 'Content-Length: 5': content-length is set by the server"],
        ),
        // A CGI interpreter that cannot be run is told now, not as a 500 per request.
        (
            &["web", "--path", "www", "--processor", ".pl=no-such-perl"],
            78,
            &["--processor .pl=no-such-perl: no-such-perl is not on $PATH"],
        ),
        (
            &["web", "--path", "www", "--processor", ".pl=./broken.tap"],
            78,
            &["--processor .pl=./broken.tap: ./broken.tap is not an executable file"],
        ),
        (
            &["gopher", "--path", "www"],
            64,
            &["unknown plugin 'gopher'", "known: web"],
        ),
        (&["web"], 64, &["--path"]),
        (
            &["-n", "../evil", "web", "--path", "www"],
            64,
            &["--appname '../evil'"],
        ),
        (
            &["--append", "broken.tap", "web", "--path", "www"],
            78,
            &["broken.tap:4:"],
        ),
        (
            &["--append", "absent.tap", "web", "--path", "www"],
            78,
            &["absent.tap"],
        ),
        (
            &["web", "--path", "www", "--index", "a/b"],
            78,
            &["--index 'a/b'"],
        ),
    ];
    let before = files(&sb);
    for (args, code, needles) in cases {
        let out = sb.mktap(args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(*code), "mktap {args:?}: {err}");
        for needle in *needles {
            assert!(
                err.contains(needle),
                "mktap {args:?}: '{needle}' not in: {err}"
            );
        }
        assert_eq!(files(&sb), before, "mktap {args:?} wrote something");
    }
}
